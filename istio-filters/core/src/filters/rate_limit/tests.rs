use prost::Message as _;

use super::*;
use crate::filter::Stream;
use crate::host::Action;
use crate::test_host::TestHost;
use meshgate_wire::grpc::{message_frame as encode_frame, status};

fn configure(json: &str) -> Result<Arc<RateLimit>, ConfigError> {
    RateLimit::configure(json.as_bytes(), &mut TestHost::default()).map(Arc::new)
}

fn run(root: &Arc<RateLimit>, host: &mut TestHost) -> Action {
    let mut stream = root.new_stream();
    let eos = host.request_body.is_empty();
    let action = stream.on_request_headers(host, eos);
    if eos || action == Action::Continue {
        return action;
    }
    let size = host.request_body.len();
    stream.on_request_body(host, size, true)
}

const PER_HEADER: &str = r#"{"rules":[{"name":"per-key","key":[{"type":"header","name":"x-api-key"}],"requests":2,"periodSeconds":60}]}"#;

#[test]
fn limits_per_header_and_skips_requests_without_it() {
    let root = configure(PER_HEADER).unwrap();
    let mut host = TestHost::default();
    root.rules[0].table.create_pages(&mut host);
    let mut results = Vec::new();
    for _ in 0..3 {
        host.request_headers = vec![
            (":path".into(), "/x".into()),
            ("x-api-key".into(), "k1".into()),
        ];
        host.reply = None;
        results.push(run(&root, &mut host));
    }
    assert_eq!(results, [Action::Continue, Action::Continue, Action::Pause]);
    let reply = host.reply.clone().unwrap();
    assert_eq!(reply.status, 429);
    let header = |n: &str| {
        reply
            .headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("retry-after").as_deref(), Some("30"));
    assert_eq!(
        header("ratelimit-policy").as_deref(),
        Some("\"per-key\";q=2;w=60")
    );
    assert_eq!(header("ratelimit").as_deref(), Some("\"per-key\";r=0;t=60"));

    host.request_headers = vec![(":path".into(), "/x".into())];
    host.reply = None;
    assert_eq!(
        run(&root, &mut host),
        Action::Continue,
        "no key, rule does not apply"
    );
    assert!(host.reply.is_none());
}

#[test]
fn limits_grpc_by_message_field_with_resource_exhausted() {
    let root = configure(
        r#"{"rules":[{"name":"per-user","methods":["user.UserService/GetUser"],
            "key":[{"type":"grpcMethod"},{"type":"field","path":"id"}],"requests":1,"periodSeconds":10}]}"#,
    )
    .unwrap();
    let mut host = TestHost::default();
    let request = |host: &mut TestHost, id: &str| {
        host.request_headers = vec![
            (":method".into(), "POST".into()),
            (":path".into(), "/user.UserService/GetUser".into()),
            ("content-type".into(), "application/grpc".into()),
        ];
        host.request_body =
            encode_frame(&meshgate_proto::user::GetUserRequest { id: id.into() }.encode_to_vec());
        host.reply = None;
        run(&root, host)
    };
    assert_eq!(request(&mut host, "a"), Action::Continue);
    assert_eq!(request(&mut host, "b"), Action::Continue);
    assert_eq!(request(&mut host, "a"), Action::Pause);
    let reply = host.reply.clone().unwrap();
    assert_eq!(reply.grpc_status, Some(status::RESOURCE_EXHAUSTED));
    host.now = 10_000_000_000;
    assert_eq!(
        request(&mut host, "a"),
        Action::Continue,
        "refilled after the period"
    );
}

#[test]
fn shadow_mode_counts_but_lets_through() {
    let json = r#"{"mode":"shadow","rules":[{"name":"all","key":[{"type":"sourceAddress"}],"requests":1,"periodSeconds":60}]}"#;
    let mut host = TestHost::default();
    host.properties
        .insert("source.address".into(), b"10.1.2.3:4444".to_vec());
    let root = Arc::new(RateLimit::configure(json.as_bytes(), &mut host).unwrap());
    for _ in 0..3 {
        host.request_headers = vec![(":path".into(), "/x".into())];
        assert_eq!(run(&root, &mut host), Action::Continue);
    }
    assert!(host.reply.is_none());
    assert_eq!(host.counter("meshgate_rate_limit_shadow_limited"), 2);
    assert_eq!(host.counter("meshgate_rate_limit_allowed"), 1);
}

#[test]
fn malformed_bodies_pass_and_are_counted() {
    let json = r#"{"rules":[{"name":"per-user","methods":["user.UserService/GetUser"],
            "key":[{"type":"field","path":"id"}],"requests":1,"periodSeconds":10}]}"#;
    let mut host = TestHost::default();
    let root = Arc::new(RateLimit::configure(json.as_bytes(), &mut host).unwrap());
    for _ in 0..3 {
        host.request_headers = vec![
            (":path".into(), "/user.UserService/GetUser".into()),
            ("content-type".into(), "application/grpc".into()),
        ];
        host.request_body = vec![0, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff];
        assert_eq!(run(&root, &mut host), Action::Continue);
    }
    assert_eq!(host.counter("meshgate_rate_limit_body_skipped"), 3);
}

#[test]
fn rejects_bad_configs_with_a_precise_message() {
    let cases = [
        ("", "pluginConfig is empty"),
        (r#"{"rules":[],"x":1}"#, "unknown field `x`"),
        (r#"{"rules":[]}"#, "rules: at least one rule"),
        (
            r#"{"rules":[{"name":"a","key":[],"requests":1,"periodSeconds":1}]}"#,
            "rules[0].key",
        ),
        (
            r#"{"rules":[{"name":"a","key":[{"type":"grpcMethod"}],"requests":0,"periodSeconds":1}]}"#,
            "rules[0].requests",
        ),
        (
            r#"{"rules":[{"name":"a","key":[{"type":"grpcMethod"}],"requests":1,"periodSeconds":0}]}"#,
            "rules[0].periodSeconds",
        ),
        (
            r#"{"rules":[{"name":"a","key":[{"type":"header","name":"X-Key"}],"requests":1,"periodSeconds":1}]}"#,
            "lower-case header",
        ),
        (
            r#"{"rules":[{"name":"a","key":[{"type":"field","path":"id"}],"requests":1,"periodSeconds":1}]}"#,
            "needs `methods`",
        ),
        (
            r#"{"rules":[{"name":"a","methods":["user.UserService/GetUser"],"key":[{"type":"field","path":"email"}],"requests":1,"periodSeconds":1}]}"#,
            "no field \"email\"",
        ),
        (
            r#"{"rules":[{"name":"a","methods":["x.Y/Z"],"key":[{"type":"grpcMethod"}],"requests":1,"periodSeconds":1}]}"#,
            "unknown method",
        ),
        (
            r#"{"rules":[{"name":"a","key":[{"type":"ip"}],"requests":1,"periodSeconds":1}]}"#,
            "unknown variant `ip`",
        ),
        (r#"{"mode":"dry","rules":[]}"#, "unknown variant `dry`"),
        (
            r#"{"maxKeys":1,"rules":[{"name":"a","key":[{"type":"grpcMethod"}],"requests":1,"periodSeconds":1}]}"#,
            "maxKeys",
        ),
        (
            r#"{"descriptorSet":"%%%","rules":[{"name":"a","key":[{"type":"grpcMethod"}],"requests":1,"periodSeconds":1}]}"#,
            "descriptorSet",
        ),
        (
            r#"{"rules":[{"name":"a","key":[{"type":"grpcMethod"}],"requests":1,"periodSeconds":1},{"name":"a","key":[{"type":"grpcMethod"}],"requests":1,"periodSeconds":1}]}"#,
            "duplicate rule",
        ),
    ];
    for (json, expected) in cases {
        let error = configure(json)
            .err()
            .unwrap_or_else(|| panic!("accepted {json}"));
        assert!(error.0.contains(expected), "{json}: {error}");
    }
}
