//! Writing responses: the headers every answer carries (CORS, `traceparent`), simple bodies,
//! CORS preflight answers, and the single place errors become responses, shaped for the
//! client's protocol (JSON `google.rpc.Status`, or gRPC trailers-only).

use bytes::Bytes;
use meshgate_wire::grpc_headers;
use meshgate_wire::grpc_web::Mode;
use meshgate_wire::trace::TraceContext;
use pingora::{http::ResponseHeader, proxy::Session};

use super::{GatewayProxy, RequestCtx, header_str};

use crate::{
    error::{GatewayError, SyntheticResponse, rest_error_body},
    grpc_compression::{self, CompressionError},
    protocol::Protocol,
};

/// `grpc-status`, `grpc-message` and (when there are details) `grpc-status-details-bin` for
/// an error, as gRPC trailers (or headers of a trailers-only response) carry them.
pub(super) fn grpc_status_fields(rescued: &SyntheticResponse) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("grpc-status", rescued.grpc_code.to_string()),
        (
            "grpc-message",
            grpc_headers::encode_message(&rescued.message),
        ),
    ];
    if let Some(details) = &rescued.details {
        fields.push((
            "grpc-status-details-bin",
            grpc_headers::encode_details(details),
        ));
    }
    fields
}

impl GatewayProxy {
    pub(super) fn cors_headers(&self, ctx: &RequestCtx, response: &mut ResponseHeader) {
        for (name, value) in self.state.cors.response_headers(ctx.origin.as_deref()) {
            let _ = response.insert_header(name, value);
        }
    }

    /// The gateway's span as `traceparent`, so clients can find the trace of their call.
    pub(super) fn trace_header(&self, ctx: &RequestCtx, response: &mut ResponseHeader) {
        if let Some(trace) = &ctx.trace
            && let Some(value) = TraceContext::unindexed(&trace.traceparent())
        {
            let _ = response.insert_header("traceparent", value);
        }
    }

    pub(super) async fn write_simple(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        status: u16,
        content_type: &str,
        body: Bytes,
        extra: &[(&str, String)],
    ) -> pingora::Result<()> {
        // No header-name case map: the names are lower-case literals, as both HTTP versions send them.
        let mut response = ResponseHeader::build_no_case(status, Some(6))?;
        response.insert_header("content-type", content_type)?;
        // A 304 has no body; its headers describe the representation the client already has.
        if status != 304 {
            response.insert_header("content-length", body.len().to_string())?;
        }
        for (name, value) in extra {
            response.insert_header(name.to_string(), value.as_str())?;
        }
        self.cors_headers(ctx, &mut response);
        self.trace_header(ctx, &mut response);
        ctx.status = status;
        session
            .write_response_header(Box::new(response), body.is_empty())
            .await?;
        session.write_response_body(Some(body), true).await
    }

    /// 204 with the CORS policy's headers.
    pub(super) async fn preflight_allowed(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        headers: Vec<(&'static str, String)>,
    ) -> pingora::Result<()> {
        let mut response = ResponseHeader::build(204, Some(headers.len()))?;
        for (name, value) in headers {
            response.insert_header(name, value)?;
        }
        ctx.status = 204;
        session
            .write_response_header(Box::new(response), true)
            .await
    }

    /// 403 without CORS headers: the browser blocks the call.
    pub(super) async fn preflight_rejected(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        ctx.origin = None;
        self.write_simple(
            session,
            ctx,
            403,
            "text/plain",
            Bytes::from_static(b"origin not allowed\n"),
            &[],
        )
        .await
    }

    /// The single place errors become responses, shaped for the client's protocol.
    pub(super) async fn respond_error(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        error: &GatewayError,
    ) -> pingora::Result<()> {
        let rescued = error.rescue();
        if let GatewayError::Internal(detail) = error {
            tracing::error!(detail, "internal gateway error");
        }
        ctx.grpc_status = Some(rescued.grpc_code);
        if ctx.protocol.is_grpc() {
            self.respond_grpc_error(session, ctx, error, &rescued).await
        } else {
            self.respond_json_error(session, ctx, error, rescued).await
        }
    }

    /// Trailers-only: the status travels in the headers of an otherwise empty response.
    async fn respond_grpc_error(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        error: &GatewayError,
        rescued: &SyntheticResponse,
    ) -> pingora::Result<()> {
        let mode = Mode::from_content_type(header_str(session, "content-type").unwrap_or(""));
        let content_type = mode.map_or("application/grpc", Mode::content_type);
        let mut response = ResponseHeader::build(200, Some(6))?;
        response.insert_header("content-type", content_type)?;
        for (name, value) in grpc_status_fields(rescued) {
            response.insert_header(name, value)?;
        }
        if ctx.protocol == Protocol::GrpcWeb {
            response.insert_header("content-length", "0")?;
        }
        if let GatewayError::GrpcWebCompression(CompressionError::Unsupported(_)) = error {
            response.insert_header("grpc-accept-encoding", grpc_compression::ACCEPT_ENCODING)?;
        }
        if let GatewayError::Filtered(reply) = error {
            for (name, value) in &reply.headers {
                response.append_header(name.clone(), value.clone())?;
            }
        }
        self.cors_headers(ctx, &mut response);
        self.trace_header(ctx, &mut response);
        ctx.status = 200;
        session
            .write_response_header(Box::new(response), true)
            .await?;
        session.write_response_body(None, true).await
    }

    /// A `google.rpc.Status` as JSON with the HTTP status of the code (with `detail` and 422
    /// for validation failures under `gateway.json.error_detail`).
    async fn respond_json_error(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        error: &GatewayError,
        rescued: SyntheticResponse,
    ) -> pingora::Result<()> {
        let (http_status, body) = rest_error_body(
            &self.state.pool,
            self.state.json.error_detail,
            error,
            &rescued,
        );
        let mut extra = Vec::new();
        if let Some(allow) = rescued.allow {
            extra.push(("allow", allow));
        }
        if let GatewayError::Auth(failure) = error {
            extra.push(("www-authenticate", failure.challenge()));
        }
        if let GatewayError::Filtered(reply) = error {
            for (name, value) in &reply.headers {
                if let Ok(value) = value.to_str() {
                    extra.push((name.as_str(), value.to_owned()));
                }
            }
        }
        self.write_simple(
            session,
            ctx,
            http_status,
            "application/json",
            body.into(),
            &extra,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields_carry_code_encoded_message_and_details() {
        let mut rescued = GatewayError::Upstream(tonic::Status::not_found("no user 7 ✓")).rescue();
        assert_eq!(
            grpc_status_fields(&rescued),
            [
                ("grpc-status", "5".to_owned()),
                ("grpc-message", "no user 7 %E2%9C%93".to_owned()),
            ]
        );
        rescued.details = Some(Bytes::from_static(b"\x08\x05"));
        assert_eq!(
            grpc_status_fields(&rescued)[2],
            ("grpc-status-details-bin", "CAU".to_owned())
        );
    }
}
