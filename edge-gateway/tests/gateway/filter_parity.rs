//! Parity of the two filter runtimes: the same flows through a gateway running the built-in
//! filters natively (`builtin`, the default) and one running the same filters as `.wasm`
//! modules (`runtime: wasm`), with the same pluginConfig, in front of one real user-service,
//! driven by real REST, gRPC-web and gRPC clients. Every response (status, headers, body; gRPC
//! status, message, metadata, message), every access-log record's filter state, and every
//! filter counter on the metrics port must be identical; any divergence fails, naming it.
//!
//! Flows: REST reads with cache headers, ETag, 304 and a stale tag; REST, gRPC-web and gRPC
//! under one rate limit (allowed, then local replies: 429, trailers-only RESOURCE_EXHAUSTED);
//! another tenant allowed; the email redacted in the span attributes; bodies the filters cannot
//! read (over `maxBodyBytes`, not JSON, a truncated gRPC-web frame) passed on and counted.
//!
//! The rate limit's window is a day, so `retry-after` and `ratelimit` (whole seconds, rounded
//! up) cannot move while the flows run.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use meshgate_proto::user;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::wasm_filters::{GatewayProcess, cache_headers_config, module, span_enrichment_config};

const LIMIT: u32 = 3;

/// Response headers that differ between any two responses (not the filters' doing): the date,
/// and the trace context of the gateway's own span (a fresh trace id per request).
const VOLATILE_HEADERS: &[&str] = &["date", "traceparent"];

fn rate_limit_config() -> Value {
    json!({"rules": [{
        "name": "per-tenant",
        "key": [{"type": "header", "name": "x-tenant"}],
        "requests": LIMIT,
        "periodSeconds": 86_400
    }]})
}

/// Span enrichment reading request bodies up to 256 bytes (a larger one is skipped).
fn span_config() -> Value {
    let mut config = span_enrichment_config();
    config["maxBodyBytes"] = json!(256);
    config["fields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"path": "name", "methods": ["user.UserService/CreateUser"]}));
    config
}

/// The bundle, run by `runtime` (`native` or `wasm`).
fn bundle(runtime: &str) -> Value {
    let mut filter = json!({
        "name": "meshgate-filters", "builtin": "bundle", "runtime": runtime, "workers": 2,
        "config": {
            "spanEnrichment": span_config(),
            "rateLimit": rate_limit_config(),
            "cacheHeaders": cache_headers_config()
        }
    });
    if runtime == "wasm" {
        filter["module"] = json!(module("filters"));
    }
    json!([filter])
}

/// The three filters as three plugins, run by `runtime`.
fn three(runtime: &str) -> Value {
    let filter = |name: &str, module_name: &str, config: Value| {
        let mut filter = json!({
            "name": name, "builtin": name, "runtime": runtime, "workers": 2, "config": config
        });
        if runtime == "wasm" {
            filter["module"] = json!(module(module_name));
        }
        filter
    };
    json!([
        filter("span-enrichment", "span_enrichment", span_config()),
        filter("rate-limit", "rate_limit", rate_limit_config()),
        filter("cache-headers", "cache_headers", cache_headers_config()),
    ])
}

#[tokio::test]
async fn native_and_wasm_bundle_answer_alike() {
    parity(bundle).await;
}

#[tokio::test]
async fn native_and_wasm_filters_answer_alike() {
    parity(three).await;
}

/// What a client saw of one request.
#[derive(Debug, PartialEq)]
enum Seen {
    Http {
        flow: &'static str,
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    Grpc {
        flow: &'static str,
        code: i32,
        message: String,
        metadata: Vec<(String, String)>,
        reply: Option<user::GetUserResponse>,
    },
}

fn kept(name: &str) -> bool {
    !VOLATILE_HEADERS.contains(&name)
}

async fn http(flow: &'static str, request: reqwest::RequestBuilder) -> Seen {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let mut headers: Vec<(String, String)> = response
        .headers()
        .iter()
        .filter(|(name, _)| kept(name.as_str()))
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    headers.sort();
    let body = response.bytes().await.unwrap();
    Seen::Http {
        flow,
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn metadata(map: &tonic::metadata::MetadataMap) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = map
        .clone()
        .into_headers()
        .iter()
        .filter(|(name, _)| kept(name.as_str()))
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect();
    pairs.sort();
    pairs
}

async fn grpc_get(flow: &'static str, addr: SocketAddr, id: &str, tenant: &str) -> Seen {
    let mut client =
        user::user_service_client::UserServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
    let mut request = tonic::Request::new(user::GetUserRequest { id: id.to_owned() });
    request
        .metadata_mut()
        .insert("x-tenant", tenant.parse().unwrap());
    match client.get_user(request).await {
        Ok(response) => Seen::Grpc {
            flow,
            code: 0,
            message: String::new(),
            metadata: metadata(response.metadata()),
            reply: Some(response.into_inner()),
        },
        Err(status) => Seen::Grpc {
            flow,
            code: status.code() as i32,
            message: status.message().to_owned(),
            metadata: metadata(status.metadata()),
            reply: None,
        },
    }
}

/// Every flow, in order, against one gateway.
async fn flows(gw: &GatewayProcess, id: &str, email: &str) -> Vec<Seen> {
    let client = h1();
    let user_path = format!("/v1/users/{id}");
    let mut seen = Vec::new();

    // Cache headers and the ETag; the tag again gets a 304 without a body, another tag a 200.
    seen.push(http("rest get", client.get(gw.url(&user_path))).await);
    let Seen::Http { headers, .. } = &seen[0] else {
        unreachable!()
    };
    let etag = headers
        .iter()
        .find(|(name, _)| name == "etag")
        .map(|(_, value)| value.clone())
        .expect("the first read has an etag");
    seen.push(
        http(
            "rest 304",
            client
                .get(gw.url(&user_path))
                .header("if-none-match", &etag),
        )
        .await,
    );
    seen.push(
        http(
            "rest stale tag",
            client
                .get(gw.url(&user_path))
                .header("if-none-match", "\"something-else\""),
        )
        .await,
    );

    // One bucket for tenant acme across REST, gRPC-web and gRPC: LIMIT allowed, then local
    // replies in each protocol; tenant globex is still allowed.
    for _ in 0..LIMIT {
        seen.push(
            http(
                "rest allowed",
                client.get(gw.url(&user_path)).header("x-tenant", "acme"),
            )
            .await,
        );
    }
    seen.push(
        http(
            "rest limited",
            client
                .get(gw.url(&user_path))
                .header("x-tenant", "acme")
                .header("origin", ORIGIN),
        )
        .await,
    );
    let web = |tenant: &str| {
        client
            .post(gw.url("/user.UserService/GetUser"))
            .header("content-type", "application/grpc-web+proto")
            .header("origin", ORIGIN)
            .header("x-tenant", tenant)
            .body(grpc_web_request(
                &user::GetUserRequest { id: id.to_owned() },
                false,
            ))
    };
    seen.push(http("grpc-web limited", web("acme")).await);
    seen.push(http("grpc-web allowed", web("globex")).await);
    seen.push(grpc_get("grpc limited", gw.addr, id, "acme").await);
    seen.push(grpc_get("grpc allowed", gw.addr, id, "globex").await);

    // Bodies the filters cannot read are passed on (and counted): a create over maxBodyBytes
    // (padded JSON; the email is taken, so the service refuses it alike for both), a body that
    // is not JSON (the gateway refuses it), a truncated gRPC-web frame.
    let padded = format!(
        "{{\"name\": \"Ada Lovelace\", \"email\": \"{email}\", \"age\": 36{}}}",
        " ".repeat(512)
    );
    seen.push(
        http(
            "rest body over maxBodyBytes",
            client
                .post(gw.url("/v1/users"))
                .header("content-type", "application/json")
                .body(padded),
        )
        .await,
    );
    seen.push(
        http(
            "rest body not json",
            client
                .post(gw.url("/v1/users"))
                .header("content-type", "application/json")
                .body("{\"name\": "),
        )
        .await,
    );
    seen.push(
        http(
            "grpc-web truncated frame",
            client
                .post(gw.url("/user.UserService/GetUser"))
                .header("content-type", "application/grpc-web+proto")
                .body(vec![0u8, 0, 0, 0, 9, 10, 1]),
        )
        .await,
    );
    seen
}

/// The access log's filter state, request by request: (method, path, status, grpc status,
/// attributes).
async fn filter_state(
    gw: &GatewayProcess,
    requests: usize,
) -> Vec<(String, String, Value, Value, Value)> {
    let mut records = Vec::new();
    for _ in 0..200 {
        records = gw
            .access_log()
            .into_iter()
            .filter(|record| record["fields"]["path"] != "/readyz")
            .collect();
        if records.len() >= requests {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    records
        .iter()
        .map(|record| {
            let fields = &record["fields"];
            let attributes = fields["filter_attributes"]
                .as_str()
                .map_or(Value::Null, |text| serde_json::from_str(text).unwrap());
            (
                fields["method"].as_str().unwrap_or_default().to_owned(),
                fields["path"].as_str().unwrap_or_default().to_owned(),
                fields["status"].clone(),
                fields["grpc_status"].clone(),
                attributes,
            )
        })
        .collect()
}

/// The filters' counters on the metrics port (`name{filter="…"} value`).
async fn filter_counters(gw: &GatewayProcess) -> BTreeMap<String, String> {
    let text = gw.scrape_metrics().await;
    text.lines()
        .filter(|line| !line.starts_with('#') && line.contains("filter=\""))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.to_owned()))
        })
        .collect()
}

async fn parity(filters: fn(&str) -> Value) {
    let service = UserService::start(sqlite_path()).await;
    let mut direct =
        user::user_service_client::UserServiceClient::connect(format!("http://{}", service.addr))
            .await
            .unwrap();
    let email = format!("ada-{}@example.com", uuid::Uuid::new_v4());
    let created = direct
        .create_user(user::CreateUserRequest {
            name: "Ada Lovelace".into(),
            email: email.clone(),
            age: 36,
        })
        .await
        .unwrap()
        .into_inner();
    let id = created.user.unwrap().id;

    let native = GatewayProcess::start_with(service.addr, filters("native"), true).await;
    let wasm = GatewayProcess::start_with(service.addr, filters("wasm"), true).await;
    let seen_native = flows(&native, &id, &email).await;
    let seen_wasm = flows(&wasm, &id, &email).await;

    for (a, b) in seen_native.iter().zip(&seen_wasm) {
        assert_eq!(a, b, "native (left) and wasm (right) answered differently");
    }
    assert_eq!(seen_native.len(), seen_wasm.len());
    // The flows did what they are for (both runtimes agree, so checking one is enough).
    let statuses: Vec<(&str, u16)> = seen_native
        .iter()
        .filter_map(|seen| match seen {
            Seen::Http { flow, status, .. } => Some((*flow, *status)),
            Seen::Grpc { .. } => None,
        })
        .collect();
    assert!(statuses.contains(&("rest 304", 304)), "{statuses:?}");
    assert!(statuses.contains(&("rest limited", 429)), "{statuses:?}");
    assert!(
        seen_native.iter().any(|seen| matches!(
            seen,
            Seen::Grpc {
                flow: "grpc limited",
                code: 8,
                ..
            }
        )),
        "{seen_native:?}"
    );

    let requests = seen_native.len();
    let state_native = filter_state(&native, requests).await;
    let state_wasm = filter_state(&wasm, requests).await;
    assert_eq!(state_native.len(), requests, "{state_native:?}");
    for (a, b) in state_native.iter().zip(&state_wasm) {
        assert_eq!(a, b, "filter state: native (left) and wasm (right) differ");
    }
    assert_eq!(state_native.len(), state_wasm.len());
    let redacted = state_native
        .iter()
        .find_map(|(.., attributes)| attributes["meshgate.response.user.email"].as_str())
        .expect("the email of a read is in the attributes");
    assert!(redacted.starts_with("sha256:"), "{redacted}");
    assert!(
        state_native
            .iter()
            .all(|(.., attributes)| !attributes.to_string().contains(&email)),
        "the email leaked"
    );

    let counters_native = filter_counters(&native).await;
    let counters_wasm = filter_counters(&wasm).await;
    assert_eq!(
        counters_native, counters_wasm,
        "filter counters: native (left) and wasm (right) differ"
    );
    let count = |name: &str| {
        counters_native
            .iter()
            .filter(|(series, _)| series.starts_with(&format!("{name}{{")))
            .map(|(_, value)| value.parse::<i64>().unwrap())
            .sum::<i64>()
    };
    assert_eq!(
        count("meshgate_rate_limit_limited"),
        3,
        "{counters_native:?}"
    );
    assert_eq!(
        count("meshgate_cache_headers_not_modified"),
        1,
        "{counters_native:?}"
    );
    assert!(
        count("meshgate_span_enrichment_body_skipped") >= 1,
        "{counters_native:?}"
    );
}

#[tokio::test]
async fn the_filter_counters_reach_the_metrics_port_with_the_filters_names() {
    let service = UserService::start(sqlite_path()).await;
    let gw = GatewayProcess::start_with(service.addr, bundle("native"), true).await;
    let response = h1()
        .get(gw.url("/v1/users/00000000-0000-0000-0000-000000000000"))
        .header("x-tenant", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::NOT_FOUND);
    let counters = filter_counters(&gw).await;
    assert_eq!(
        counters.get("meshgate_rate_limit_allowed{filter=\"meshgate-filters\"}"),
        Some(&"1".to_owned()),
        "{counters:?}"
    );
    assert_eq!(
        counters.get("meshgate_rate_limit_limited{filter=\"meshgate-filters\"}"),
        Some(&"0".to_owned()),
        "{counters:?}"
    );
}
