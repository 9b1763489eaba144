use std::cell::RefCell;

use prost::Message as _;

use super::*;
use crate::filter::Stream;
use crate::host::{Action, Host, HostLayer};
use crate::test_host::{BufferingProxy, TestHost};
use meshgate_wire::grpc::message_frame as encode_frame;

// The real filters in one bundle.

const ALL_THREE: &str = r#"{
    "spanEnrichment": {"fields": [
        {"path": "id"},
        {"path": "user.email", "from": "response", "redact": "sha256"}
    ]},
    "rateLimit": {"rules": [{"name": "per-id", "methods": ["user.UserService/GetUser"],
                             "key": [{"type": "field", "path": "id"}],
                             "requests": 1, "periodSeconds": 60}]},
    "cacheHeaders": {"policies": [{"name": "read", "methods": ["user.UserService/GetUser"],
                                   "cacheControl": {"scope": "private", "maxAge": 30},
                                   "etag": true}]}
}"#;

fn configure(json: &str, host: &mut TestHost) -> Result<Arc<Bundle>, ConfigError> {
    Bundle::configure(json.as_bytes(), host).map(Arc::new)
}

// GET /v1/users/{id} answers the user itself (`response_body: "user"`).
const USER_JSON: &[u8] = br#"{"id":"u1","email":"ada@example.com"}"#;

/// A REST GetUser through the bundle: the request phase, then a 200 JSON response.
fn rest_get(root: &Arc<Bundle>, host: &mut TestHost, id: &str, extra: &[(&str, &str)]) {
    host.request_headers = vec![
        (":method".into(), "GET".into()),
        (":path".into(), format!("/v1/users/{id}")),
        ("x-meshgate-grpc-method".into(), "forged".into()),
    ];
    host.request_headers.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    host.reply = None;
    let mut stream = root.new_stream();
    if stream.on_request_headers(host, true) == Action::Pause {
        return;
    }
    host.response_headers = vec![
        (":status".into(), "200".into()),
        ("content-type".into(), "application/json".into()),
    ];
    host.response_body = USER_JSON.to_vec();
    // Paused or not, the proxy goes on to deliver the (here whole) body.
    stream.on_response_headers(host, false);
    stream.on_response_body(host, USER_JSON.len(), true);
}

#[test]
fn all_three_run_on_a_rest_request_in_one_stream() {
    let mut host = TestHost::default();
    let root = configure(ALL_THREE, &mut host).unwrap();
    rest_get(&root, &mut host, "u1", &[]);
    assert!(host.reply.is_none());
    // span-enrichment: forged header replaced, method and path field emitted.
    assert_eq!(
        host.request_header("x-meshgate-grpc-method").as_deref(),
        Some("GetUser")
    );
    assert_eq!(
        host.request_header("x-meshgate-field-id").as_deref(),
        Some("u1")
    );
    assert!(
        host.filter_state["meshgate.response.user.email"].starts_with(b"sha256:"),
        "the response field is read from the JSON body"
    );
    // cache-headers on the response.
    assert_eq!(
        host.response_header("cache-control").as_deref(),
        Some("private, max-age=30")
    );
    let etag = host.response_header("etag").unwrap();
    assert_eq!(host.counter("meshgate_rate_limit_allowed"), 1);

    // The same id again: limited by the per-id rule, and cache-headers never runs.
    rest_get(&root, &mut host, "u1", &[]);
    assert_eq!(host.reply.as_ref().map(|r| r.status), Some(429));
    assert_eq!(host.counter("meshgate_rate_limit_limited"), 1);
    assert_eq!(host.counter("meshgate_cache_headers_etag"), 1);

    // Another id with the ETag: 304 without the body.
    rest_get(&root, &mut host, "u2", &[("if-none-match", &etag)]);
    assert_eq!(host.response_header(":status").as_deref(), Some("304"));
    assert!(host.response_body.is_empty());
    assert_eq!(host.counter("meshgate_cache_headers_not_modified"), 1);
}

#[test]
fn a_grpc_body_reaches_every_member_that_reads_it() {
    let mut host = TestHost::default();
    let root = configure(ALL_THREE, &mut host).unwrap();
    let body =
        encode_frame(&meshgate_proto::user::GetUserRequest { id: "g7".into() }.encode_to_vec());
    for round in 0..2 {
        host.request_headers = vec![
            (":method".into(), "POST".into()),
            (":path".into(), "/user.UserService/GetUser".into()),
            ("content-type".into(), "application/grpc".into()),
        ];
        host.reply = None;
        let mut stream = root.new_stream();
        let mut proxy = BufferingProxy::default();
        assert_eq!(stream.on_request_headers(&mut host, false), Action::Pause);
        let (first, rest) = body.split_at(3);
        let first = std::str::from_utf8(first).unwrap();
        assert_eq!(
            proxy.request_chunk(&mut stream, &mut host, first, false),
            Action::Pause
        );
        let rest = String::from_utf8(rest.to_vec()).unwrap();
        let action = proxy.request_chunk(&mut stream, &mut host, &rest, true);
        assert_eq!(
            host.request_header("x-meshgate-field-id").as_deref(),
            Some("g7")
        );
        if round == 0 {
            assert_eq!(action, Action::Continue);
        } else {
            assert_eq!(
                action,
                Action::Pause,
                "the id read from the body is limited"
            );
            assert_eq!(host.reply.as_ref().and_then(|r| r.grpc_status), Some(8));
        }
    }
}

/// Counts the reads that cross the wasm boundary in a real proxy.
struct CountingHost {
    inner: TestHost,
    reads: RefCell<Vec<&'static str>>,
}

impl CountingHost {
    fn read(&self, what: &'static str) {
        self.reads.borrow_mut().push(what);
    }
    fn count(&self, what: &str) -> usize {
        self.reads.borrow().iter().filter(|r| **r == what).count()
    }
}

impl HostLayer for CountingHost {
    fn inner(&self) -> &dyn Host {
        &self.inner
    }
    fn inner_mut(&mut self) -> &mut dyn Host {
        &mut self.inner
    }
    fn request_header(&self, name: &str) -> Option<String> {
        self.read("request_header");
        self.inner.request_header(name)
    }
    fn request_headers(&self) -> Vec<(String, String)> {
        self.read("request_headers");
        self.inner.request_headers()
    }
    fn response_header(&self, name: &str) -> Option<String> {
        self.read("response_header");
        self.inner.response_header(name)
    }
    fn response_headers(&self) -> Vec<(String, String)> {
        self.read("response_headers");
        self.inner.response_headers()
    }
    fn request_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        self.read("request_body");
        self.inner.request_body(start, size)
    }
    fn response_body(&self, start: usize, size: usize) -> Option<Vec<u8>> {
        self.read("response_body");
        self.inner.response_body(start, size)
    }
}

#[test]
fn members_share_one_fetch_of_each_header_map_and_body() {
    let mut host = CountingHost {
        inner: TestHost::default(),
        reads: RefCell::default(),
    };
    let root = configure(ALL_THREE, &mut host.inner).unwrap();
    let body =
        encode_frame(&meshgate_proto::user::GetUserRequest { id: "c1".into() }.encode_to_vec());
    host.inner.request_headers = vec![
        (":method".into(), "POST".into()),
        (":path".into(), "/user.UserService/GetUser".into()),
        ("content-type".into(), "application/grpc".into()),
    ];
    host.inner.request_body.clone_from(&body);
    let mut stream = root.new_stream();
    assert_eq!(stream.on_request_headers(&mut host, false), Action::Pause);
    assert_eq!(
        stream.on_request_body(&mut host, body.len(), true),
        Action::Continue
    );
    // Two members read the id from the body; the first to identify the request fetched
    // the headers and the others got its target.
    assert_eq!(host.count("request_body"), 1);
    assert_eq!(host.count("request_headers"), 1, "once per request");
    assert_eq!(host.count("request_header"), 0);

    // REST: enrichment and the ETag both read the JSON response; cache-headers reads
    // several response headers and enrichment grpc-status.
    host.reads.borrow_mut().clear();
    host.inner.request_headers = vec![
        (":method".into(), "GET".into()),
        (":path".into(), "/v1/users/c2".into()),
    ];
    let mut stream = root.new_stream();
    assert_eq!(stream.on_request_headers(&mut host, true), Action::Continue);
    host.inner.response_headers = vec![
        (":status".into(), "200".into()),
        ("content-type".into(), "application/json".into()),
    ];
    host.inner.response_body = USER_JSON.to_vec();
    assert_eq!(stream.on_response_headers(&mut host, false), Action::Pause);
    stream.on_response_body(&mut host, USER_JSON.len(), true);
    assert!(host.inner.response_header("etag").is_some());
    assert!(
        host.inner
            .filter_state
            .contains_key("meshgate.response.user.email")
    );
    assert_eq!(host.count("response_header"), 0);
    assert_eq!(host.count("response_headers"), 2, "once per callback");
    assert_eq!(host.count("response_body"), 1);
}

#[test]
fn config_errors_name_the_member_and_nothing_is_half_configured() {
    let mut host = TestHost::default();
    let error = |json: &str| {
        configure(json, &mut TestHost::default())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    };
    assert!(error("{}").contains("no filter configured"));
    assert!(error(r#"{"rateLimits": {}}"#).contains("unknown field `rateLimits`"));
    let member = error(r#"{"cacheHeaders": {"policies": [{"name": "x"}]}}"#);
    assert!(member.starts_with("cacheHeaders: "), "{member}");
    let member = error(r#"{"spanEnrichment": {"fields": [{"path": "nope"}]}}"#);
    assert!(member.starts_with("spanEnrichment: "), "{member}");
    let one = r#"{"rateLimit": {"rules": [{"name": "all", "key": [{"type": "sourceAddress"}],
                                           "requests": 1, "periodSeconds": 1}]}}"#;
    assert!(configure(one, &mut host).is_ok());
}
