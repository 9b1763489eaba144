use prost::Message as _;
use sha2::{Digest, Sha256};

use super::*;
use crate::filter::Stream;
use crate::host::Action;
use crate::test_host::TestHost;
use meshgate_wire::grpc::message_frame as encode_frame;

const CONFIG: &str = r#"{"fields":[
    {"path":"id"},
    {"path":"email","methods":["user.UserService/CreateUser"],"redact":"sha256"},
    {"path":"name","methods":["user.UserService/CreateUser"],"redact":"drop"},
    {"path":"user.email","from":"response","redact":"sha256"}
]}"#;

fn run(request: &[(&str, &str)], body: &[u8]) -> TestHost {
    let mut host = TestHost::with_request(request);
    let root = Arc::new(SpanEnrichment::configure(CONFIG.as_bytes(), &mut host).unwrap());
    let mut stream = root.new_stream();
    host.request_body = body.to_vec();
    let action = stream.on_request_headers(&mut host, body.is_empty());
    if action == Action::Pause {
        assert_eq!(
            stream.on_request_body(&mut host, body.len(), true),
            Action::Continue
        );
    }
    host
}

fn sha(value: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(value.as_bytes())))
}

#[test]
fn grpc_method_and_fields_become_headers_and_state() {
    let body =
        encode_frame(&meshgate_proto::user::GetUserRequest { id: "u1".into() }.encode_to_vec());
    let host = run(
        &[
            (":method", "POST"),
            (":path", "/user.UserService/GetUser"),
            ("content-type", "application/grpc"),
            ("x-meshgate-field-id", "forged"),
        ],
        &body,
    );
    assert_eq!(
        host.request_header("x-meshgate-grpc-service").as_deref(),
        Some("user.UserService")
    );
    assert_eq!(
        host.request_header("x-meshgate-grpc-method").as_deref(),
        Some("GetUser")
    );
    assert_eq!(
        host.request_header("x-meshgate-field-id").as_deref(),
        Some("u1")
    );
    assert_eq!(
        host.filter_state
            .get("meshgate.request.id")
            .map(Vec::as_slice),
        Some(&b"u1"[..])
    );
}

#[test]
fn rest_json_fields_are_redacted() {
    let host = run(
        &[
            (":method", "POST"),
            (":path", "/v1/users"),
            ("content-type", "application/json"),
        ],
        br#"{"name":"Ada","email":"ada@example.com"}"#,
    );
    assert_eq!(
        host.request_header("x-meshgate-grpc-method").as_deref(),
        Some("CreateUser")
    );
    assert_eq!(
        host.request_header("x-meshgate-field-email"),
        Some(sha("ada@example.com"))
    );
    assert_eq!(
        host.request_header("x-meshgate-field-name"),
        None,
        "dropped"
    );
}

#[test]
fn forged_headers_are_removed_even_without_a_method() {
    let host = run(
        &[
            (":method", "GET"),
            (":path", "/healthz"),
            ("X-Meshgate-Grpc-Method", "Evil"),
        ],
        b"",
    );
    assert_eq!(host.request_header("x-meshgate-grpc-method"), None);
}

#[test]
fn trace_headers_are_read_not_written() {
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let host = run(
        &[
            (":method", "GET"),
            (":path", "/v1/users/1"),
            ("traceparent", traceparent),
        ],
        b"",
    );
    assert_eq!(
        host.request_header("traceparent").as_deref(),
        Some(traceparent)
    );
    assert_eq!(
        host.filter_state
            .get("meshgate.trace_id")
            .map(Vec::as_slice),
        Some(&b"4bf92f3577b34da6a3ce929d0e0e4736"[..])
    );
}

#[test]
fn response_fields_and_status_go_to_filter_state() {
    let mut host = TestHost::with_request(&[
        (":method", "POST"),
        (":path", "/user.UserService/GetUser"),
        ("content-type", "application/grpc"),
    ]);
    let root = Arc::new(SpanEnrichment::configure(CONFIG.as_bytes(), &mut host).unwrap());
    let mut stream = root.new_stream();
    stream.on_request_headers(&mut host, true);
    let response = meshgate_proto::user::GetUserResponse {
        user: Some(meshgate_proto::user::User {
            email: "a@b.c".into(),
            ..Default::default()
        }),
        message: String::new(),
    };
    host.response_body = encode_frame(&response.encode_to_vec());
    stream.on_response_headers(&mut host, false);
    let size = host.response_body.len();
    stream.on_response_body(&mut host, size, false);
    host.response_trailers = vec![("grpc-status".into(), "5".into())];
    stream.on_response_trailers(&mut host);
    assert_eq!(
        host.filter_state.get("meshgate.response.user.email"),
        Some(&sha("a@b.c").into_bytes())
    );
    assert_eq!(
        host.filter_state
            .get("meshgate.grpc_status")
            .map(Vec::as_slice),
        Some(&b"NOT_FOUND"[..])
    );
}

#[test]
fn grpc_web_status_comes_from_the_trailer_frame() {
    let mut host = TestHost::with_request(&[
        (":method", "POST"),
        (":path", "/user.UserService/DeleteUser"),
        ("content-type", "application/grpc-web+proto"),
    ]);
    let root = Arc::new(SpanEnrichment::configure(CONFIG.as_bytes(), &mut host).unwrap());
    let mut stream = root.new_stream();
    stream.on_request_headers(&mut host, true);
    let trailer = b"grpc-status: 7\r\n";
    let mut body = vec![0x80];
    body.extend_from_slice(&(trailer.len() as u32).to_be_bytes());
    body.extend_from_slice(trailer);
    host.response_body = body;
    stream.on_response_headers(&mut host, false);
    let size = host.response_body.len();
    stream.on_response_body(&mut host, size, true);
    assert_eq!(
        host.filter_state
            .get("meshgate.grpc_status")
            .map(Vec::as_slice),
        Some(&b"PERMISSION_DENIED"[..])
    );
}

#[test]
fn malformed_protobuf_passes_through() {
    let host = run(
        &[
            (":method", "POST"),
            (":path", "/user.UserService/GetUser"),
            ("content-type", "application/grpc"),
        ],
        &[0, 0, 0, 0, 2, 0x0a, 0x09],
    );
    assert_eq!(
        host.request_header("x-meshgate-grpc-method").as_deref(),
        Some("GetUser")
    );
    assert_eq!(host.request_header("x-meshgate-field-id"), None);
    assert_eq!(host.counter("meshgate_span_enrichment_body_skipped"), 1);
}

#[test]
fn rejects_bad_configs() {
    let cases = [
        (r#"{"fields":[{"path":"nope"}]}"#, "no method's"),
        (
            r#"{"fields":[{"path":"id","redact":"mask"}]}"#,
            "unknown variant `mask`",
        ),
        (
            r#"{"fields":[{"path":"id"},{"path":"id"}]}"#,
            "listed twice",
        ),
        (
            r#"{"fields":[{"path":"user","from":"response","methods":["user.UserService/GetUser"]}]}"#,
            "singular scalar",
        ),
        (r#"{"fields":[{"path":"a..b"}]}"#, "empty segment"),
        (r#"{"maxBodyBytes":0}"#, "maxBodyBytes"),
        (r#"{"extra":true}"#, "unknown field `extra`"),
        ("[1]", "pluginConfig"),
    ];
    for (json, expected) in cases {
        let error = SpanEnrichment::configure(json.as_bytes(), &mut TestHost::default())
            .err()
            .unwrap_or_else(|| panic!("accepted {json}"));
        assert!(error.0.contains(expected), "{json}: {error}");
    }
}
