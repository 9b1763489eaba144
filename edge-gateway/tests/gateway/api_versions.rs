//! `user.v2.UserService` beside `user.UserService` through the edge, against the real
//! user-service: v2's REST routes from its annotations (cursor pages, RFC 3339 timestamps,
//! the resource as the answer), native gRPC, one OpenAPI document with both, and the filters
//! recognising v2 methods (the shipped mesh configs, run natively, and a rule naming a v2
//! method only).

use std::path::Path;
use std::time::Duration;

use meshgate_proto::user::v2 as user_v2;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;
use crate::wasm_filters::GatewayProcess;

/// `2026-12-01T06:00:00Z`: proto3 JSON's Timestamp (whole seconds are written without a
/// fraction).
fn is_rfc3339_utc(value: &Value) -> bool {
    let Some(text) = value.as_str() else {
        return false;
    };
    let bytes = text.as_bytes();
    text.len() == 20
        && text.ends_with('Z')
        && bytes[10] == b'T'
        && [4, 7].iter().all(|&i| bytes[i] == b'-')
        && [13, 16].iter().all(|&i| bytes[i] == b':')
}

#[tokio::test]
async fn v2_rest_and_grpc_beside_v1_through_the_edge() {
    let service = UserService::start(sqlite_path()).await;
    let gw = spawn_gateway(&[service.addr]).await;
    let client = h2();

    // Create through v2: 201, Location under /v2, the user itself with RFC 3339 timestamps.
    let created = client
        .post(gw.url("/v2/users"))
        .json(&json!({"name": "Ada", "email": "ada@example.com", "age": 36}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let location = created.headers()["location"].to_str().unwrap().to_owned();
    let ada: Value = created.json().await.unwrap();
    let id = ada["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/v2/users/{id}"));
    assert!(is_rfc3339_utc(&ada["createdAt"]), "{ada}");
    assert!(
        ada.get("message").is_none() && ada.get("user").is_none(),
        "{ada}"
    );

    // The same user through v1 (unix seconds) and v2 gRPC (Timestamp): the same instant.
    let old: Value = get_json(&client, gw.url(&format!("/v1/users/{id}"))).await;
    assert_eq!(old["email"], "ada@example.com");
    let mut grpc =
        user_v2::user_service_client::UserServiceClient::connect(format!("http://{}", gw.addr))
            .await
            .unwrap();
    let fetched = grpc
        .get_user(user_v2::GetUserRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        old["createdAt"].as_str().unwrap().parse::<i64>().unwrap(),
        fetched.created_at.unwrap().seconds
    );

    // A user created through v1 is listed by v2; a cursor walk over REST sees each user once.
    for n in 0..4 {
        let made = client
            .post(gw.url("/v1/users"))
            .json(&json!({"name": format!("User {n}"), "email": format!("u{n}@example.com"), "age": 20}))
            .send()
            .await
            .unwrap();
        assert_eq!(made.status(), StatusCode::CREATED);
    }
    let mut seen = Vec::new();
    let mut url = gw.url("/v2/users?pageSize=2");
    loop {
        let page: Value = get_json(&client, &url).await;
        assert_eq!(page["totalSize"], 5, "{page}");
        for user in page["users"].as_array().unwrap() {
            assert!(is_rfc3339_utc(&user["updatedAt"]), "{user}");
            seen.push(user["id"].as_str().unwrap().to_owned());
        }
        match page["nextPageToken"].as_str().unwrap() {
            "" => break,
            token => url = gw.url(&format!("/v2/users?pageSize=2&pageToken={token}")),
        }
    }
    assert_eq!(seen.len(), 5, "{seen:?}");
    assert_eq!(
        seen.last(),
        Some(&id),
        "newest first: Ada was created first"
    );
    let unique: std::collections::HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), 5);

    // Refused tokens and sizes: 400 with google.rpc.Status naming the field.
    let bad = client
        .get(gw.url("/v2/users?pageToken=forged-token"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["code"], 3, "{body}");
    assert_eq!(
        body["details"][0]["fieldViolations"][0]["field"], "page_token",
        "{body}"
    );
    let negative = client
        .get(gw.url("/v2/users?pageSize=-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(negative.status(), StatusCode::BAD_REQUEST);
    let body = negative.text().await.unwrap();
    assert!(
        body.contains("page_size") || body.contains("pageSize"),
        "{body}"
    );

    // Delete through v2 answers Empty; v1 no longer finds the user.
    let deleted = client.delete(gw.url(&location)).send().await.unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    assert_eq!(deleted.json::<Value>().await.unwrap(), json!({}));
    assert_eq!(
        get_status(&client, gw.url(&format!("/v1/users/{id}"))).await,
        StatusCode::NOT_FOUND
    );

    // One OpenAPI document for both versions.
    let doc: Value = get_json(&client, gw.url("/openapi.json")).await;
    for (path, tag) in [
        ("/v1/users", "user.UserService"),
        ("/v2/users", "user.v2.UserService"),
    ] {
        assert_eq!(doc["paths"][path]["get"]["tags"][0], tag, "{path}");
    }
    assert_eq!(
        doc["components"]["schemas"]["user.v2.User"]["properties"]["createdAt"]["format"],
        "date-time"
    );
}

/// `spec.pluginConfig` of a WasmPlugin in mesh/wasm-plugins, as JSON.
fn shipped_plugin_config(file: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../mesh/wasm-plugins")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let plugin: Value = serde_norway::from_str(&text).unwrap();
    plugin["spec"]["pluginConfig"].clone()
}

#[tokio::test]
async fn the_filters_recognise_v2_methods() {
    let service = UserService::start(sqlite_path()).await;
    let client = h1();

    // The shipped WasmPlugin configs, which name v1 and v2 methods, run natively.
    let shipped = GatewayProcess::start(
        service.addr,
        json!([
            {"name": "span-enrichment", "builtin": "span-enrichment",
             "config": shipped_plugin_config("span-enrichment.yaml")},
            {"name": "rate-limit", "builtin": "rate-limit",
             "config": shipped_plugin_config("rate-limit.yaml")},
            {"name": "cache-headers", "builtin": "cache-headers",
             "config": shipped_plugin_config("cache-headers.yaml")}
        ]),
    )
    .await;
    let created = client
        .post(shipped.url("/v2/users"))
        .json(&json!({"name": "Lin", "email": "lin@example.com", "age": 30}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    assert!(
        created.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("no-store"),
        "user-writes policy on user.v2.UserService/CreateUser"
    );
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let read = client
        .get(shipped.url(&format!("/v2/users/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    let cache_control = read.headers()["cache-control"].to_str().unwrap().to_owned();
    assert!(cache_control.contains("max-age=30"), "{cache_control}");
    assert!(read.headers().contains_key("etag"));

    // span-enrichment tagged the v2 read: its method, the id from the path, the answered email
    // (at v2's path, `email`) only hashed.
    let mut attributes = None;
    for _ in 0..100 {
        attributes = shipped.access_log().iter().find_map(|record| {
            let fields = &record["fields"];
            (fields["protocol"] == "rest"
                && fields["status"] == 200
                && fields["path"]
                    .as_str()
                    .is_some_and(|p| p.starts_with("/v2/users/") && p.contains(id.as_str())))
            .then(|| fields["filter_attributes"].as_str().map(str::to_owned))
            .flatten()
        });
        if attributes.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = attributes.expect("an access-log record of GET /v2/users/{id}");
    assert!(!text.contains("lin@example.com"), "{text}");
    let attributes: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        attributes["meshgate.grpc_service"], "user.v2.UserService",
        "{attributes}"
    );
    assert_eq!(
        attributes["meshgate.grpc_method"], "GetUser",
        "{attributes}"
    );
    assert_eq!(
        attributes["meshgate.request.id"],
        id.as_str(),
        "{attributes}"
    );
    assert!(
        attributes["meshgate.response.email"]
            .as_str()
            .is_some_and(|v| v.starts_with("sha256:")),
        "{attributes}"
    );
    drop(shipped);

    // A rule naming only user.v2.UserService/ListUsers: GET /v2/users is limited, GET
    // /v1/users (user.UserService/ListUsers) is not.
    let limited = GatewayProcess::start(
        service.addr,
        json!([{"name": "rate-limit", "builtin": "rate-limit", "config": {"rules": [{
            "name": "v2-lists",
            "methods": ["user.v2.UserService/ListUsers"],
            "key": [{"type": "header", "name": "x-tenant"}],
            "requests": 2,
            "periodSeconds": 3600
        }]}}]),
    )
    .await;
    let get = |path: &str| {
        client
            .get(limited.url(path))
            .header("x-tenant", "acme")
            .send()
    };
    for _ in 0..2 {
        assert_eq!(get("/v2/users").await.unwrap().status(), StatusCode::OK);
    }
    let refused = get("/v2/users?pageSize=5").await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(refused.text().await.unwrap().contains("v2-lists"));
    for _ in 0..3 {
        assert_eq!(get("/v1/users").await.unwrap().status(), StatusCode::OK);
    }
}
