//! span-enrichment in the real module: headers and filter state from gRPC, gRPC-web and REST
//! requests, response fields and status, redaction, trace context preserved.

use meshgate_filter_host::{Chain, Request, Response};
use meshgate_proto::user;
use sha2::{Digest, Sha256};

use crate::common::*;

const CONFIG: &str = r#"{"fields":[
  {"path":"id"},
  {"path":"email","methods":["user.UserService/CreateUser"],"redact":"sha256"},
  {"path":"name","methods":["user.UserService/CreateUser"],"redact":"drop"},
  {"path":"user.email","from":"response","methods":["user.UserService/GetUser"],"redact":"sha256"},
  {"path":"user.id","from":"response","methods":["user.UserService/GetUser"]}
]}"#;

fn sha256(value: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(value.as_bytes())))
}

fn forwarded(chain: &Chain, request: Request) -> Request {
    chain.on_request(request).request().clone()
}

#[test]
fn service_method_and_fields_from_grpc_grpc_web_and_rest() {
    let (chain, plugin, _) = chain(SPAN_ENRICHMENT, CONFIG, 2);
    for request in [
        grpc("GetUser", frame(&get_user("u-42"))),
        grpc_web("GetUser", frame(&get_user("u-42"))),
        grpc_web_text("GetUser", &frame(&get_user("u-42"))),
        Request::new("GET", "/v1/users/u-42"),
    ] {
        let out = forwarded(&chain, request);
        assert_eq!(
            out.header_value("x-meshgate-grpc-service"),
            Some("user.UserService")
        );
        assert_eq!(out.header_value("x-meshgate-grpc-method"), Some("GetUser"));
        assert_eq!(out.header_value("x-meshgate-field-id"), Some("u-42"));
    }
    assert_eq!(plugin.counter("meshgate_span_enrichment_enriched"), 4);
    assert_eq!(plugin.counter("meshgate_span_enrichment_fields"), 4);
}

#[test]
fn pii_is_hashed_or_dropped_in_grpc_and_rest() {
    let (chain, _, _) = chain(SPAN_ENRICHMENT, CONFIG, 1);
    let create = user::CreateUserRequest {
        name: "Ada".into(),
        email: "ada@example.com".into(),
        age: 36,
    };
    let over_grpc = forwarded(&chain, grpc("CreateUser", frame(&create)));
    let over_rest = forwarded(
        &chain,
        Request::new("POST", "/v1/users")
            .header("content-type", "application/json")
            .body(r#"{"name":"Ada","email":"ada@example.com","age":36}"#),
    );
    for out in [over_grpc, over_rest] {
        assert_eq!(
            out.header_value("x-meshgate-grpc-method"),
            Some("CreateUser")
        );
        assert_eq!(
            out.header_value("x-meshgate-field-email"),
            Some(sha256("ada@example.com").as_str())
        );
        assert_eq!(out.header_value("x-meshgate-field-name"), None, "dropped");
        let all: String = out
            .headers
            .iter()
            .map(|(k, v)| format!("{k}={v};"))
            .collect();
        assert!(
            !all.contains("ada@example.com") && !all.contains("Ada;"),
            "{all}"
        );
    }
}

#[test]
fn response_fields_and_grpc_status_become_filter_state() {
    let (chain, _, _) = chain(SPAN_ENRICHMENT, CONFIG, 1);
    let exchange = chain.on_request(grpc("GetUser", frame(&get_user("u-1"))));
    let reply = user::GetUserResponse {
        user: Some(user::User {
            id: "u-1".into(),
            email: "ada@example.com".into(),
            ..Default::default()
        }),
        message: String::new(),
    };
    let done = exchange.on_response(
        Response::new(200)
            .header("content-type", "application/grpc")
            .body(frame(&reply))
            .trailer("grpc-status", "0"),
    );
    assert_eq!(
        attribute(&done, "meshgate.grpc_service"),
        Some("user.UserService")
    );
    assert_eq!(attribute(&done, "meshgate.grpc_method"), Some("GetUser"));
    assert_eq!(attribute(&done, "meshgate.request.id"), Some("u-1"));
    assert_eq!(attribute(&done, "meshgate.response.user.id"), Some("u-1"));
    let hashed = sha256("ada@example.com");
    assert_eq!(
        attribute(&done, "meshgate.response.user.email"),
        Some(hashed.as_str())
    );
    assert_eq!(attribute(&done, "meshgate.grpc_status"), Some("OK"));
    assert_eq!(
        done.response.body,
        frame(&reply),
        "the response itself is untouched"
    );

    // Trailers-only error: the status is in the headers.
    let exchange = chain.on_request(grpc("GetUser", frame(&get_user("nope"))));
    let done = exchange.on_response(
        Response::new(200)
            .header("content-type", "application/grpc")
            .header("grpc-status", "5"),
    );
    assert_eq!(attribute(&done, "meshgate.grpc_status"), Some("NOT_FOUND"));
    assert_eq!(attribute(&done, "meshgate.grpc_status_code"), Some("5"));

    // REST JSON responses are read too.
    let exchange = chain.on_request(Request::new("GET", "/v1/users/u-9"));
    let done =
        exchange.on_response(Response::new(200).body(r#"{"id":"u-9","email":"ada@example.com"}"#));
    assert_eq!(attribute(&done, "meshgate.response.user.id"), Some("u-9"));
}

#[test]
fn w3c_and_b3_contexts_pass_unchanged_and_are_recorded() {
    let (chain, _, _) = chain(SPAN_ENRICHMENT, CONFIG, 1);
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let exchange = chain.on_request(
        Request::new("GET", "/v1/users/1")
            .header("traceparent", traceparent)
            .header("tracestate", "a=b"),
    );
    assert_eq!(
        exchange.request().header_value("traceparent"),
        Some(traceparent)
    );
    assert_eq!(exchange.request().header_value("tracestate"), Some("a=b"));
    let done = exchange.on_response(Response::new(200));
    assert_eq!(
        attribute(&done, "meshgate.trace_id"),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(attribute(&done, "meshgate.trace_format"), Some("w3c"));

    let b3 = [
        ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
        ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ("x-b3-sampled", "1"),
    ];
    let mut request = Request::new("GET", "/v1/users/1");
    for (k, v) in b3 {
        request = request.header(k, v);
    }
    let exchange = chain.on_request(request);
    for (k, v) in b3 {
        assert_eq!(exchange.request().header_value(k), Some(v));
    }
    assert_eq!(
        exchange
            .attributes()
            .iter()
            .find(|(k, _)| k == "meshgate.trace_format")
            .map(|(_, v)| v.as_str()),
        Some("b3")
    );
    // A broken context is neither "fixed" nor dropped.
    let exchange =
        chain.on_request(Request::new("GET", "/v1/users/1").header("traceparent", "garbage"));
    assert_eq!(
        exchange.request().header_value("traceparent"),
        Some("garbage")
    );
}

#[test]
fn forged_enrichment_headers_are_removed() {
    let (chain, _, _) = chain(SPAN_ENRICHMENT, CONFIG, 1);
    let out = forwarded(
        &chain,
        Request::new("GET", "/healthz")
            .header("x-meshgate-grpc-method", "Forged")
            .header("x-meshgate-field-user-email", "x"),
    );
    assert_eq!(out.header_value("x-meshgate-grpc-method"), None);
    assert_eq!(out.header_value("x-meshgate-field-user-email"), None);
}

#[test]
fn malformed_protobuf_passes_through_and_is_counted() {
    let (chain, plugin, _) = chain(SPAN_ENRICHMENT, CONFIG, 1);
    let body = vec![0, 0, 0, 0, 4, 0x0a, 0x10, 0x41, 0x41];
    let out = forwarded(&chain, grpc("GetUser", body.clone()));
    assert_eq!(out.header_value("x-meshgate-grpc-method"), Some("GetUser"));
    assert_eq!(out.header_value("x-meshgate-field-id"), None);
    assert_eq!(out.body, body, "the body is forwarded as it came");
    let out = forwarded(
        &chain,
        Request::new("POST", "/v1/users").body("{\"email\":"),
    );
    assert_eq!(out.header_value("x-meshgate-field-email"), None);
    assert_eq!(plugin.counter("meshgate_span_enrichment_body_skipped"), 2);
}

#[test]
fn grpc_web_status_is_read_from_the_trailer_frame_in_the_body() {
    let (chain, _, _) = chain(SPAN_ENRICHMENT, CONFIG, 1);
    let trailer = b"grpc-status: 16\r\ngrpc-message: who are you\r\n";
    let mut body = vec![0x80];
    body.extend_from_slice(&(trailer.len() as u32).to_be_bytes());
    body.extend_from_slice(trailer);
    for request in [
        grpc_web("GetUser", frame(&get_user("u-1"))),
        grpc_web_text("GetUser", &frame(&get_user("u-1"))),
    ] {
        let text = request.header_value("content-type") == Some("application/grpc-web-text");
        let response_body = if text {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD
                .encode(&body)
                .into_bytes()
        } else {
            body.clone()
        };
        let done = chain
            .on_request(request)
            .on_response(Response::new(200).body(response_body.clone()));
        assert_eq!(
            attribute(&done, "meshgate.grpc_status"),
            Some("UNAUTHENTICATED")
        );
        assert_eq!(done.response.body, response_body);
    }
}
