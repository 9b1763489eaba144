//! Small typed failures, rescued in one place ([`GatewayError::rescue`]) into a synthetic
//! response carrying both the HTTP status and the gRPC code, so REST, gRPC-web and gRPC
//! clients each get the error in their own shape.

use bytes::Bytes;
use http::Method;
use meshgate_wire::grpc::FrameError;
use tonic::Code;

use crate::auth::policy::AuthFailure;
use crate::grpc_compression::CompressionError;
use crate::status::{
    VALIDATION_FAILED, bad_request_details, detail_json, grpc_code_for_http, http_status_for,
    status_json, validation_items,
};
use crate::transcode::TranscodeError;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no route for {method} {path}")]
    NotFound { method: Method, path: String },
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed {
        method: Method,
        path: String,
        allow: Vec<Method>,
    },
    #[error("request body exceeds the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("unsupported content type {0:?}: send application/json")]
    UnsupportedMediaType(String),
    #[error(transparent)]
    BadRequest(#[from] TranscodeError),
    #[error("invalid gRPC-web body: {0}")]
    GrpcWebFraming(#[from] FrameError),
    #[error("gRPC-web requests must carry exactly one message, got {0}")]
    GrpcWebMessageCount(usize),
    /// `grpc-encoding` / compressed-flag problems (see [`crate::grpc_compression`]).
    #[error(transparent)]
    GrpcWebCompression(#[from] CompressionError),
    #[error("no healthy upstream")]
    NoHealthyUpstream,
    #[error("upstream unavailable")]
    UpstreamUnavailable,
    #[error("upstream deadline exceeded")]
    UpstreamTimeout,
    /// A status the upstream service answered with; passed through to the client.
    #[error("{}", .0.message())]
    Upstream(tonic::Status),
    /// Refused by a `gateway.auth` rule: 401 / UNAUTHENTICATED, or 403 / PERMISSION_DENIED.
    #[error(transparent)]
    Auth(#[from] AuthFailure),
    /// Rejected by a filter hook (see [`crate::hooks`]).
    #[error("{}", .0.message)]
    Filtered(Box<crate::hooks::LocalReply>),
    /// Details go to the log only; the client sees "internal error".
    #[error("internal error")]
    Internal(String),
}

/// What the client gets for an error.
#[derive(Debug, Clone)]
pub struct SyntheticResponse {
    pub http_status: u16,
    /// The grpc-status as sent: a filter's local reply may carry any number.
    pub grpc_code: i32,
    pub message: String,
    /// An encoded google.rpc.Status (`grpc-status-details-bin`), if the upstream sent one.
    pub details: Option<Bytes>,
    /// `Allow` for 405.
    pub allow: Option<String>,
}

impl GatewayError {
    /// Classifies a failed upstream call: transport failures become gateway errors with a
    /// generic message (no socket errors leak), answers from the service pass through.
    pub fn from_upstream(status: tonic::Status) -> Self {
        use std::error::Error;
        let from_transport = status.source().is_some();
        match status.code() {
            Code::Unavailable if from_transport => Self::UpstreamUnavailable,
            Code::Unknown | Code::Internal if from_transport => Self::UpstreamUnavailable,
            // A connection that broke under a call (hyper: "operation was canceled") is a
            // transport failure: the client never asked to cancel, so never HTTP 499.
            Code::Cancelled if from_transport => Self::UpstreamUnavailable,
            Code::DeadlineExceeded if from_transport => Self::UpstreamTimeout,
            _ => Self::Upstream(status),
        }
    }

    /// True for failures worth retrying on another upstream (idempotent routes only).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::UpstreamUnavailable | Self::NoHealthyUpstream => true,
            Self::Upstream(status) => status.code() == Code::Unavailable,
            _ => false,
        }
    }

    pub fn rescue(&self) -> SyntheticResponse {
        let simple = |http_status: u16| SyntheticResponse {
            http_status,
            grpc_code: grpc_code_for_http(http_status) as i32,
            message: self.to_string(),
            details: None,
            allow: None,
        };
        match self {
            Self::NotFound { .. } => simple(404),
            Self::MethodNotAllowed { allow, .. } => SyntheticResponse {
                allow: Some(
                    allow
                        .iter()
                        .map(Method::as_str)
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
                ..simple(405)
            },
            Self::PayloadTooLarge { .. } => SyntheticResponse {
                grpc_code: Code::ResourceExhausted as i32,
                ..simple(413)
            },
            Self::UnsupportedMediaType(_) => simple(415),
            Self::BadRequest(error) => SyntheticResponse {
                details: bad_request_details(error).map(Bytes::from),
                ..simple(400)
            },
            Self::GrpcWebFraming(_) | Self::GrpcWebMessageCount(_) => simple(400),
            Self::GrpcWebCompression(error) => {
                // The gRPC compression spec's codes; gRPC-web answers them as trailers-only 200.
                let grpc_code = match error {
                    CompressionError::Unsupported(_) => Code::Unimplemented,
                    CompressionError::TooLarge { .. } => Code::ResourceExhausted,
                    CompressionError::FlagWithoutEncoding | CompressionError::Corrupt(_) => {
                        Code::Internal
                    }
                } as i32;
                SyntheticResponse {
                    http_status: http_status_for(grpc_code),
                    grpc_code,
                    ..simple(500)
                }
            }
            Self::NoHealthyUpstream | Self::UpstreamUnavailable => simple(503),
            Self::UpstreamTimeout => simple(504),
            Self::Upstream(status) => {
                let code = status.code() as i32;
                SyntheticResponse {
                    http_status: http_status_for(code),
                    grpc_code: code,
                    message: status.message().to_owned(),
                    details: (!status.details().is_empty())
                        .then(|| Bytes::copy_from_slice(status.details())),
                    allow: None,
                }
            }
            Self::Auth(failure) => simple(failure.http_status()),
            Self::Filtered(reply) => SyntheticResponse {
                grpc_code: reply
                    .grpc_status
                    .unwrap_or_else(|| grpc_code_for_http(reply.http_status) as i32),
                ..simple(reply.http_status)
            },
            Self::Internal(_) => simple(500),
        }
    }
}

/// A REST error's status and body: google.rpc.Status, and with `error_detail` its `detail`
/// (validation failures become 422 with the item list).
pub fn rest_error_body(
    pool: &prost_reflect::DescriptorPool,
    error_detail: bool,
    error: &GatewayError,
    rescued: &SyntheticResponse,
) -> (u16, Vec<u8>) {
    let details = rescued.details.as_deref();
    if !error_detail {
        let body = status_json(pool, rescued.grpc_code, &rescued.message, details);
        return (rescued.http_status, body);
    }
    match error {
        GatewayError::BadRequest(invalid) => (
            VALIDATION_FAILED,
            detail_json(
                pool,
                rescued.grpc_code,
                &rescued.message,
                details,
                Some(validation_items(invalid)),
            ),
        ),
        _ => (
            rescued.http_status,
            detail_json(pool, rescued.grpc_code, &rescued.message, details, None),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_error_has_its_status_pair() {
        let cases: Vec<(GatewayError, u16, i32)> = vec![
            (
                GatewayError::NotFound {
                    method: Method::GET,
                    path: "/x".into(),
                },
                404,
                5,
            ),
            (GatewayError::PayloadTooLarge { limit: 1 }, 413, 8),
            (
                GatewayError::UnsupportedMediaType("text/plain".into()),
                415,
                3,
            ),
            (
                GatewayError::BadRequest(TranscodeError::NotAnObject),
                400,
                3,
            ),
            (GatewayError::UpstreamUnavailable, 503, 14),
            (GatewayError::UpstreamTimeout, 504, 4),
            (
                GatewayError::Upstream(tonic::Status::already_exists("dup")),
                409,
                6,
            ),
            (
                GatewayError::Internal("secret socket detail".into()),
                500,
                13,
            ),
            (CompressionError::Unsupported("br".into()).into(), 501, 12),
            (CompressionError::TooLarge { limit: 10 }.into(), 429, 8),
            (CompressionError::FlagWithoutEncoding.into(), 500, 13),
            (AuthFailure::Expired.into(), 401, 16),
            (AuthFailure::MissingToken.into(), 401, 16),
            (AuthFailure::Forbidden("claim".into()).into(), 403, 7),
        ];
        for (error, http, grpc) in cases {
            let rescued = error.rescue();
            assert_eq!(
                (rescued.http_status, rescued.grpc_code),
                (http, grpc),
                "{error:?}"
            );
            assert!(!rescued.message.contains("secret"));
        }
    }

    #[test]
    fn method_not_allowed_lists_allow() {
        let error = GatewayError::MethodNotAllowed {
            method: Method::PATCH,
            path: "/v1/users/1".into(),
            allow: vec![Method::DELETE, Method::GET],
        };
        assert_eq!(error.rescue().allow.as_deref(), Some("DELETE, GET"));
    }

    #[test]
    fn service_statuses_pass_through_transport_failures_do_not() {
        let service = GatewayError::from_upstream(tonic::Status::unavailable("draining"));
        assert!(matches!(service, GatewayError::Upstream(_)));
        assert!(service.is_unavailable());
        let transport =
            tonic::Status::from_error(Box::new(std::io::Error::other("connect refused 10.0.0.1")));
        let transport = GatewayError::from_upstream(transport);
        assert!(transport.is_unavailable(), "{transport:?}");
        assert!(!transport.rescue().message.contains("10.0.0.1"));
    }

    #[test]
    fn a_cancelled_transport_is_unavailable_not_499() {
        let mut broken = tonic::Status::cancelled("operation was canceled");
        broken.set_source(std::sync::Arc::new(std::io::Error::other(
            "connection closed",
        )));
        let error = GatewayError::from_upstream(broken);
        assert!(error.is_unavailable(), "{error:?}");
        let rescued = error.rescue();
        assert_eq!((rescued.http_status, rescued.grpc_code), (503, 14));
        // A CANCELLED the service itself answered passes through as before.
        let answered = GatewayError::from_upstream(tonic::Status::cancelled("caller went away"));
        assert!(matches!(answered, GatewayError::Upstream(_)));
    }
}
