//! The one `ProxyHttp` impl, kept thin: `request_filter` classifies each request once
//! ([`classify`]) and dispatches on its kind:
//! 1. CORS preflight, answered here before anything else can fail (`respond`);
//! 2. the gateway's own endpoints `/livez`, `/healthz`, `/readyz`, `/openapi.json` (`admin`);
//! 3. native gRPC (`application/grpc`) falls through to pingora's proxy: h2c to an upstream,
//!    trailers and streaming preserved (`grpc` holds those phases);
//! 4. gRPC-web (`grpc_web`) and REST (`rest`) are terminated here with the gRPC client of
//!    [`crate::upstream`], so the HTTP answer is decided once grpc-status is known; a GET/HEAD
//!    that no API route claims is answered from `static_dir` when a file matches (`admin`).
//!
//! Every failure is a [`GatewayError`] rescued by `respond_error` (`respond`) in the client's
//! protocol; `access_log` records every request (metrics, log line, OTLP span).

mod access_log;
mod admin;
mod auth;
pub mod classify;
mod grpc;
mod grpc_web;
mod metadata;
mod respond;
mod rest;
mod streaming;

use std::{net::SocketAddr, sync::Arc, time::Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use meshgate_wire::grpc::MessageSizeGuard;
use meshgate_wire::trace::TraceContext;
use pingora::{
    Error, ErrorType,
    http::ResponseHeader,
    proxy::{FailToProxy, ProxyHttp, Session},
    upstreams::peer::HttpPeer,
};
use tracing::Instrument;

use crate::{
    auth::ForwardedClaims,
    error::GatewayError,
    hooks::{LocalReply, PendingFilters},
    lifecycle::InFlight,
    protocol::Protocol,
    state::GatewayState,
    transcode::TranscodeError,
    upstream::Outcome,
};
use classify::{RequestHead, RequestKind, classify};

pub struct GatewayProxy {
    pub state: Arc<GatewayState>,
}

/// Per-request state.
pub struct RequestCtx {
    start: Instant,
    trace: Option<TraceContext>,
    protocol: Protocol,
    route: String,
    grpc_method: String,
    origin: Option<String>,
    status: u16,
    /// The grpc-status the client got, as on the wire.
    grpc_status: Option<i32>,
    tried: Vec<SocketAddr>,
    upstream: Option<SocketAddr>,
    /// The filters' per-request state, from request to response.
    filters: PendingFilters,
    /// Native gRPC passed the filters; their response phase runs when the stream ends.
    grpc_filters_pending: bool,
    /// Attributes the filters recorded (span enrichment), logged with the request.
    filter_attributes: Vec<(String, String)>,
    /// Counts the request as in flight (drain-aware shutdown) until the context is dropped.
    _in_flight: InFlight,
    /// Native gRPC: the request messages' size limit, scanned as the body passes.
    grpc_messages: Option<MessageSizeGuard>,
    /// Why the gateway itself aborted a proxied request (answered in `fail_to_proxy`).
    refused: Option<GatewayError>,
    /// The verified token's claims for the upstream, when a `gateway.auth` rule covered the call.
    forwarded: Option<ForwardedClaims>,
}

impl RequestCtx {
    /// A filter's local reply as the error the proxy answers in the client's protocol.
    fn filtered(&mut self, mut reply: LocalReply) -> GatewayError {
        self.filter_attributes.append(&mut reply.attributes);
        GatewayError::Filtered(Box::new(reply))
    }
}

fn header_str<'a>(session: &'a Session, name: &str) -> Option<&'a str> {
    session
        .req_header()
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
}

fn client_addr(session: &Session) -> Option<String> {
    session
        .client_addr()
        .and_then(|addr| addr.as_inet())
        .map(ToString::to_string)
}

/// Path and query as the client sent them.
fn request_uri(session: &Session) -> String {
    let uri = &session.req_header().uri;
    uri.path_and_query()
        .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned())
}

impl GatewayProxy {
    fn classify(&self, session: &Session, ctx: &RequestCtx) -> RequestKind {
        let request = session.req_header();
        let head = RequestHead {
            method: &request.method,
            path: request.uri.path(),
            content_type: header_str(session, "content-type").unwrap_or(""),
            origin: ctx.origin.as_deref(),
            preflight_method: header_str(session, "access-control-request-method"),
            preflight_headers: header_str(session, "access-control-request-headers"),
        };
        classify(
            &head,
            &self.state.cors,
            &self.state.router,
            self.state.static_files.is_some(),
        )
    }

    /// The server span of a terminated (REST or gRPC-web) request, carrying the propagated
    /// trace identity.
    fn server_span(&self, ctx: &RequestCtx, session: &Session) -> tracing::Span {
        let (trace_id, span_id, parent) = ctx.trace.as_ref().map_or(("", "", None), |t| {
            (
                t.trace_id.as_str(),
                t.span_id.as_str(),
                t.parent_span_id.as_deref(),
            )
        });
        tracing::info_span!(
            "gateway.request",
            otel.kind = "server",
            protocol = ctx.protocol.as_str(),
            path = session.req_header().uri.path(),
            trace_id,
            span_id,
            parent_span_id = parent,
        )
    }

    /// Reads the whole request body, refusing more than the configured limit.
    async fn read_body(&self, session: &mut Session) -> Result<Bytes, GatewayError> {
        let limit = self.state.config.max_body_bytes;
        if let Some(length) =
            header_str(session, "content-length").and_then(|v| v.parse::<usize>().ok())
            && length > limit
        {
            return Err(GatewayError::PayloadTooLarge { limit });
        }
        let mut body = BytesMut::new();
        loop {
            match session.read_request_body().await {
                Ok(Some(chunk)) => {
                    if body.len() + chunk.len() > limit {
                        return Err(GatewayError::PayloadTooLarge { limit });
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(None) => return Ok(body.freeze()),
                Err(e) => {
                    // The framing is broken (e.g. a bad chunk size): the next request's start
                    // cannot be found, so the connection closes after the 400.
                    session.set_keepalive(None);
                    return Err(GatewayError::BadRequest(TranscodeError::Invalid(format!(
                        "request body could not be read: {}",
                        e.etype().as_str()
                    ))));
                }
            }
        }
    }

    /// REST under its server span.
    async fn rest(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<(), GatewayError> {
        let span = self.server_span(ctx, session);
        self.handle_rest(session, ctx).instrument(span).await
    }
}

#[async_trait]
impl ProxyHttp for GatewayProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            trace: None,
            protocol: Protocol::Rest,
            route: String::new(),
            grpc_method: String::new(),
            origin: None,
            status: 0,
            grpc_status: None,
            tried: Vec::new(),
            upstream: None,
            filters: PendingFilters::default(),
            grpc_filters_pending: false,
            filter_attributes: Vec::new(),
            _in_flight: self.state.lifecycle.request_started(),
            grpc_messages: None,
            refused: None,
            forwarded: None,
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        let downstream = session.as_downstream();
        let http2 = downstream.is_http2();
        let digest = downstream
            .digest()
            .and_then(|digest| digest.socket_digest.as_ref());
        self.state.connections.request_started(digest, http2);
        if !http2 {
            // While draining, HTTP/1.1 clients are told to reconnect (elsewhere) after this.
            let idle = if self.state.lifecycle.is_draining() {
                None
            } else {
                Some(self.state.config.connections.idle_timeout.as_secs())
            };
            session.set_keepalive(idle);
        }
        Ok(())
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        ctx.trace = Some(TraceContext::from_headers(|name| header_str(session, name)));
        ctx.origin = header_str(session, "origin").map(str::to_owned);
        let kind = self.classify(session, ctx);
        ctx.protocol = kind.protocol();
        let result = match kind {
            RequestKind::PreflightAllowed(headers) => {
                self.preflight_allowed(session, ctx, headers).await?;
                return Ok(true);
            }
            RequestKind::PreflightRejected => {
                self.preflight_rejected(session, ctx).await?;
                return Ok(true);
            }
            RequestKind::Admin(endpoint) => {
                self.admin(session, ctx, endpoint).await?;
                return Ok(true);
            }
            RequestKind::Grpc => {
                let admitted = match self.authenticate_grpc(session, ctx).await {
                    Ok(()) => self.admit_grpc(session, ctx)?,
                    Err(refused) => Err(refused),
                };
                match admitted {
                    // Admitted: pingora proxies it in the later phases.
                    Ok(()) => return Ok(false),
                    Err(rejected) => Err(rejected),
                }
            }
            RequestKind::GrpcWeb(mode) => {
                let span = self.server_span(ctx, session);
                self.handle_grpc_web(session, ctx, mode)
                    .instrument(span)
                    .await
            }
            RequestKind::StaticFile => match self.static_file(session).await {
                Some(file) => {
                    self.write_static(session, ctx, file).await?;
                    return Ok(true);
                }
                None => self.rest(session, ctx).await,
            },
            RequestKind::Rest => self.rest(session, ctx).await,
        };
        if let Err(error) = result {
            if session.response_written().is_some() {
                // Headers already went out (streaming): nothing more can be said.
                tracing::warn!(%error, "error after the response started");
                return Err(Error::explain(ErrorType::WriteError, "response aborted"));
            }
            self.respond_error(session, ctx, &error).await?;
        }
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Box<HttpPeer>> {
        self.grpc_peer(ctx)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        self.report_grpc_upstream(ctx, Outcome::TransportFailure);
        // Nothing reached the upstream: safe to try another one for any method, for free.
        if self.state.upstreams.pool().has_untried(&ctx.tried) {
            self.state
                .metrics
                .retries
                .with_label_values(&["connect_failover"])
                .inc();
            e.set_retry(true);
        }
        e
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        self.limit_grpc_messages(body.as_deref(), ctx)
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut pingora::http::RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        self.prepare_grpc_request(session, upstream_request, ctx)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        ctx.status = upstream_response.status.as_u16();
        self.report_grpc_upstream(ctx, Outcome::Answered);
        grpc::record_status(ctx, &upstream_response.headers);
        self.cors_headers(ctx, upstream_response);
        Ok(())
    }

    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        upstream_trailers: &mut HeaderMap,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Option<Bytes>> {
        grpc::record_status(ctx, upstream_trailers);
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        // Runs instead of response_filter: CORS and the gRPC shape are added here.
        tracing::warn!(error = %e, "proxying failed");
        if matches!(e.esource(), pingora::ErrorSource::Upstream)
            && ctx.refused.is_none()
            && session.response_written().is_none()
        {
            // The upstream connection broke before any answer (reset, closed).
            self.report_grpc_upstream(ctx, Outcome::TransportFailure);
        }
        let refused = ctx.refused.take();
        let downstream_gone =
            matches!(e.esource(), pingora::ErrorSource::Downstream) && refused.is_none();
        if !downstream_gone
            && session.response_written().is_none()
            && let Err(write) = self
                .respond_error(
                    session,
                    ctx,
                    &refused.unwrap_or_else(|| grpc::proxy_error(e)),
                )
                .await
        {
            tracing::debug!(%write, "could not write the error response");
        }
        FailToProxy {
            error_code: ctx.status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut RequestCtx) {
        let downstream = session.as_downstream();
        let digest = downstream
            .digest()
            .and_then(|digest| digest.socket_digest.as_ref());
        self.state
            .connections
            .request_ended(digest, downstream.is_http2());
        self.finish_grpc_filters(ctx);
        self.log_request(session, error, ctx);
    }
}
