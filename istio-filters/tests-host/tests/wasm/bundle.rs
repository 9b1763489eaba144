//! The bundle module (`meshgate_filters.wasm`): the three filters in one stream context, in
//! the real module. Its REST flow (cache headers, 304, 429) is in `full_chain`; here: the rate
//! limit's exactness across worker VMs, one message field read by two members over gRPC and
//! gRPC-web, and the response phase (fields, status in trailers) in reverse order.

use std::sync::Arc;

use meshgate_filter_host::Response;
use meshgate_proto::user;

use crate::common::*;

/// Enrichment of `id` and the response email, a per-id limit on GetUser, ETags on GetUser.
fn config(limit: u32) -> String {
    format!(
        r#"{{
        "spanEnrichment": {{"fields": [
            {{"path": "id"}},
            {{"path": "user.email", "from": "response", "redact": "sha256"}}]}},
        "rateLimit": {{"rules": [{{"name": "per-id", "methods": ["user.UserService/GetUser"],
            "key": [{{"type": "field", "path": "id"}}], "requests": {limit}, "periodSeconds": 3600}}]}},
        "cacheHeaders": {{"policies": [{{"name": "reads", "methods": ["user.UserService/GetUser"],
            "cacheControl": {{"scope": "private", "maxAge": 30}}, "etag": true}}]}}
    }}"#
    )
}

#[test]
fn exactly_the_limit_is_allowed_across_four_worker_vms() {
    const WORKERS: usize = 4;
    const LIMIT: u32 = 25;
    const PER_WORKER: usize = 40;
    let (chain, plugin, _clock) = chain(BUNDLE, &config(LIMIT), WORKERS);
    let total = allowed_across_workers(&Arc::new(chain), WORKERS, PER_WORKER, || {
        grpc("GetUser", frame(&get_user("hot")))
    });
    assert_eq!(
        total, LIMIT as usize,
        "exactly the limit over {WORKERS} VMs"
    );
    assert_eq!(
        plugin.counter("meshgate_rate_limit_limited"),
        (WORKERS * PER_WORKER) as i64 - i64::from(LIMIT)
    );
    // Every request was enriched, limited or not: span-enrichment runs first.
    assert_eq!(
        plugin.counter("meshgate_span_enrichment_enriched"),
        (WORKERS * PER_WORKER) as i64
    );
}

#[test]
fn one_field_feeds_the_limit_and_the_span_over_grpc_and_grpc_web() {
    let (chain, _, _) = chain(BUNDLE, &config(1), 1);
    for (round, request) in [
        grpc("GetUser", frame(&get_user("g-1"))),
        grpc_web("GetUser", frame(&get_user("g-1"))),
    ]
    .into_iter()
    .enumerate()
    {
        let web = round == 1;
        let exchange = chain.on_request(request);
        assert_eq!(
            exchange.request().header_value("x-meshgate-field-id"),
            Some("g-1"),
            "the enrichment read the id from the body"
        );
        if !web {
            assert!(exchange.local_reply().is_none());
            continue;
        }
        // The same id read from the gRPC-web body hits the per-id bucket.
        let reply = exchange.local_reply().expect("limited").clone();
        assert_eq!(reply.header_value("grpc-status"), Some("8"));
    }
}

#[test]
fn the_response_phase_reads_fields_and_status_and_leaves_grpc_bodies_alone() {
    let (chain, plugin, _) = chain(BUNDLE, &config(100), 2);
    let reply = user::GetUserResponse {
        user: Some(user::User {
            id: "u-9".into(),
            email: "grace@example.com".into(),
            ..Default::default()
        }),
        message: String::new(),
    };
    let done = chain
        .on_request(grpc("GetUser", frame(&get_user("u-9"))))
        .on_response(
            Response::new(200)
                .header("content-type", "application/grpc")
                .body(frame(&reply))
                .trailer("grpc-status", "0"),
        );
    assert_eq!(attribute(&done, "meshgate.grpc_method"), Some("GetUser"));
    assert_eq!(attribute(&done, "meshgate.request.id"), Some("u-9"));
    assert_eq!(attribute(&done, "meshgate.grpc_status"), Some("OK"));
    let email = attribute(&done, "meshgate.response.user.email").unwrap();
    assert!(
        email.starts_with("sha256:") && !email.contains("grace"),
        "{email}"
    );
    assert_eq!(done.response.body, frame(&reply), "the body is untouched");
    assert_eq!(plugin.counter("meshgate_rate_limit_allowed"), 1);
}
