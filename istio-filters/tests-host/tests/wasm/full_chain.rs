//! The three filters as the mesh and the gateway run them (enrichment, rate limit, cache
//! headers), as three modules in a chain and as the bundle module: a REST client gets cache
//! headers, then a 304, then a 429, the same either way.

use std::sync::Arc;

use meshgate_filter_host::{Chain, ManualClock, Request, Response};

use crate::common::*;

const SPAN_CONFIG: &str = r#"{"fields":[{"path":"id"}]}"#;
const RATE_CONFIG: &str = r#"{"rules":[{"name":"reads","methods":["user.UserService/GetUser"],"key":[{"type":"sourceAddress"}],"requests":2,"periodSeconds":60}]}"#;
const CACHE_CONFIG: &str = r#"{"policies":[{"name":"reads","methods":["user.UserService/GetUser"],"cacheControl":{"scope":"private","maxAge":30},"etag":true}]}"#;

#[test]
fn rest_client_gets_cache_headers_then_304_then_429() {
    let clock = ManualClock::new(START);
    let enrichment = load(SPAN_ENRICHMENT, SPAN_CONFIG, 2, Arc::clone(&clock));
    let limiter = load(RATE_LIMIT, RATE_CONFIG, 2, Arc::clone(&clock));
    let cache = load(CACHE_HEADERS, CACHE_CONFIG, 2, Arc::clone(&clock));
    rest_flow(&Chain::new(vec![enrichment, limiter, cache]), &clock);
}

#[test]
fn rest_client_gets_cache_headers_then_304_then_429_from_the_bundle() {
    let clock = ManualClock::new(START);
    let config = format!(
        r#"{{"spanEnrichment":{SPAN_CONFIG},"rateLimit":{RATE_CONFIG},"cacheHeaders":{CACHE_CONFIG}}}"#
    );
    let bundle = load(BUNDLE, &config, 2, Arc::clone(&clock));
    rest_flow(&Chain::new(vec![bundle]), &clock);
}

fn rest_flow(chain: &Chain, clock: &ManualClock) {
    let body = br#"{"user":{"id":"7","name":"Ada"}}"#.to_vec();
    let get = || Request::new("GET", "/v1/users/7").source("192.0.2.10:5000");

    let first = chain.on_request(get());
    assert!(first.local_reply().is_none());
    assert_eq!(
        first.request().header_value("x-meshgate-grpc-method"),
        Some("GetUser")
    );
    assert_eq!(
        first.request().header_value("x-meshgate-field-id"),
        Some("7")
    );
    let done = first.on_response(Response::new(200).body(body.clone()));
    assert_eq!(
        done.response.header_value("cache-control"),
        Some("private, max-age=30")
    );
    let etag = done.response.header_value("etag").unwrap().to_owned();
    assert!(
        done.attributes
            .iter()
            .any(|(k, v)| k == "meshgate.grpc_method" && v == "GetUser")
    );

    let second = chain.on_request(get().header("if-none-match", &etag));
    assert!(second.local_reply().is_none());
    let done = second.on_response(Response::new(200).body(body.clone()));
    assert_eq!(done.response.status, 304);
    assert!(done.response.body.is_empty());

    let third = chain.on_request(get());
    let reply = third.local_reply().unwrap().clone();
    assert_eq!(reply.status, 429);
    assert!(reply.header_value("retry-after").is_some());
    // The local reply still carries the enrichment gathered before the limit hit.
    let done = third.on_response(reply);
    assert_eq!(done.response.status, 429);
    assert!(
        done.attributes
            .iter()
            .any(|(k, v)| k == "meshgate.grpc_method" && v == "GetUser")
    );

    clock.advance(30 * SECOND);
    assert!(chain.on_request(get()).local_reply().is_none(), "refilled");
}
