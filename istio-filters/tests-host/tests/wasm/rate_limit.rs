//! rate-limit in the real module: exactness across worker VMs, refill, the three reply
//! shapes, shadow mode, every key source, malformed bodies.

use std::sync::Arc;

use meshgate_filter_host::{Chain, Request, Response};

use crate::common::*;

fn per_api_key(limit: u32, period: u32) -> String {
    format!(
        r#"{{"rules":[{{"name":"per-key","key":[{{"type":"header","name":"x-api-key"}}],"requests":{limit},"periodSeconds":{period}}}]}}"#
    )
}

fn rest(key: &str) -> Request {
    Request::new("GET", "/v1/users/1").header("x-api-key", key)
}

/// Whether the chain let the request through (no local reply).
fn allowed(chain: &Chain, worker: usize, request: Request) -> bool {
    let exchange = chain.on_request_on_worker(worker, request);
    exchange.local_reply().is_none()
}

#[test]
fn exactly_the_limit_is_allowed_across_four_worker_vms() {
    const WORKERS: usize = 4;
    const LIMIT: u32 = 25;
    const PER_WORKER: usize = 40;
    let (chain, plugin, _clock) = chain(RATE_LIMIT, &per_api_key(LIMIT, 3600), WORKERS);
    let chain = Arc::new(chain);
    let total = allowed_across_workers(&chain, WORKERS, PER_WORKER, || rest("tenant-a"));
    assert_eq!(
        total, LIMIT as usize,
        "exactly the limit over {WORKERS} VMs"
    );
    assert_eq!(
        plugin.counter("meshgate_rate_limit_allowed"),
        i64::from(LIMIT)
    );
    assert_eq!(
        plugin.counter("meshgate_rate_limit_limited"),
        (WORKERS * PER_WORKER) as i64 - i64::from(LIMIT)
    );
    assert_eq!(plugin.counter("meshgate_rate_limit_failed_open"), 0);
    // Another key has its own bucket.
    assert!(allowed(&chain, 0, rest("tenant-b")));
}

#[test]
fn buckets_refill_with_elapsed_time_up_to_the_burst() {
    let (chain, _plugin, clock) = chain(RATE_LIMIT, &per_api_key(2, 10), 2);
    assert!(allowed(&chain, 0, rest("k")));
    assert!(allowed(&chain, 1, rest("k")));
    let exchange = chain.on_request_on_worker(0, rest("k"));
    let reply = exchange.local_reply().unwrap();
    assert_eq!(reply.header_value("retry-after"), Some("5"));
    drop(exchange);

    clock.advance(5 * SECOND);
    assert!(allowed(&chain, 1, rest("k")), "one token after 5 s");
    assert!(!allowed(&chain, 0, rest("k")));

    clock.advance(3600 * SECOND);
    let burst: usize = (0..5).filter(|i| allowed(&chain, *i, rest("k"))).count();
    assert_eq!(burst, 2, "refill is capped at the burst");
}

#[test]
fn http_gets_429_grpc_gets_resource_exhausted_trailers_only() {
    let config = r#"{"rules":[{"name":"get-user","methods":["user.UserService/GetUser"],
        "key":[{"type":"grpcMethod"}],"requests":1,"periodSeconds":60}]}"#;

    let (chain, _, _) = chain(RATE_LIMIT, config, 1);
    assert!(allowed(&chain, 0, Request::new("GET", "/v1/users/1")));
    let exchange = chain.on_request(Request::new("GET", "/v1/users/2"));
    let reply = exchange.local_reply().unwrap().clone();
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header_value("retry-after"), Some("60"));
    assert_eq!(
        reply.header_value("ratelimit-policy"),
        Some("\"get-user\";q=1;w=60")
    );
    assert_eq!(
        reply.header_value("ratelimit"),
        Some("\"get-user\";r=0;t=60")
    );
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["error"], "RESOURCE_EXHAUSTED");

    // The REST call and the gRPC call share the method's bucket.
    let exchange = chain.on_request(grpc("GetUser", frame(&get_user("1"))));
    let reply = exchange.local_reply().unwrap().clone();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header_value("content-type"), Some("application/grpc"));
    assert_eq!(reply.header_value("grpc-status"), Some("8"));
    assert!(
        reply
            .header_value("grpc-message")
            .unwrap()
            .contains("rate limit exceeded")
    );
    assert!(reply.body.is_empty(), "trailers-only");

    let exchange = chain.on_request(grpc_web("GetUser", frame(&get_user("1"))));
    let reply = exchange.local_reply().unwrap().clone();
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header_value("content-type"),
        Some("application/grpc-web+proto")
    );
    assert_eq!(reply.header_value("grpc-status"), Some("8"));
    assert!(reply.body.is_empty());

    let exchange = chain.on_request(grpc_web_text("GetUser", &frame(&get_user("1"))));
    let reply = exchange.local_reply().unwrap().clone();
    assert_eq!(
        reply.header_value("content-type"),
        Some("application/grpc-web-text")
    );
    assert_eq!(reply.header_value("grpc-status"), Some("8"));

    // Another method is not covered by the rule.
    assert!(allowed(&chain, 0, Request::new("GET", "/v1/users")));
}

#[test]
fn shadow_mode_lets_everything_through_and_counts() {
    let config = r#"{"mode":"shadow","rules":[{"name":"per-source","key":[{"type":"sourceAddress"}],"requests":2,"periodSeconds":60}]}"#;
    let (chain, plugin, _) = chain(RATE_LIMIT, config, 2);
    let through = (0..6)
        .filter(|i| {
            allowed(
                &chain,
                *i,
                Request::new("GET", "/v1/users").source("10.0.0.7:41000"),
            )
        })
        .count();
    assert_eq!(through, 6);
    assert_eq!(plugin.counter("meshgate_rate_limit_allowed"), 2);
    assert_eq!(plugin.counter("meshgate_rate_limit_shadow_limited"), 4);
    assert_eq!(plugin.counter("meshgate_rate_limit_limited"), 0);
}

#[test]
fn source_address_ignores_the_port_and_principals_are_separate_keys() {
    let config = r#"{"rules":[
        {"name":"per-source","key":[{"type":"sourceAddress"}],"requests":1,"periodSeconds":60},
        {"name":"per-principal","key":[{"type":"principal"}],"requests":2,"periodSeconds":60}]}"#;
    let (chain, _, _) = chain(RATE_LIMIT, config, 1);
    assert!(allowed(
        &chain,
        0,
        Request::new("GET", "/x").source("10.0.0.1:1000")
    ));
    assert!(!allowed(
        &chain,
        0,
        Request::new("GET", "/x").source("10.0.0.1:2000")
    ));
    assert!(allowed(
        &chain,
        0,
        Request::new("GET", "/x").source("10.0.0.2:1000")
    ));

    let alice = "spiffe://cluster.local/ns/meshgate/sa/alice";
    let bob = "spiffe://cluster.local/ns/meshgate/sa/bob";
    assert!(allowed(
        &chain,
        0,
        Request::new("GET", "/x").principal(alice)
    ));
    assert!(allowed(
        &chain,
        0,
        Request::new("GET", "/x").principal(alice)
    ));
    assert!(!allowed(
        &chain,
        0,
        Request::new("GET", "/x").principal(alice)
    ));
    assert!(allowed(&chain, 0, Request::new("GET", "/x").principal(bob)));
}

#[test]
fn message_field_keys_work_for_grpc_grpc_web_and_rest() {
    let config = r#"{"rules":[{"name":"per-user","methods":["user.UserService/GetUser"],
        "key":[{"type":"field","path":"id"}],"requests":1,"periodSeconds":60}]}"#;
    let (chain, _, _) = chain(RATE_LIMIT, config, 2);
    assert!(allowed(&chain, 0, grpc("GetUser", frame(&get_user("u-1")))));
    // Same id over gRPC-web (binary), gRPC-web text and REST: same bucket, limited.
    assert!(!allowed(
        &chain,
        1,
        grpc_web("GetUser", frame(&get_user("u-1")))
    ));
    assert!(!allowed(
        &chain,
        0,
        grpc_web_text("GetUser", &frame(&get_user("u-1")))
    ));
    assert!(!allowed(&chain, 1, Request::new("GET", "/v1/users/u-1")));
    // Another id is another bucket, whichever protocol.
    assert!(allowed(&chain, 0, Request::new("GET", "/v1/users/u-2")));
    assert!(allowed(
        &chain,
        1,
        grpc_web_text("GetUser", &frame(&get_user("u-3")))
    ));
}

#[test]
fn malformed_and_oversized_bodies_pass_through_and_are_counted() {
    let config = r#"{"maxBodyBytes":64,"rules":[{"name":"per-user","methods":["user.UserService/GetUser"],
        "key":[{"type":"field","path":"id"}],"requests":1,"periodSeconds":60}]}"#;
    let (chain, plugin, _) = chain(RATE_LIMIT, config, 1);
    let garbage = vec![0, 0, 0, 0, 3, 0x0a, 0x7f, 0x01];
    let truncated = vec![0, 0, 0, 0, 50, 0x0a];
    let oversized = frame(&get_user(&"x".repeat(200)));
    for body in [garbage.clone(), garbage, truncated, oversized] {
        assert!(allowed(&chain, 0, grpc("GetUser", body)));
    }
    assert!(allowed(
        &chain,
        0,
        grpc_web_text("GetUser", b"\x01\x02not-base64!!")
    ));
    assert_eq!(plugin.counter("meshgate_rate_limit_body_skipped"), 5);
}

#[test]
fn a_full_exchange_ends_cleanly_and_the_response_is_untouched() {
    let (chain, _, _) = chain(RATE_LIMIT, &per_api_key(5, 60), 1);
    let exchange = chain.on_request(rest("k"));
    assert_eq!(exchange.request().header_value("x-api-key"), Some("k"));
    let done = exchange.on_response(
        Response::new(200)
            .header("content-type", "application/json")
            .body("{}"),
    );
    assert_eq!(done.response.status, 200);
    assert_eq!(done.response.body, b"{}");
}
