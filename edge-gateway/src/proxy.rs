//! The one `ProxyHttp` impl. Order of work per request (`request_filter`):
//! 1. trace context and CORS preflight (answered here, before anything else can fail);
//! 2. the gateway's own endpoints (`/livez`, `/healthz`, `/readyz`, `/openapi.json`);
//! 3. native gRPC (`application/grpc`) falls through to pingora's proxy: h2c to an upstream,
//!    trailers and streaming preserved;
//! 4. gRPC-web and REST are terminated here with the gRPC client of [`crate::upstream`], so the
//!    HTTP answer is decided once grpc-status is known; a GET/HEAD that no API route claims is
//!    answered from `static_dir` when a file matches ([`crate::static_files`]).
//!
//! Every failure is a [`GatewayError`] rescued by [`GatewayProxy::respond_error`] in the
//! client's protocol.

use std::{net::SocketAddr, sync::Arc, time::Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use pingora::{
    Error, ErrorType,
    http::ResponseHeader,
    proxy::{FailToProxy, ProxyHttp, Session},
    upstreams::peer::HttpPeer,
};
use tonic::metadata::MetadataMap;
use tracing::Instrument;

use crate::routes::grpc_route_label;
use crate::{
    cors::Preflight,
    error::GatewayError,
    grpc_compression::{self, CompressionError, Encoding},
    grpc_web::{self, Mode, RequestDecoder, ResponseEncoder},
    hooks::{Decision, FilterRequest, FilterResponse, LocalReply, PendingFilters, Protocol},
    metrics,
    state::GatewayState,
    static_files::StaticResponse,
    telemetry::{ServerSpan, SpanExport},
    trace::TraceContext,
    transcode,
};

pub struct GatewayProxy {
    pub state: Arc<GatewayState>,
}

/// Per-request state.
pub struct RequestCtx {
    start: Instant,
    trace: Option<TraceContext>,
    protocol: &'static str,
    route: String,
    grpc_method: String,
    origin: Option<String>,
    status: u16,
    grpc_status: Option<i32>,
    tried: Vec<SocketAddr>,
    upstream: Option<SocketAddr>,
    /// The filters' per-request state, from request to response.
    filters: PendingFilters,
    /// Native gRPC passed the filters; their response phase runs when the stream ends.
    grpc_filters_pending: bool,
    /// Attributes the filters recorded (span enrichment), logged with the request.
    filter_attributes: Vec<(String, String)>,
}

impl RequestCtx {
    /// A filter's local reply as the error the proxy answers in the client's protocol.
    fn filtered(&mut self, mut reply: LocalReply) -> GatewayError {
        self.filter_attributes.append(&mut reply.attributes);
        GatewayError::Filtered(Box::new(reply))
    }
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

/// Filter attributes as one JSON object for the access log.
fn attributes_json(attributes: &[(String, String)]) -> Option<String> {
    if attributes.is_empty() {
        return None;
    }
    let object: serde_json::Map<String, serde_json::Value> = attributes
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    Some(serde_json::Value::Object(object).to_string())
}

/// Request headers that are about this hop, not the call, and are not forwarded as metadata.
const NOT_FORWARDED: &[&str] = &[
    "host",
    "content-type",
    "content-length",
    "connection",
    "keep-alive",
    "te",
    "transfer-encoding",
    "upgrade",
    "accept",
    "accept-encoding",
    "origin",
    "referer",
    "x-grpc-web",
    "x-user-agent",
    "grpc-timeout",
    "grpc-encoding",
    "grpc-accept-encoding",
    "user-agent",
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "cookie",
    "access-control-request-method",
    "access-control-request-headers",
    "sec-fetch-mode",
    "sec-fetch-site",
    "sec-fetch-dest",
];

/// Response metadata the gateway does not pass to gRPC-web clients as headers.
const NOT_RETURNED: &[&str] = &[
    "content-type",
    "content-length",
    "date",
    "server",
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    // The messages are sent as the gateway decoded them, uncompressed; what the upstream
    // accepts is not what the gateway accepts.
    "grpc-encoding",
    "grpc-accept-encoding",
];

fn header_str<'a>(session: &'a Session, name: &str) -> Option<&'a str> {
    session
        .req_header()
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
}

impl GatewayProxy {
    fn metadata_from(&self, headers: &HeaderMap, trace: &TraceContext) -> MetadataMap {
        let mut forwarded = HeaderMap::with_capacity(headers.len() + 4);
        for (name, value) in headers {
            if !NOT_FORWARDED.contains(&name.as_str()) {
                forwarded.append(name.clone(), value.clone());
            }
        }
        for (name, value) in trace.upstream_headers() {
            if let Some(value) = TraceContext::unindexed(&value) {
                forwarded.insert(HeaderName::from_static(name), value);
            }
        }
        MetadataMap::from_headers(forwarded)
    }

    /// The server span of a terminated request, carrying the propagated trace identity.
    fn server_span(&self, ctx: &RequestCtx, path: &str) -> tracing::Span {
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
            protocol = ctx.protocol,
            path,
            trace_id,
            span_id,
            parent_span_id = parent,
        )
    }

    fn cors_headers(&self, ctx: &RequestCtx, response: &mut ResponseHeader) {
        for (name, value) in self.state.cors.response_headers(ctx.origin.as_deref()) {
            let _ = response.insert_header(name, value);
        }
    }

    fn trace_header(&self, ctx: &RequestCtx, response: &mut ResponseHeader) {
        if let Some(trace) = &ctx.trace
            && let Some(value) = TraceContext::unindexed(&trace.traceparent())
        {
            let _ = response.insert_header("traceparent", value);
        }
    }

    async fn write_simple(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        status: u16,
        content_type: &str,
        body: Bytes,
        extra: &[(&str, String)],
    ) -> pingora::Result<()> {
        let mut response = ResponseHeader::build(status, Some(4))?;
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

    /// The single place errors become responses, shaped for the client's protocol.
    async fn respond_error(
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
        match ctx.protocol {
            "grpc-web" | "grpc" => {
                let mode =
                    Mode::from_content_type(header_str(session, "content-type").unwrap_or(""));
                let content_type = mode.map_or("application/grpc", Mode::content_type);
                // Trailers-only: the status travels in the headers of an otherwise empty response.
                let mut response = ResponseHeader::build(200, Some(6))?;
                response.insert_header("content-type", content_type)?;
                response.insert_header("grpc-status", rescued.grpc_code.to_string())?;
                response.insert_header("grpc-message", percent_encode_message(&rescued.message))?;
                if let Some(details) = &rescued.details {
                    use base64::Engine;
                    let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(details);
                    response.insert_header("grpc-status-details-bin", encoded)?;
                }
                if ctx.protocol == "grpc-web" {
                    response.insert_header("content-length", "0")?;
                }
                if let GatewayError::GrpcWebCompression(CompressionError::Unsupported(_)) = error {
                    response
                        .insert_header("grpc-accept-encoding", grpc_compression::ACCEPT_ENCODING)?;
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
            _ => {
                let (http_status, body) = crate::error::rest_error_body(
                    &self.state.pool,
                    self.state.json.error_detail,
                    error,
                    &rescued,
                );
                let mut extra = Vec::new();
                if let Some(allow) = rescued.allow {
                    extra.push(("allow", allow));
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
                    return Err(GatewayError::BadRequest(
                        crate::transcode::TranscodeError::Invalid(format!(
                            "request body could not be read: {}",
                            e.etype().as_str()
                        )),
                    ));
                }
            }
        }
    }

    /// A file from `static_dir` for a GET/HEAD path that no API route claims.
    async fn static_file(&self, session: &Session) -> Option<StaticResponse> {
        let files = self.state.static_files.as_ref()?;
        let request = session.req_header();
        let path = request.uri.path();
        let unclaimed = matches!(
            self.state.router.lookup(&request.method, path),
            Err(crate::routes::RouteMiss::NotFound)
        );
        if !unclaimed {
            return None;
        }
        files
            .serve(&request.method, path, header_str(session, "if-none-match"))
            .await
    }

    async fn write_static(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        file: StaticResponse,
    ) -> pingora::Result<()> {
        ctx.protocol = "static";
        ctx.route = "static".to_owned();
        let mut response = ResponseHeader::build(file.status, Some(file.headers.len() + 4))?;
        for (name, value) in file.headers {
            response.insert_header(name, value)?;
        }
        self.cors_headers(ctx, &mut response);
        self.trace_header(ctx, &mut response);
        ctx.status = file.status.as_u16();
        let end = file.body.is_empty();
        session
            .write_response_header(Box::new(response), end)
            .await?;
        if !end {
            session.write_response_body(Some(file.body), true).await?;
        }
        Ok(())
    }

    async fn handle_admin(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        path: &str,
    ) -> pingora::Result<bool> {
        let (status, content_type, body): (u16, &str, Bytes) = match path {
            // The process only: nothing here waits on an upstream.
            "/livez" => (200, "text/plain", Bytes::from_static(b"ok\n")),
            "/healthz" => (
                200,
                "application/json",
                health_json(self.state.upstreams.healthy_count() > 0).into(),
            ),
            "/readyz" => {
                let healthy = self.state.upstreams.healthy_count();
                if healthy > 0 {
                    (
                        200,
                        "text/plain",
                        format!("ready: {healthy} healthy upstream(s)\n").into(),
                    )
                } else {
                    (
                        503,
                        "text/plain",
                        Bytes::from_static(b"not ready: no healthy upstream\n"),
                    )
                }
            }
            "/openapi.json" => (200, "application/json", self.state.openapi.clone()),
            _ => return Ok(false),
        };
        ctx.protocol = "admin";
        ctx.route = path.to_owned();
        self.write_simple(session, ctx, status, content_type, body, &[])
            .await?;
        Ok(true)
    }

    /// The metadata for the upstream call of a terminated (REST or gRPC-web) request, after the
    /// filters' request phase, which may answer instead. Without filters the client's headers
    /// are read in place, not copied.
    fn upstream_metadata(
        &self,
        session: &Session,
        ctx: &mut RequestCtx,
        protocol: Protocol,
        message: &Bytes,
        body: &Bytes,
    ) -> Result<MetadataMap, GatewayError> {
        let trace = ctx
            .trace
            .clone()
            .unwrap_or_else(|| TraceContext::from_headers(|_| None));
        if self.state.filters.is_empty() {
            return Ok(self.metadata_from(&session.req_header().headers, &trace));
        }
        let mut headers = session.req_header().headers.clone();
        let uri = match protocol {
            Protocol::Rest => request_uri(session),
            Protocol::GrpcWeb | Protocol::Grpc => ctx.grpc_method.clone(),
        };
        let client = client_addr(session);
        let decision = self.state.filters.on_request(
            &mut FilterRequest {
                protocol,
                grpc_method: &ctx.grpc_method,
                route: (protocol == Protocol::Rest).then_some(ctx.route.as_str()),
                http_method: session.req_header().method.as_str(),
                uri: &uri,
                client_addr: client.as_deref(),
                headers: &mut headers,
                message: Some(message),
                body: Some(body),
            },
            &mut ctx.filters,
        );
        if let Decision::Respond(reply) = decision {
            return Err(ctx.filtered(reply));
        }
        Ok(self.metadata_from(&headers, &trace))
    }

    /// A gRPC-web request message against its method's `buf.validate` rules (protobuf presence).
    /// Messages the gateway cannot read are left to the service to refuse.
    fn check_grpc_web(&self, path: &str, message: &Bytes) -> Result<(), GatewayError> {
        if self.state.validators.is_empty() {
            return Ok(());
        }
        let Some(input) = path
            .strip_prefix('/')
            .and_then(|rest| rest.split_once('/'))
            .and_then(|(service, method)| {
                self.state
                    .pool
                    .get_service_by_name(service)?
                    .methods()
                    .find(|m| m.name() == method)
            })
            .map(|method| method.input())
            .filter(|input| self.state.validators.has_rules(input))
        else {
            return Ok(());
        };
        let Ok(decoded) = prost_reflect::DynamicMessage::decode(input, message.as_ref()) else {
            return Ok(());
        };
        let violations = self
            .state
            .validators
            .check(&decoded, crate::validate::Presence::Proto);
        if violations.is_empty() {
            return Ok(());
        }
        Err(GatewayError::BadRequest(transcode::TranscodeError::Fields(
            violations
                .into_iter()
                .map(|violation| transcode::FieldError {
                    source: transcode::Source::Body,
                    field: violation.field.clone(),
                    problem: transcode::Problem::Rule(violation),
                    input: None,
                })
                .collect(),
        )))
    }

    async fn handle_rest(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<(), GatewayError> {
        let method = session.req_header().method.clone();
        let uri = session.req_header().uri.clone();
        let path = uri.path().to_owned();
        let (route, bindings) =
            self.state
                .router
                .lookup(&method, &path)
                .map_err(|miss| match miss {
                    crate::routes::RouteMiss::NotFound => GatewayError::NotFound {
                        method: method.clone(),
                        path: path.clone(),
                    },
                    crate::routes::RouteMiss::MethodNotAllowed(allow) => {
                        GatewayError::MethodNotAllowed {
                            method: method.clone(),
                            path: path.clone(),
                            allow,
                        }
                    }
                })?;
        ctx.route = route.label();
        ctx.grpc_method = route.grpc_path.clone();
        let body = self.read_body(session).await?;
        if !body.is_empty() {
            let content_type = header_str(session, "content-type").unwrap_or("");
            let essence = content_type
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if !(essence.is_empty() || essence == "application/json" || essence.ends_with("+json"))
            {
                return Err(GatewayError::UnsupportedMediaType(content_type.to_owned()));
            }
        }
        let request = transcode::build_request(
            &route,
            &bindings,
            uri.query(),
            &body,
            self.state.json,
            &self.state.validators,
        )?;
        let message = transcode::encode(&request);
        let metadata = self.upstream_metadata(session, ctx, Protocol::Rest, &message, &body)?;
        let timeout = self
            .state
            .config
            .timeout_for(Some(&ctx.route), &route.grpc_path);
        let (upstream, response) = self
            .state
            .upstreams
            .call(
                &route.grpc_path,
                message,
                &metadata,
                timeout,
                route.idempotent(),
            )
            .await?;
        ctx.upstream = Some(upstream);
        let mut stream = response.into_inner();
        let collect = async {
            let mut messages = Vec::new();
            // Read to the end so a non-OK status in the trailers is seen.
            while let Some(message) = stream.message().await? {
                messages.push(message);
            }
            Ok::<_, tonic::Status>(messages)
        };
        let messages = match tokio::time::timeout(timeout, collect).await {
            Ok(Ok(messages)) => messages,
            Ok(Err(status)) => return Err(GatewayError::from_upstream(status)),
            Err(_) => return Err(GatewayError::UpstreamTimeout),
        };
        let render =
            |bytes: &Bytes| -> Result<(prost_reflect::DynamicMessage, Vec<u8>), GatewayError> {
                let decoded = transcode::decode_response(&route.output(), bytes)
                    .map_err(|e| GatewayError::Internal(e.to_string()))?;
                let json = transcode::render_response(&route, &decoded, self.state.json)
                    .map_err(|e| GatewayError::Internal(e.to_string()))?;
                Ok((decoded, json))
            };
        let first = messages.first().cloned().unwrap_or_default();
        let (decoded, mut json) = render(&first)?;
        if route.server_streaming() {
            // A server stream over REST is answered as one JSON array of the messages.
            let mut array = b"[".to_vec();
            for (index, message) in messages.iter().enumerate() {
                if index > 0 {
                    array.push(b',');
                }
                array.extend_from_slice(&render(message)?.1);
            }
            array.push(b']');
            json = array;
        }
        let mut response_headers = HeaderMap::new();
        response_headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let mut http_status = route.success_code;
        let mut body = Bytes::from(json);
        self.state.filters.on_response(
            &mut ctx.filters,
            &mut FilterResponse {
                protocol: Protocol::Rest,
                grpc_method: &route.grpc_path,
                grpc_status: 0,
                http_status: &mut http_status,
                headers: &mut response_headers,
                message: Some(&first),
                body: Some(&mut body),
                attributes: &mut ctx.filter_attributes,
            },
        );
        let mut extra: Vec<(&str, String)> = Vec::new();
        if let Some(template) = &route.location
            && let Some(location) = transcode::fill_location(template, &decoded)
        {
            extra.push(("location", location));
        }
        let mut header_pairs: Vec<(String, String)> = response_headers
            .iter()
            .filter(|(n, _)| *n != http::header::CONTENT_TYPE && *n != http::header::CONTENT_LENGTH)
            .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        header_pairs.extend(extra.into_iter().map(|(n, v)| (n.to_owned(), v)));
        let extra: Vec<(&str, String)> = header_pairs
            .iter()
            .map(|(n, v)| (n.as_str(), v.clone()))
            .collect();
        ctx.grpc_status = Some(0);
        self.write_simple(session, ctx, http_status, "application/json", body, &extra)
            .await
            .map_err(|e| GatewayError::Internal(format!("writing response: {e}")))
    }

    async fn handle_grpc_web(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        mode: Mode,
    ) -> Result<(), GatewayError> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_owned();
        ctx.grpc_method = path.clone();
        ctx.route = grpc_route_label(&self.state.pool, &path);
        if method != Method::POST {
            return Err(GatewayError::MethodNotAllowed {
                method,
                path,
                allow: vec![Method::POST],
            });
        }
        // An encoding the gateway cannot decode is refused before the body is read (grpc-go).
        let encoding = Encoding::from_header(header_str(session, "grpc-encoding"))?;
        let body = self.read_body(session).await?;
        let mut decoder = RequestDecoder::new(mode, self.state.config.max_body_bytes);
        let mut frames = Vec::new();
        decoder.push(&body, &mut frames)?;
        decoder.finish(&mut frames)?;
        let messages: Vec<_> = frames.into_iter().filter(|f| !f.is_trailers()).collect();
        if messages.len() != 1 {
            return Err(GatewayError::GrpcWebMessageCount(messages.len()));
        }
        // Forwarded uncompressed; inflating stops at max_body_bytes (gzip bombs).
        let message = encoding.decode_message(
            messages[0].flags & grpc_web::COMPRESSED_FLAG != 0,
            messages[0].payload.clone(),
            self.state.config.max_body_bytes,
        )?;
        self.check_grpc_web(&path, &message)?;
        let metadata = self.upstream_metadata(session, ctx, Protocol::GrpcWeb, &message, &body)?;
        let timeout = match header_str(session, "grpc-timeout").and_then(parse_grpc_timeout) {
            Some(client) => client.min(self.state.config.timeout_for(None, &path)),
            None => self.state.config.timeout_for(None, &path),
        };
        let (upstream, response) = self
            .state
            .upstreams
            .call(&path, message, &metadata, timeout, false)
            .await?;
        ctx.upstream = Some(upstream);
        let (response_metadata, mut stream, _) = response.into_parts();
        let encoder = ResponseEncoder::new(mode);
        let mut head = ResponseHeader::build(200, Some(8))
            .map_err(|e| GatewayError::Internal(e.to_string()))?;
        let _ = head.insert_header("content-type", mode.content_type());
        for (name, value) in response_metadata.into_headers().iter() {
            if !NOT_RETURNED.contains(&name.as_str()) {
                let _ = head.append_header(name.clone(), value.clone());
            }
        }
        self.cors_headers(ctx, &mut head);
        self.trace_header(ctx, &mut head);
        ctx.status = 200;
        let mut sent_headers = head.headers.clone();
        let mut first_message: Option<Bytes> = None;
        let write_error =
            |e: Box<Error>| GatewayError::Internal(format!("writing gRPC-web response: {e}"));
        session
            .write_response_header(Box::new(head), false)
            .await
            .map_err(write_error)?;
        let deadline = tokio::time::Instant::now() + timeout;
        let status = loop {
            match tokio::time::timeout_at(deadline, stream.message()).await {
                Ok(Ok(Some(message))) => {
                    if first_message.is_none() {
                        first_message = Some(message.clone());
                    }
                    session
                        .write_response_body(Some(encoder.message(&message)), false)
                        .await
                        .map_err(write_error)?;
                }
                Ok(Ok(None)) => break tonic::Status::ok(""),
                Ok(Err(status)) => break status,
                Err(_) => break tonic::Status::deadline_exceeded("upstream deadline exceeded"),
            }
        };
        let mut trailers = HeaderMap::new();
        if status.code() == tonic::Code::Ok
            && let Ok(Some(upstream_trailers)) = stream.trailers().await
        {
            trailers = upstream_trailers.into_headers();
        }
        let rescued = if status.code() == tonic::Code::Ok {
            None
        } else {
            Some(GatewayError::from_upstream(status).rescue())
        };
        let code = rescued.as_ref().map_or(0, |r| r.grpc_code);
        trailers.insert("grpc-status", HeaderValue::from(code));
        if let Some(rescued) = &rescued {
            if let Ok(value) = HeaderValue::from_str(&percent_encode_message(&rescued.message)) {
                trailers.insert("grpc-message", value);
            }
            if let Some(details) = &rescued.details {
                use base64::Engine;
                let encoded = base64::engine::general_purpose::STANDARD_NO_PAD.encode(details);
                if let Ok(value) = HeaderValue::from_str(&encoded) {
                    trailers.insert("grpc-status-details-bin", value);
                }
            }
        }
        ctx.grpc_status = Some(code);
        // The stream has gone out: the filters' response phase only records attributes.
        let mut http_status = 200;
        self.state.filters.on_response(
            &mut ctx.filters,
            &mut FilterResponse {
                protocol: Protocol::GrpcWeb,
                grpc_method: &path,
                grpc_status: code,
                http_status: &mut http_status,
                headers: &mut sent_headers,
                message: first_message.as_ref(),
                body: None,
                attributes: &mut ctx.filter_attributes,
            },
        );
        session
            .write_response_body(Some(encoder.trailers(&trailers)), true)
            .await
            .map_err(write_error)
    }
}

/// The request's SERVER span over OTLP (`gateway.otlp`); probes and `/openapi.json` are not traced.
fn export_span(
    spans: &SpanExport,
    session: &Session,
    ctx: &RequestCtx,
    http_status: u16,
    route: &str,
    latency: std::time::Duration,
    error: Option<&Error>,
) {
    let Some(trace) = &ctx.trace else {
        return;
    };
    if ctx.protocol == "admin" {
        return;
    }
    let end = std::time::SystemTime::now();
    let error = error.map(ToString::to_string);
    spans.record(&ServerSpan {
        trace,
        start: end.checked_sub(latency).unwrap_or(end),
        end,
        http_method: session.req_header().method.as_str(),
        path: session.req_header().uri.path(),
        protocol: ctx.protocol,
        route,
        grpc_method: &ctx.grpc_method,
        http_status,
        grpc_status: ctx.grpc_status,
        http_version: if session.is_http2() { "2" } else { "1.1" },
        upstream: ctx.upstream,
        filter_attributes: &ctx.filter_attributes,
        error: error.as_deref(),
    });
}

/// `GET /healthz`: the replaced facade's health body. `status` is the gateway's own (it
/// answered); `grpc_user_status` is the upstreams' grpc.health.v1 state as the active health
/// checks last saw it (`healthy` while at least one upstream is).
fn health_json(upstream_healthy: bool) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "status": "healthy",
        "service": "meshgate edge-gateway",
        "version": env!("CARGO_PKG_VERSION"),
        "grpc_user_status": if upstream_healthy { "healthy" } else { "unhealthy" },
    }))
    .expect("a JSON value always serializes")
}

/// Makes the forwarded request headers what the filters left (added, changed, removed).
fn replace_request_headers(
    request: &mut pingora::http::RequestHeader,
    headers: &HeaderMap,
) -> pingora::Result<()> {
    let current: Vec<HeaderName> = request.headers.keys().cloned().collect();
    for name in current {
        if !headers.contains_key(&name) {
            request.remove_header(&name);
        }
    }
    for name in headers.keys() {
        let mut values = headers.get_all(name).iter();
        if let Some(first) = values.next() {
            request.insert_header(name.clone(), first.clone())?;
            for value in values {
                request.append_header(name.clone(), value.clone())?;
            }
        }
    }
    Ok(())
}

/// grpc-message is percent-encoded (gRPC over HTTP/2 spec).
fn percent_encode_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `grpc-timeout: 100m` → 100 ms.
pub fn parse_grpc_timeout(value: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.checked_mul(3600)?),
        "M" => Duration::from_secs(amount.checked_mul(60)?),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

fn grpc_timeout_value(timeout: std::time::Duration) -> String {
    format!("{}m", timeout.as_millis().clamp(1, 99_999_999))
}

#[async_trait]
impl ProxyHttp for GatewayProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            start: Instant::now(),
            trace: None,
            protocol: "rest",
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
        }
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<bool> {
        let trace = TraceContext::from_headers(|name| header_str(session, name));
        ctx.trace = Some(trace);
        ctx.origin = header_str(session, "origin").map(str::to_owned);
        let method = session.req_header().method.clone();
        match self.state.cors.preflight(
            &method,
            ctx.origin.as_deref(),
            header_str(session, "access-control-request-method"),
            header_str(session, "access-control-request-headers"),
        ) {
            Preflight::NotPreflight => {}
            Preflight::Allowed(headers) => {
                ctx.protocol = "preflight";
                let mut response = ResponseHeader::build(204, Some(headers.len()))?;
                for (name, value) in headers {
                    response.insert_header(name, value)?;
                }
                ctx.status = 204;
                session
                    .write_response_header(Box::new(response), true)
                    .await?;
                return Ok(true);
            }
            Preflight::Rejected => {
                ctx.protocol = "preflight";
                ctx.origin = None;
                self.write_simple(
                    session,
                    ctx,
                    403,
                    "text/plain",
                    Bytes::from_static(b"origin not allowed\n"),
                    &[],
                )
                .await?;
                return Ok(true);
            }
        }
        let path = session.req_header().uri.path().to_owned();
        if method == Method::GET && self.handle_admin(session, ctx, &path).await? {
            return Ok(true);
        }
        let content_type = header_str(session, "content-type").unwrap_or("").to_owned();
        let result = if let Some(mode) = Mode::from_content_type(&content_type) {
            ctx.protocol = "grpc-web";
            let span = self.server_span(ctx, &path);
            self.handle_grpc_web(session, ctx, mode)
                .instrument(span)
                .await
        } else if content_type.starts_with("application/grpc") {
            // Native gRPC: proxied by pingora in the later phases.
            ctx.protocol = "grpc";
            ctx.route = grpc_route_label(&self.state.pool, &path);
            ctx.grpc_method = path;
            let mut headers = session.req_header().headers.clone();
            let client = client_addr(session);
            let decision = self.state.filters.on_request(
                &mut FilterRequest {
                    protocol: Protocol::Grpc,
                    grpc_method: &ctx.grpc_method,
                    route: None,
                    http_method: method.as_str(),
                    uri: &ctx.grpc_method,
                    client_addr: client.as_deref(),
                    headers: &mut headers,
                    message: None,
                    body: None,
                },
                &mut ctx.filters,
            );
            if let Decision::Respond(reply) = decision {
                Err(ctx.filtered(reply))
            } else {
                // Header changes (x-meshgate-* enrichment) go upstream with the request.
                if headers != session.req_header().headers {
                    replace_request_headers(session.req_header_mut(), &headers)?;
                }
                ctx.grpc_filters_pending = true;
                return Ok(false);
            }
        } else if let Some(file) = self.static_file(session).await {
            self.write_static(session, ctx, file).await?;
            return Ok(true);
        } else {
            ctx.protocol = "rest";
            let span = self.server_span(ctx, &path);
            self.handle_rest(session, ctx).instrument(span).await
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
        let addr = self
            .state
            .upstreams
            .pick(&ctx.tried)
            .ok_or_else(|| Error::explain(ErrorType::ConnectNoRoute, "no healthy upstream"))?;
        ctx.tried.push(addr);
        ctx.upstream = Some(addr);
        let mut peer = HttpPeer::new(addr, false, String::new());
        // h2c with prior knowledge; many streams per connection (pingora's default is 1).
        peer.options.set_http_version(2, 2);
        peer.options.max_h2_streams = self.state.config.h2_streams_per_connection;
        peer.options.connection_timeout = Some(self.state.config.connect_timeout);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Nothing reached the upstream: safe to try another one for any method.
        if ctx.tried.len() < self.state.config.upstreams.len() {
            e.set_retry(true);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut pingora::http::RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
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
        upstream_request.insert_header("te", "trailers")?;
        if header_str(session, "grpc-timeout").is_none() {
            let timeout = self.state.config.timeout_for(None, &ctx.grpc_method);
            upstream_request.insert_header("grpc-timeout", grpc_timeout_value(timeout))?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<()> {
        ctx.status = upstream_response.status.as_u16();
        if let Some(code) = upstream_response
            .headers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()?.parse().ok())
        {
            ctx.grpc_status = Some(code);
        }
        self.cors_headers(ctx, upstream_response);
        Ok(())
    }

    async fn response_trailer_filter(
        &self,
        _session: &mut Session,
        upstream_trailers: &mut HeaderMap,
        ctx: &mut RequestCtx,
    ) -> pingora::Result<Option<Bytes>> {
        if let Some(code) = upstream_trailers
            .get("grpc-status")
            .and_then(|v| v.to_str().ok()?.parse().ok())
        {
            ctx.grpc_status = Some(code);
        }
        Ok(None)
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        // Runs instead of response_filter: CORS and the gRPC shape are added here.
        let error = match e.etype() {
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
                GatewayError::UpstreamTimeout
            }
            ErrorType::ConnectNoRoute => GatewayError::NoHealthyUpstream,
            _ => GatewayError::UpstreamUnavailable,
        };
        tracing::warn!(error = %e, "proxying failed");
        let downstream_gone = matches!(e.esource(), pingora::ErrorSource::Downstream);
        if !downstream_gone
            && session.response_written().is_none()
            && let Err(write) = self.respond_error(session, ctx, &error).await
        {
            tracing::debug!(%write, "could not write the error response");
        }
        FailToProxy {
            error_code: ctx.status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, error: Option<&Error>, ctx: &mut RequestCtx) {
        if std::mem::take(&mut ctx.grpc_filters_pending) {
            // Native gRPC streamed through: the filters see the final status, for attributes.
            let mut http_status = ctx.status;
            let mut headers = HeaderMap::new();
            self.state.filters.on_response(
                &mut ctx.filters,
                &mut FilterResponse {
                    protocol: Protocol::Grpc,
                    grpc_method: &ctx.grpc_method,
                    // UNKNOWN when the stream ended without a status (broken connection).
                    grpc_status: ctx.grpc_status.unwrap_or(2),
                    http_status: &mut http_status,
                    headers: &mut headers,
                    message: None,
                    body: None,
                    attributes: &mut ctx.filter_attributes,
                },
            );
        }
        let status = if ctx.status == 0 {
            session.response_written().map_or(0, |r| r.status.as_u16())
        } else {
            ctx.status
        };
        let latency = ctx.start.elapsed();
        let route = if ctx.route.is_empty() {
            "unmatched"
        } else {
            ctx.route.as_str()
        };
        // Unmatched REST paths share one label so clients cannot blow up metric cardinality.
        let route_label = if status == 404 && ctx.protocol == "rest" {
            "unmatched"
        } else {
            route
        };
        metrics::REQUESTS
            .with_label_values(&[route_label, ctx.protocol, &status.to_string()])
            .inc();
        metrics::LATENCY
            .with_label_values(&[route_label, ctx.protocol])
            .observe(latency.as_secs_f64());
        let trace_id = ctx.trace.as_ref().map_or("", |t| t.trace_id.as_str());
        let span_id = ctx.trace.as_ref().map_or("", |t| t.span_id.as_str());
        tracing::info!(
            target: "access",
            trace_id,
            span_id,
            method = %session.req_header().method,
            path = session.req_header().uri.path(),
            route = route_label,
            grpc_method = ctx.grpc_method.as_str(),
            protocol = ctx.protocol,
            http_version = if session.is_http2() { "h2" } else { "http/1.1" },
            status,
            grpc_status = ctx.grpc_status,
            upstream = ctx.upstream.map(|a| a.to_string()),
            latency_ms = latency.as_secs_f64() * 1000.0,
            filter_attributes = attributes_json(&ctx.filter_attributes),
            error = error.map(|e| e.to_string()),
            "request"
        );
        if let Some(spans) = &self.state.spans {
            export_span(spans, session, ctx, status, route_label, latency, error);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn grpc_timeout_round_trip() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("1234567890m"), None);
        assert_eq!(grpc_timeout_value(Duration::from_millis(1500)), "1500m");
    }

    #[test]
    fn grpc_message_is_percent_encoded() {
        assert_eq!(percent_encode_message("50% done ✓"), "50%25 done %E2%9C%93");
    }
}
