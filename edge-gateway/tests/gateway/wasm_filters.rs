//! The istio-filters filters in the gateway binary (`gateway.filters`), in front of the real
//! user-service: cache headers and 304 over REST, one rate limit answered as 429 (REST),
//! RESOURCE_EXHAUSTED (gRPC, gRPC-web), span-enrichment attributes in the access log, and a
//! refused filter config exiting 2.
//!
//! Each flow runs with the three filters as three plugins and as the bundle (the same configs
//! in one plugin), each natively (`builtin`, the default) and as `.wasm` modules
//! (`runtime: wasm`). `filter_parity` checks that the two runtimes answer alike.
//!
//! The modules must be built first: `scripts/build-filters` (the test command does).
//! They are looked up in `$MESHGATE_WASM_DIR`, else in `<target dir>/wasm32-wasip1/wasm/`
//! next to this test binary (so `CARGO_TARGET_DIR` is honoured).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use meshgate_proto::user;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

pub fn module(name: &str) -> PathBuf {
    meshgate_test_support::wasm::module(&format!("meshgate_{name}"))
}

/// The gateway binary with a config file; its stdout (JSON logs) is collected line by line.
/// It binds its ports itself ([`ChildLog`]).
pub struct GatewayProcess {
    child: Child,
    pub addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    log: ChildLog,
    _dir: TempDir,
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("gw-filters-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write_config(dir: &Path, listen: SocketAddr, upstream: SocketAddr, filters: Value) -> PathBuf {
    write_config_with_metrics(dir, listen, None, upstream, filters)
}

fn write_config_with_metrics(
    dir: &Path,
    listen: SocketAddr,
    metrics: Option<SocketAddr>,
    upstream: SocketAddr,
    filters: Value,
) -> PathBuf {
    let config = json!({
        "gateway": {
            "listen": listen.to_string(),
            "metrics_listen": metrics.map(|addr| addr.to_string()).unwrap_or_default(),
            "upstreams": [upstream.to_string()],
            "health_check": {"interval_ms": 200, "timeout_ms": 200},
            "cors": {"allowed_origins": [ORIGIN]},
            "filters": filters,
        }
    });
    let path = dir.join("gateway.yaml");
    // JSON is YAML: the file is what an operator would write, in flow style.
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

impl GatewayProcess {
    pub async fn start(upstream: SocketAddr, filters: Value) -> Self {
        Self::start_with(upstream, filters, false).await
    }

    /// With `metrics`, the metrics port listens too (the filters' counters are there).
    pub async fn start_with(upstream: SocketAddr, filters: Value, metrics: bool) -> Self {
        let dir = TempDir::new();
        let metrics_listen = metrics.then_some(ANY_PORT);
        let config = write_config_with_metrics(&dir.0, ANY_PORT, metrics_listen, upstream, filters);
        let mut child = Command::new(env!("CARGO_BIN_EXE_edge-gateway"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "info,pingora=warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let log = ChildLog::collect(&mut child);
        let (addr, metrics_addr) = log.listening().await;
        let gateway = Self {
            child,
            addr,
            metrics_addr,
            log,
            _dir: dir,
        };
        gateway_ready(gateway.addr).await;
        gateway
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// What its metrics port serves (the filters' counters are there).
    pub async fn scrape_metrics(&self) -> String {
        scrape_metrics(self.metrics_addr.expect("started with a metrics port")).await
    }

    /// Access-log records (`target: access`) written so far.
    pub fn access_log(&self) -> Vec<Value> {
        self.log
            .lines()
            .iter()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter(|record| record["target"] == "access")
            .collect()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pluginConfigs of the three filters, as their WasmPlugins carry them.
pub fn span_enrichment_config() -> Value {
    json!({"fields": [
        {"path": "id"},
        {"path": "user.email", "from": "response",
         "methods": ["user.UserService/GetUser"], "redact": "sha256"}
    ]})
}

pub fn rate_limit_config(limit: u32) -> Value {
    json!({"rules": [{
        "name": "per-tenant",
        "key": [{"type": "header", "name": "x-tenant"}],
        "requests": limit,
        "periodSeconds": 3600
    }]})
}

pub fn cache_headers_config() -> Value {
    json!({"policies": [{
        "name": "user-reads",
        "methods": ["user.UserService/GetUser"],
        "cacheControl": {"scope": "private", "maxAge": 30},
        "vary": ["authorization"],
        "etag": true
    }]})
}

/// The three filters natively, one plugin each (the gateway's default for built-ins).
fn all_three_native(limit: u32) -> Value {
    json!([
        {"name": "span-enrichment", "builtin": "span-enrichment", "workers": 2,
         "config": span_enrichment_config()},
        {"name": "rate-limit", "builtin": "rate-limit", "workers": 2,
         "config": rate_limit_config(limit)},
        {"name": "cache-headers", "builtin": "cache-headers", "workers": 2,
         "config": cache_headers_config()}
    ])
}

/// The bundle natively.
fn bundled_native(limit: u32) -> Value {
    json!([
        {"name": "meshgate-filters", "builtin": "bundle", "workers": 2,
         "config": {
            "spanEnrichment": span_enrichment_config(),
            "rateLimit": rate_limit_config(limit),
            "cacheHeaders": cache_headers_config()
         }}
    ])
}

/// The three modules, one plugin each (as three WasmPlugins).
fn all_three_filters(limit: u32) -> Value {
    json!([
        {"name": "span-enrichment", "module": module("span_enrichment"), "workers": 2,
         "config": span_enrichment_config()},
        {"name": "rate-limit", "module": module("rate_limit"), "workers": 2,
         "config": rate_limit_config(limit)},
        {"name": "cache-headers", "module": module("cache_headers"), "workers": 2,
         "config": cache_headers_config()}
    ])
}

/// The same three configs in the bundle module: one plugin, one stream context per request.
fn bundled_filters(limit: u32) -> Value {
    json!([
        {"name": "meshgate-filters", "module": module("filters"), "workers": 2,
         "config": {
            "spanEnrichment": span_enrichment_config(),
            "rateLimit": rate_limit_config(limit),
            "cacheHeaders": cache_headers_config()
         }}
    ])
}

#[tokio::test]
async fn rest_grpc_and_grpc_web_through_the_native_filters() {
    through_the_filters(all_three_native).await;
}

#[tokio::test]
async fn rest_grpc_and_grpc_web_through_the_native_bundle() {
    through_the_filters(bundled_native).await;
}

#[tokio::test]
async fn rest_grpc_and_grpc_web_through_the_wasm_filters() {
    through_the_filters(all_three_filters).await;
}

#[tokio::test]
async fn rest_grpc_and_grpc_web_through_the_bundled_filters() {
    through_the_filters(bundled_filters).await;
}

async fn through_the_filters(filters: fn(u32) -> Value) {
    const LIMIT: u32 = 3;
    let service = UserService::start(sqlite_path()).await;
    let gw = GatewayProcess::start(service.addr, filters(LIMIT)).await;
    let client = h1();

    let email = format!("grace-{}@example.com", uuid::Uuid::new_v4());
    let created = client
        .post(gw.url("/v1/users"))
        .json(&json!({"name": "Grace Hopper", "email": email, "age": 85}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let user_path = format!("/v1/users/{id}");

    // Cache headers from cache-headers, on the body the gateway rendered.
    let first = client.get(gw.url(&user_path)).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let cache_control = first.headers()["cache-control"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cache_control.contains("private"), "{cache_control}");
    assert!(cache_control.contains("max-age=30"), "{cache_control}");
    assert!(
        first.headers()["vary"]
            .to_str()
            .unwrap()
            .contains("authorization")
    );
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    assert!(
        etag.starts_with('"') && etag.len() > 2,
        "strong etag: {etag}"
    );
    assert_eq!(
        first.json::<Value>().await.unwrap()["email"],
        email.as_str()
    );

    // The same body again: the same tag, and If-None-Match gets a 304 without a body.
    let again = client.get(gw.url(&user_path)).send().await.unwrap();
    assert_eq!(again.headers()["etag"], etag.as_str());
    let not_modified = client
        .get(gw.url(&user_path))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(not_modified.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(not_modified.headers()["etag"], etag.as_str());
    assert!(not_modified.bytes().await.unwrap().is_empty());
    let stale = client
        .get(gw.url(&user_path))
        .header("if-none-match", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.status(), StatusCode::OK);

    // Rate limit keyed by x-tenant: LIMIT requests pass, the next one is 429 over REST.
    for attempt in 0..LIMIT {
        let allowed = client
            .get(gw.url(&user_path))
            .header("x-tenant", "acme")
            .send()
            .await
            .unwrap();
        assert_eq!(allowed.status(), StatusCode::OK, "attempt {attempt}");
    }
    let limited = client
        .get(gw.url(&user_path))
        .header("x-tenant", "acme")
        .header("origin", ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3600).contains(&retry_after), "{retry_after}");
    assert!(
        limited.headers()["ratelimit-policy"]
            .to_str()
            .unwrap()
            .contains("\"per-tenant\"")
    );
    assert_eq!(limited.headers()["access-control-allow-origin"], ORIGIN);
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["code"], 8, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("per-tenant"),
        "{body}"
    );

    // The same bucket answers native gRPC with RESOURCE_EXHAUSTED; another tenant passes.
    let mut grpc =
        user::user_service_client::UserServiceClient::connect(format!("http://{}", gw.addr))
            .await
            .unwrap();
    let mut request = tonic::Request::new(user::GetUserRequest { id: id.clone() });
    request
        .metadata_mut()
        .insert("x-tenant", "acme".parse().unwrap());
    let status = grpc.get_user(request).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("per-tenant"), "{status:?}");
    let mut other = tonic::Request::new(user::GetUserRequest { id: id.clone() });
    other
        .metadata_mut()
        .insert("x-tenant", "globex".parse().unwrap());
    let fetched = grpc.get_user(other).await.unwrap().into_inner();
    assert_eq!(fetched.user.unwrap().email, email);

    // gRPC-web: trailers-only RESOURCE_EXHAUSTED with the CORS headers a browser needs.
    let web = client
        .post(gw.url("/user.UserService/GetUser"))
        .header("content-type", "application/grpc-web+proto")
        .header("origin", ORIGIN)
        .header("x-tenant", "acme")
        .body(grpc_web_request(
            &user::GetUserRequest { id: id.clone() },
            false,
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(web.status(), StatusCode::OK);
    assert_eq!(web.headers()["grpc-status"], "8");
    assert_eq!(web.headers()["access-control-allow-origin"], ORIGIN);
    let exposed = web.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(exposed.contains("grpc-status"), "{exposed}");
    let web_ok = client
        .post(gw.url("/user.UserService/GetUser"))
        .header("content-type", "application/grpc-web+proto")
        .body(grpc_web_request(
            &user::GetUserRequest { id: id.clone() },
            false,
        ))
        .send()
        .await
        .unwrap();
    let reply = parse_grpc_web(&web_ok.bytes().await.unwrap(), false);
    assert_eq!(reply.trailers["grpc-status"], "0");
    assert_eq!(reply.messages.len(), 1);

    // Span enrichment: attributes on the gateway's request record, the email only hashed.
    let mut rest_record = None;
    let mut grpc_record = None;
    let mut web_record = None;
    for _ in 0..100 {
        let log = gw.access_log();
        let find = |protocol: &str, status: u64| {
            log.iter()
                .find(|r| {
                    r["fields"]["protocol"] == protocol
                        && r["fields"]["status"] == status
                        && r["fields"]["grpc_status"] == 0
                        && r["fields"]["path"]
                            .as_str()
                            .is_some_and(|p| p.contains("GetUser") || p.contains(id.as_str()))
                })
                .cloned()
        };
        rest_record = find("rest", 200);
        grpc_record = find("grpc", 200);
        web_record = find("grpc-web", 200);
        if rest_record.is_some() && grpc_record.is_some() && web_record.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let attributes = |record: Option<Value>, what: &str| -> Value {
        let record = record.unwrap_or_else(|| panic!("no access-log record for {what}"));
        let text = record["fields"]["filter_attributes"]
            .as_str()
            .unwrap_or_else(|| panic!("no filter_attributes for {what}: {record}"));
        assert!(!text.contains(&email), "email leaked for {what}: {text}");
        serde_json::from_str(text).unwrap()
    };
    let rest = attributes(rest_record, "REST GetUser");
    assert_eq!(rest["meshgate.grpc_method"], "GetUser", "{rest}");
    assert_eq!(rest["meshgate.grpc_service"], "user.UserService", "{rest}");
    assert_eq!(rest["meshgate.request.id"], id.as_str(), "{rest}");
    assert!(
        rest["meshgate.response.user.email"]
            .as_str()
            .is_some_and(|v| v.starts_with("sha256:")),
        "{rest}"
    );
    let grpc_attributes = attributes(grpc_record, "native gRPC GetUser");
    assert_eq!(grpc_attributes["meshgate.grpc_method"], "GetUser");
    let web_attributes = attributes(web_record, "gRPC-web GetUser");
    assert_eq!(
        web_attributes["meshgate.request.id"],
        id.as_str(),
        "{web_attributes}"
    );
}

#[tokio::test]
async fn a_refused_filter_config_or_a_bad_module_exits_2() {
    let dir = TempDir::new();
    let upstream = ANY_PORT;
    let cases = [
        (
            json!([{
                "name": "rate-limit",
                "module": module("rate_limit"),
                "config": {"rules": [{"name": "r", "key": [{"type": "header"}], "requests": 1,
                                      "periodSeconds": 1}]}
            }]),
            vec![
                "gateway.filters[0]",
                "rate-limit",
                "refused its configuration",
            ],
        ),
        (
            json!([{"name": "cache", "module": module("cache_headers"),
                    "config": {"policiez": []}}]),
            vec!["gateway.filters[0]", "cache", "policiez"],
        ),
        (
            json!([{"name": "bundle", "module": module("filters"),
                    "config": {"rateLimit": {"rulez": []}}}]),
            vec!["gateway.filters[0]", "bundle", "rateLimit: ", "rulez"],
        ),
        (
            json!([{"name": "bundle", "builtin": "bundle",
                    "config": {"rateLimit": {"rulez": []}}}]),
            vec![
                "gateway.filters[0]",
                "native bundle",
                "refused its configuration",
                "rateLimit: ",
                "rulez",
            ],
        ),
        (
            json!([{"name": "rl", "builtin": "rate-limit",
                    "config": {"rules": [{"name": "r", "key": [{"type": "header"}],
                                          "requests": 1, "periodSeconds": 1}]}}]),
            vec!["gateway.filters[0]", "rl", "refused its configuration"],
        ),
        (
            json!([{"name": "x", "builtin": "ratelimit"}]),
            vec!["gateway.filters[0].builtin", "not a built-in filter"],
        ),
        (
            json!([{"name": "x", "builtin": "bundle", "runtime": "wasm"}]),
            vec!["gateway.filters[0].module", "runtime wasm"],
        ),
        (
            json!([{"name": "missing", "module": "no-such-filter.wasm"}]),
            vec!["gateway.filters[0]", "no-such-filter.wasm"],
        ),
        (
            json!([{"name": "rl", "module": module("rate_limit"), "config": "rules"}]),
            vec!["gateway.filters[0].config", "must be an object"],
        ),
    ];
    for (filters, expected) in cases {
        let config = write_config(&dir.0, ANY_PORT, upstream, filters);
        let mut child = Command::new(env!("CARGO_BIN_EXE_edge-gateway"))
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut exit = None;
        for _ in 0..1200 {
            exit = child.try_wait().unwrap();
            if exit.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let Some(exit) = exit else {
            let _ = child.kill();
            panic!("the gateway started despite {config:?}");
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(exit.code(), Some(2), "{stderr}");
        for needle in expected {
            assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
        }
    }
}
