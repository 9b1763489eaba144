//! The answer to a limited request: 429 with `RateLimit` headers over HTTP,
//! RESOURCE_EXHAUSTED for gRPC (trailers-only) and gRPC-web (status in the headers).

use meshgate_wire::content_type::Protocol;
use meshgate_wire::grpc::status;
use meshgate_wire::grpc_headers;

use super::Rule;
use crate::host::LocalReply;
use crate::inspect::RequestTarget;
use crate::token_bucket::Verdict;

/// 429 with RateLimit headers over HTTP; RESOURCE_EXHAUSTED (trailers-only) for gRPC family.
pub(super) fn limited_reply(rule: &Rule, verdict: &Verdict, target: &RequestTarget) -> LocalReply {
    let retry_after = verdict.retry_after_secs.max(1);
    let message = format!(
        "rate limit exceeded (rule {}); retry after {retry_after}s",
        rule.name
    );
    match target.protocol {
        Protocol::Http => LocalReply {
            status: 429,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("retry-after".into(), retry_after.to_string()),
                (
                    "ratelimit-policy".into(),
                    format!(
                        "\"{}\";q={};w={}",
                        rule.name,
                        rule.spec.burst,
                        rule.window_secs()
                    ),
                ),
                (
                    "ratelimit".into(),
                    format!(
                        "\"{}\";r={};t={}",
                        rule.name, verdict.remaining, verdict.reset_secs
                    ),
                ),
            ],
            body: serde_json::json!({"error": "RESOURCE_EXHAUSTED", "message": message})
                .to_string()
                .into_bytes(),
            grpc_status: None,
        },
        // Envoy turns a local reply with a gRPC status into a trailers-only response with
        // `grpc-status` and the body as `grpc-message`.
        Protocol::Grpc => LocalReply {
            status: 200,
            headers: vec![("retry-after".into(), retry_after.to_string())],
            body: message.into_bytes(),
            grpc_status: Some(status::RESOURCE_EXHAUSTED),
        },
        // gRPC-web: the trailers-only form is a header-only 200 with the status in headers
        // (Envoy's gRPC local-reply path does not recognise grpc-web content types).
        Protocol::GrpcWeb | Protocol::GrpcWebText => LocalReply {
            status: 200,
            headers: vec![
                (
                    "content-type".into(),
                    target
                        .header("content-type")
                        .unwrap_or("application/grpc-web+proto")
                        .to_owned(),
                ),
                ("grpc-status".into(), status::RESOURCE_EXHAUSTED.to_string()),
                (
                    "grpc-message".into(),
                    grpc_headers::encode_message(&message),
                ),
                ("retry-after".into(), retry_after.to_string()),
            ],
            body: Vec::new(),
            grpc_status: None,
        },
    }
}
