//! cache-headers in the real module: policies, stable strong ETags, 304 flows.

use meshgate_filter_host::{Chain, Request, Response};

use crate::common::*;

const CONFIG: &str = r#"{"policies":[
  {"name":"user-reads","methods":["user.UserService/GetUser","user.UserService/ListUsers"],
   "cacheControl":{"scope":"private","maxAge":30,"mustRevalidate":true},"vary":["authorization"],"etag":true},
  {"name":"user-writes","methods":["user.UserService/CreateUser","user.UserService/UpdateUser","user.UserService/DeleteUser"],
   "cacheControl":{"noStore":true}},
  {"name":"openapi","routes":["GET /openapi.json"],"cacheControl":{"scope":"public","maxAge":300,"sMaxage":600},"etag":true,"overrideUpstreamNoStore":true}
]}"#;

const USER: &[u8] = br#"{"user":{"id":"1","name":"Ada"}}"#;

fn run(chain: &Chain, worker: usize, request: Request, response: Response) -> Response {
    chain
        .on_request_on_worker(worker, request)
        .on_response(response)
        .response
}

fn ok(body: &[u8]) -> Response {
    Response::new(200)
        .header("content-type", "application/json")
        .header("content-length", &body.len().to_string())
        .body(body.to_vec())
}

#[test]
fn reads_get_cache_control_vary_and_a_stable_strong_etag() {
    let (chain, _, _) = chain(CACHE_HEADERS, CONFIG, 2);
    let first = run(&chain, 0, Request::new("GET", "/v1/users/1"), ok(USER));
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header_value("cache-control"),
        Some("private, max-age=30, must-revalidate")
    );
    assert_eq!(first.header_value("vary"), Some("authorization"));
    let etag = first.header_value("etag").unwrap().to_owned();
    assert!(
        etag.starts_with('"') && !etag.starts_with("W/"),
        "strong: {etag}"
    );
    assert_eq!(first.body, USER);

    // Same body on another worker VM: same ETag. Different body: different ETag.
    let again = run(&chain, 1, Request::new("GET", "/v1/users/1"), ok(USER));
    assert_eq!(again.header_value("etag"), Some(etag.as_str()));
    let changed = run(
        &chain,
        1,
        Request::new("GET", "/v1/users/1"),
        ok(br#"{"user":{"id":"1","name":"Bea"}}"#),
    );
    assert_ne!(changed.header_value("etag"), Some(etag.as_str()));
}

#[test]
fn if_none_match_turns_a_fresh_match_into_304_without_body() {
    let (chain, plugin, _) = chain(CACHE_HEADERS, CONFIG, 1);
    let etag = run(&chain, 0, Request::new("GET", "/v1/users/1"), ok(USER))
        .header_value("etag")
        .unwrap()
        .to_owned();

    let conditional = Request::new("GET", "/v1/users/1").header("if-none-match", &etag);
    let not_modified = run(&chain, 0, conditional, ok(USER));
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.header_value("etag"), Some(etag.as_str()));
    assert_eq!(not_modified.header_value("content-length"), None);
    assert_eq!(
        not_modified.header_value("cache-control"),
        Some("private, max-age=30, must-revalidate")
    );
    assert_eq!(plugin.counter("meshgate_cache_headers_not_modified"), 1);

    // The resource changed: the old ETag no longer matches, the full body comes back.
    let stale = Request::new("GET", "/v1/users/1").header("if-none-match", &etag);
    let fresh = run(
        &chain,
        0,
        stale,
        ok(b"{\"user\":{\"id\":\"1\",\"name\":\"Cy\"}}"),
    );
    assert_eq!(fresh.status, 200);
    assert!(!fresh.body.is_empty());

    // An upstream ETag is kept and answers conditionals without hashing.
    let upstream = ok(USER).header("etag", "\"v7\"");
    let kept = run(
        &chain,
        0,
        Request::new("GET", "/v1/users/1").header("if-none-match", "W/\"v7\""),
        upstream,
    );
    assert_eq!(kept.status, 304);
    assert_eq!(kept.header_value("etag"), Some("\"v7\""));
}

#[test]
fn only_cacheable_statuses_and_never_over_an_upstream_no_store() {
    let (chain, _, _) = chain(CACHE_HEADERS, CONFIG, 1);
    let error = run(
        &chain,
        0,
        Request::new("GET", "/v1/users/1"),
        Response::new(503).body("down"),
    );
    assert_eq!(error.header_value("cache-control"), None);
    assert_eq!(error.header_value("etag"), None);

    let created = Request::new("GET", "/v1/users/1").header("if-none-match", "*");
    let no_store = run(
        &chain,
        0,
        created,
        ok(USER).header("cache-control", "no-store"),
    );
    assert_eq!(no_store.status, 200, "no 304 over an upstream no-store");
    assert_eq!(no_store.header_value("cache-control"), Some("no-store"));
    assert_eq!(no_store.header_value("etag"), None);

    // ...unless the policy says so.
    let spec = run(
        &chain,
        0,
        Request::new("GET", "/openapi.json"),
        ok(b"{}").header("cache-control", "no-store"),
    );
    assert_eq!(
        spec.header_value("cache-control"),
        Some("public, max-age=300, s-maxage=600")
    );
    assert!(spec.header_value("etag").is_some());
}

#[test]
fn writes_get_no_store_and_grpc_gets_no_etag_or_304() {
    let (chain, _, _) = chain(CACHE_HEADERS, CONFIG, 1);
    let created = run(
        &chain,
        0,
        Request::new("POST", "/v1/users")
            .header("content-type", "application/json")
            .body("{}"),
        Response::new(201).body(USER.to_vec()),
    );
    assert_eq!(created.header_value("cache-control"), Some("no-store"));
    assert_eq!(created.header_value("etag"), None);

    let reply = Response::new(200)
        .header("content-type", "application/grpc-web+proto")
        .body(frame(&get_user("1")));
    let web = run(
        &chain,
        0,
        grpc_web("GetUser", frame(&get_user("1"))).header("if-none-match", "*"),
        reply,
    );
    assert_eq!(web.status, 200);
    assert_eq!(
        web.header_value("cache-control"),
        Some("private, max-age=30, must-revalidate")
    );
    assert_eq!(web.header_value("etag"), None);
    assert!(!web.body.is_empty());
}

#[test]
fn unmatched_requests_are_untouched() {
    let (chain, _, _) = chain(CACHE_HEADERS, CONFIG, 1);
    let other = run(&chain, 0, Request::new("GET", "/healthz"), ok(b"ok"));
    assert_eq!(other.header_value("cache-control"), None);
    assert_eq!(other.header_value("etag"), None);
}

#[test]
fn oversized_responses_pass_through_without_an_etag_and_are_counted() {
    let config = r#"{"maxBodyBytes":16,"policies":[{"name":"reads","methods":["user.UserService/GetUser"],
        "cacheControl":{"maxAge":5},"etag":true}]}"#;
    let (chain, plugin, _) = chain(CACHE_HEADERS, config, 1);
    let big = vec![b'x'; 4096];
    let response = run(
        &chain,
        0,
        Request::new("GET", "/v1/users/1").header("if-none-match", "*"),
        ok(&big),
    );
    assert_eq!(response.status, 200);
    assert_eq!(response.body, big);
    assert_eq!(response.header_value("cache-control"), Some("max-age=5"));
    assert_eq!(response.header_value("etag"), None);
    assert_eq!(plugin.counter("meshgate_cache_headers_body_skipped"), 1);
}
