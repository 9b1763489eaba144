//! Native gRPC: admitted through the filters' request phase in `request_filter`, then proxied by
//! pingora (h2c to an upstream, streams, trailers and flow control untouched). These are the
//! pieces of pingora's later phases that are about gRPC.

use http::HeaderMap;
use meshgate_wire::grpc::MessageSizeGuard;
use meshgate_wire::grpc_headers;
use meshgate_wire::routes::grpc_route_label;
use meshgate_wire::trace::TraceContext;
use pingora::{Error, ErrorType, proxy::Session, upstreams::peer::HttpPeer};

use super::{GatewayProxy, RequestCtx, client_addr, metadata::replace_request_headers};

use crate::{
    error::GatewayError,
    hooks::{Decision, FilterRequest, FilterResponse},
    protocol::Protocol,
    upstream::Outcome,
};

impl GatewayProxy {
    /// Runs the filters' request phase on the headers of a native gRPC call. `Ok(Ok(()))`:
    /// proxy it (with the headers the filters left); `Ok(Err(_))`: a filter answered.
    pub(super) fn admit_grpc(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Result<(), GatewayError>> {
        let path = session.req_header().uri.path().to_owned();
        ctx.route = grpc_route_label(&self.state.pool, &path);
        ctx.grpc_method = path;
        if self.state.filters.is_empty() {
            // Nothing can read or change the headers: no copy of them per call.
            return Ok(Ok(()));
        }
        let mut headers = session.req_header().headers.clone();
        let client = client_addr(session);
        let decision = self.state.filters.on_request(
            &mut FilterRequest {
                protocol: Protocol::Grpc,
                grpc_method: &ctx.grpc_method,
                route: None,
                http_method: session.req_header().method.as_str(),
                uri: &ctx.grpc_method,
                client_addr: client.as_deref(),
                headers: &mut headers,
                message: None,
                body: None,
            },
            &mut ctx.filters,
        );
        if let Decision::Respond(reply) = decision {
            return Ok(Err(ctx.filtered(reply)));
        }
        // Header changes (x-meshgate-* enrichment) go upstream with the request.
        if headers != session.req_header().headers {
            replace_request_headers(session.req_header_mut(), &headers)?;
        }
        ctx.grpc_filters_pending = true;
        Ok(Ok(()))
    }

    /// The next upstream to try: h2c with prior knowledge, many streams per connection.
    pub(super) fn grpc_peer(&self, ctx: &mut RequestCtx) -> pingora::Result<Box<HttpPeer>> {
        let addr = self
            .state
            .upstreams
            .pool()
            .pick(&ctx.tried)
            .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "no healthy upstream"))?
            .addr;
        ctx.tried.push(addr);
        ctx.upstream = Some(addr);
        let mut peer = HttpPeer::new(addr, false, String::new());
        // pingora's default is 1 stream per connection.
        peer.options.set_http_version(2, 2);
        peer.options.max_h2_streams = self.state.config.h2_streams_per_connection;
        peer.options.connection_timeout = Some(self.state.config.upstream.connect_timeout);
        Ok(Box::new(peer))
    }

    /// Refuses a request message over `max_body_bytes` (RESOURCE_EXHAUSTED) before the
    /// service sees it.
    pub(super) fn limit_grpc_messages(
        &self,
        chunk: Option<&[u8]>,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let Some(chunk) = chunk else {
            return Ok(());
        };
        let limit = self.state.config.max_body_bytes;
        let guard = ctx
            .grpc_messages
            .get_or_insert_with(|| MessageSizeGuard::new(limit));
        if let Err(too_large) = guard.push(chunk) {
            tracing::debug!(%too_large, "native gRPC request refused");
            ctx.refused = Some(GatewayError::PayloadTooLarge { limit });
            // Marked as the client's fault, so pingora stops the call at once (rather than
            // awaiting the upstream's answer); fail_to_proxy answers with `ctx.refused`.
            return Err(Error::create(
                ErrorType::Custom("message too large"),
                pingora::ErrorSource::Downstream,
                Some(too_large.to_string().into()),
                None,
            ));
        }
        Ok(())
    }

    /// Passive health of the endpoint this call went to (outlier detection).
    pub(super) fn report_grpc_upstream(&self, ctx: &RequestCtx, outcome: Outcome) {
        let pool = self.state.upstreams.pool();
        if let Some(endpoint) = ctx.upstream.and_then(|addr| pool.endpoint(addr)) {
            pool.report(&endpoint, outcome);
        }
    }

    /// The verified claims (client copies dropped), the gateway's trace context,
    /// `te: trailers` and a deadline on the proxied request.
    pub(super) fn prepare_grpc_request(
        &self,
        session: &Session,
        upstream_request: &mut pingora::http::RequestHeader,
        ctx: &RequestCtx,
    ) -> pingora::Result<()> {
        super::auth::strip_client_claims(upstream_request, ctx)?;
        if let Some(trace) = &ctx.trace {
            for (name, value) in trace.upstream_headers() {
                if let Some(value) = TraceContext::unindexed(&value) {
                    upstream_request.insert_header(name, value)?;
                }
            }
            // The caller's single-header B3 names the caller's span as the parent, and services
            // prefer it to `x-b3-*` / `traceparent`: only the gateway's context goes upstream.
            upstream_request.remove_header("b3");
            upstream_request.remove_header("x-b3-parentspanid");
        }
        // gRPC requires it and pingora's request policy may drop it on the way.
        // A static value: no parse and copy of "trailers" per call.
        upstream_request.insert_header("te", http::HeaderValue::from_static("trailers"))?;
        if super::header_str(session, "grpc-timeout").is_none() {
            let timeout = self.state.config.timeout_for(None, &ctx.grpc_method);
            upstream_request
                .insert_header("grpc-timeout", grpc_headers::format_timeout(timeout))?;
        }
        Ok(())
    }

    /// Native gRPC streamed through: the filters' response phase sees the final status (for
    /// attributes) once the stream has ended.
    pub(super) fn finish_grpc_filters(&self, ctx: &mut RequestCtx) {
        if !std::mem::take(&mut ctx.grpc_filters_pending) {
            return;
        }
        let mut http_status = ctx.status;
        let mut headers = HeaderMap::new();
        self.state.filters.on_response(
            &mut ctx.filters,
            &mut FilterResponse {
                protocol: Protocol::Grpc,
                grpc_method: &ctx.grpc_method,
                // UNKNOWN when the stream ended without a status (broken connection).
                grpc_status: ctx.grpc_status.unwrap_or(tonic::Code::Unknown as i32),
                http_status: &mut http_status,
                headers: &mut headers,
                message: None,
                body: None,
                attributes: &mut ctx.filter_attributes,
            },
        );
    }
}

/// Records the upstream's grpc-status (response headers or trailers) for the log and span.
pub(super) fn record_status(ctx: &mut RequestCtx, headers: &HeaderMap) {
    if let Some(code) = grpc_headers::status_of(headers) {
        ctx.grpc_status = Some(code);
    }
}

/// A failure of pingora's proxy path as the gateway's error.
pub(super) fn proxy_error(e: &Error) -> GatewayError {
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            GatewayError::UpstreamTimeout
        }
        ErrorType::ConnectNoRoute => GatewayError::NoHealthyUpstream,
        _ => GatewayError::UpstreamUnavailable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_failures_become_timeouts_or_unavailable() {
        let error = |etype| proxy_error(&Error::new(etype));
        for etype in [
            ErrorType::ConnectTimedout,
            ErrorType::ReadTimedout,
            ErrorType::WriteTimedout,
        ] {
            assert!(matches!(error(etype), GatewayError::UpstreamTimeout));
        }
        assert!(matches!(
            error(ErrorType::ConnectNoRoute),
            GatewayError::NoHealthyUpstream
        ));
        assert!(matches!(
            error(ErrorType::ConnectRefused),
            GatewayError::UpstreamUnavailable
        ));
    }
}
