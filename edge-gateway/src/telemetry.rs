//! OTLP export of the gateway's server span: one SERVER span per request, in the caller's trace.
//!
//! The span's identity is the [`TraceContext`] the proxy already keeps per request: its trace id
//! and parent are the incoming W3C / B3 context (or fresh ids), its span id is the one sent
//! upstream in `traceparent` / `x-b3-spanid`, so the service's span is its child. The span is
//! built once the request is over (`logging`) from what the access log records, and handed to
//! the SDK's batch processor (a bounded queue drained by its own thread; a full queue drops
//! spans, it never blocks a request). Export is off unless an endpoint is configured; then the
//! proxy does no tracing work beyond what it did before (no allocation).
//!
//! The OTLP exporter is a tonic client; its connection tasks run on a small runtime owned here
//! (one thread), independent of pingora's runtimes and their shutdown. It starts with the first
//! span, not at configuration time: pingora may fork to daemonize when it starts, and threads
//! created before that would not survive the fork.

use std::{
    borrow::Cow,
    net::SocketAddr,
    sync::{Mutex, OnceLock},
    time::SystemTime,
};

use meshgate_wire::{grpc::split_path, trace::TraceContext};
use opentelemetry::{
    InstrumentationScope, KeyValue,
    trace::{SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState},
};
use opentelemetry_sdk::{
    Resource,
    trace::{BatchSpanProcessor, SpanData, SpanEvents, SpanLinks, SpanProcessor},
};

use crate::protocol::Protocol;

/// Where spans go (`gateway.otlp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpSettings {
    /// OTLP/gRPC endpoint, `http://host:4317`.
    pub endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

/// What one finished request looked like; borrowed from the proxy's per-request state.
#[derive(Debug)]
pub struct ServerSpan<'a> {
    pub trace: &'a TraceContext,
    pub start: SystemTime,
    pub end: SystemTime,
    pub http_method: &'a str,
    pub path: &'a str,
    pub protocol: Protocol,
    /// The route label of the access log and metrics (`GET /v1/users/{id}`,
    /// `/user.UserService/GetUser`, `unmatched`).
    pub route: &'a str,
    /// `/package.Service/Method`, empty when no method was resolved.
    pub grpc_method: &'a str,
    pub http_status: u16,
    pub grpc_status: Option<i32>,
    /// `1.1` or `2`.
    pub http_version: &'static str,
    pub upstream: Option<SocketAddr>,
    /// The wasm filters' enrichment (span-enrichment filter state).
    pub filter_attributes: &'a [(String, String)],
    /// pingora's error for the request, if it failed.
    pub error: Option<&'a str>,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("gateway.otlp: cannot start the exporter runtime: {0}")]
    Runtime(std::io::Error),
    #[error("gateway.otlp.endpoint: {0}")]
    Exporter(String),
}

/// The span exporter of one gateway.
pub struct SpanExport {
    settings: OtlpSettings,
    scope: InstrumentationScope,
    /// Started by the first span; `None` if it could not start (logged once).
    running: OnceLock<Option<Running>>,
}

struct Running {
    processor: BatchSpanProcessor,
    /// Drives the exporter's gRPC connection; shut down after the processor.
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
}

impl std::fmt::Debug for SpanExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpanExport").finish_non_exhaustive()
    }
}

impl SpanExport {
    /// The exporter for `settings`; nothing runs until the first span.
    pub fn new(settings: &OtlpSettings) -> Self {
        Self {
            settings: settings.clone(),
            scope: InstrumentationScope::builder("edge-gateway")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
            running: OnceLock::new(),
        }
    }

    /// Queues the span of a finished request (not sampled by the caller: nothing).
    pub fn record(&self, span: &ServerSpan<'_>) {
        let Some(data) = span_data(span, &self.scope) else {
            return;
        };
        let running = self
            .running
            .get_or_init(|| match Running::start(&self.settings) {
                Ok(running) => Some(running),
                Err(error) => {
                    tracing::error!(%error, "OTLP span export disabled");
                    None
                }
            });
        if let Some(running) = running {
            running.processor.on_end(data);
        }
    }

    /// Exports what is queued and stops the exporter (idempotent). Blocks up to a few seconds.
    pub fn shutdown(&self) {
        if let Some(Some(running)) = self.running.get() {
            running.shutdown();
        }
    }
}

impl Running {
    /// Connecting is lazy: an unreachable collector does not stop the gateway, its batches
    /// are dropped (and logged by the SDK).
    fn start(settings: &OtlpSettings) -> Result<Self, TelemetryError> {
        use opentelemetry_otlp::WithExportConfig;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()
            .map_err(TelemetryError::Runtime)?;
        let exporter = {
            let _entered = runtime.enter();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(settings.endpoint.clone())
                .build()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?
        };
        let mut processor = BatchSpanProcessor::builder(exporter).build();
        processor.set_resource(
            &Resource::builder()
                .with_service_name(settings.service_name.clone())
                .build(),
        );
        Ok(Self {
            processor,
            runtime: Mutex::new(Some(runtime)),
        })
    }

    fn shutdown(&self) {
        let runtime = match self.runtime.lock() {
            Ok(mut runtime) => runtime.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        let Some(runtime) = runtime else {
            return;
        };
        if let Err(error) = self.processor.shutdown() {
            tracing::warn!(%error, "flushing spans at shutdown failed");
        }
        // No waiting: this may run on an async thread (dropping a runtime there panics).
        runtime.shutdown_background();
    }
}

impl Drop for SpanExport {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// OpenTelemetry's view of the request; `None` when the caller asked not to sample.
pub fn span_data(span: &ServerSpan<'_>, scope: &InstrumentationScope) -> Option<SpanData> {
    let trace = span.trace;
    if !trace.sampled {
        return None;
    }
    let trace_id = TraceId::from_hex(&trace.trace_id).ok()?;
    let span_id = SpanId::from_hex(&trace.span_id).ok()?;
    let parent_span_id = trace
        .parent_span_id
        .as_deref()
        .and_then(|parent| SpanId::from_hex(parent).ok())
        .unwrap_or(SpanId::INVALID);
    Some(SpanData {
        span_context: SpanContext::new(
            trace_id,
            span_id,
            TraceFlags::SAMPLED,
            false,
            TraceState::default(),
        ),
        parent_span_id,
        parent_span_is_remote: parent_span_id != SpanId::INVALID,
        span_kind: SpanKind::Server,
        name: span_name(span),
        start_time: span.start,
        end_time: span.end.max(span.start),
        attributes: attributes(span),
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: status(span),
        instrumentation_scope: scope.clone(),
    })
}

/// `GET /v1/users/{id}` for REST, `user.UserService/GetUser` for gRPC (the semantic
/// conventions' names), the bare HTTP method when nothing matched (bounded cardinality).
fn span_name(span: &ServerSpan<'_>) -> Cow<'static, str> {
    let matched = !span.route.is_empty() && span.route != "unmatched";
    if matched && span.protocol.is_grpc() {
        Cow::Owned(span.route.trim_start_matches('/').to_owned())
    } else if matched && span.protocol == Protocol::Rest {
        Cow::Owned(span.route.to_owned())
    } else {
        Cow::Owned(span.http_method.to_owned())
    }
}

fn attributes(span: &ServerSpan<'_>) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(12 + span.filter_attributes.len());
    attributes.push(KeyValue::new("meshgate.protocol", span.protocol.as_str()));
    attributes.push(KeyValue::new("meshgate.route", span.route.to_owned()));
    attributes.push(KeyValue::new(
        "http.request.method",
        span.http_method.to_owned(),
    ));
    attributes.push(KeyValue::new("url.path", span.path.to_owned()));
    attributes.push(KeyValue::new("network.protocol.version", span.http_version));
    if span.http_status != 0 {
        attributes.push(KeyValue::new(
            "http.response.status_code",
            i64::from(span.http_status),
        ));
    }
    if span.protocol == Protocol::Rest
        && let Some((_, template)) = span.route.split_once(' ')
    {
        attributes.push(KeyValue::new("http.route", template.to_owned()));
    }
    if let Some((service, method)) = split_path(span.grpc_method) {
        attributes.push(KeyValue::new("rpc.system", "grpc"));
        attributes.push(KeyValue::new("rpc.service", service.to_owned()));
        attributes.push(KeyValue::new("rpc.method", method.to_owned()));
    }
    if let Some(code) = span.grpc_status {
        attributes.push(KeyValue::new("rpc.grpc.status_code", i64::from(code)));
    }
    if let Some(upstream) = span.upstream {
        attributes.push(KeyValue::new("meshgate.upstream", upstream.to_string()));
    }
    if let Some(error) = span.error {
        attributes.push(KeyValue::new("error.type", error.to_owned()));
    }
    for (key, value) in span.filter_attributes {
        attributes.push(KeyValue::new(key.clone(), value.clone()));
    }
    attributes
}

/// Error for 5xx answers and for gRPC calls that did not end OK; a REST 4xx is the client's
/// error, not the server span's (HTTP semantic conventions).
fn status(span: &ServerSpan<'_>) -> Status {
    if span.http_status >= 500 {
        return Status::error(format!("HTTP {}", span.http_status));
    }
    if span.protocol.is_grpc()
        && let Some(code) = span
            .grpc_status
            .filter(|code| *code != tonic::Code::Ok as i32)
    {
        return Status::error(format!("grpc-status {code}"));
    }
    if let Some(error) = span.error {
        return Status::error(error.to_owned());
    }
    Status::Unset
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry::Value;

    use super::*;

    fn context(parent: Option<&str>, sampled: bool) -> TraceContext {
        TraceContext {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: "00f067aa0ba902b7".into(),
            parent_span_id: parent.map(str::to_owned),
            sampled,
        }
    }

    fn span<'a>(trace: &'a TraceContext, filter: &'a [(String, String)]) -> ServerSpan<'a> {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        ServerSpan {
            trace,
            start,
            end: start + Duration::from_millis(3),
            http_method: "GET",
            path: "/v1/users/abc",
            protocol: Protocol::Rest,
            route: "GET /v1/users/{id}",
            grpc_method: "/user.UserService/GetUser",
            http_status: 200,
            grpc_status: Some(0),
            http_version: "2",
            upstream: Some("127.0.0.1:50051".parse().unwrap()),
            filter_attributes: filter,
            error: None,
        }
    }

    fn scope() -> InstrumentationScope {
        InstrumentationScope::builder("edge-gateway").build()
    }

    fn attribute<'a>(data: &'a SpanData, key: &str) -> Option<&'a Value> {
        data.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| &kv.value)
    }

    #[test]
    fn the_span_continues_the_callers_trace_with_the_propagated_id() {
        let trace = context(Some("a3ce929d0e0e4736"), true);
        let filter = vec![("meshgate.grpc_method".to_owned(), "GetUser".to_owned())];
        let data = span_data(&span(&trace, &filter), &scope()).unwrap();
        assert_eq!(
            data.span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(data.span_context.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(data.parent_span_id.to_string(), "a3ce929d0e0e4736");
        assert!(data.parent_span_is_remote);
        assert_eq!(data.span_kind, SpanKind::Server);
        assert_eq!(data.name, "GET /v1/users/{id}");
        assert_eq!(data.status, Status::Unset);
        assert_eq!(
            data.end_time.duration_since(data.start_time).unwrap(),
            Duration::from_millis(3)
        );
        assert_eq!(
            attribute(&data, "http.route"),
            Some(&Value::from("/v1/users/{id}"))
        );
        assert_eq!(
            attribute(&data, "rpc.method"),
            Some(&Value::from("GetUser"))
        );
        assert_eq!(
            attribute(&data, "rpc.service"),
            Some(&Value::from("user.UserService"))
        );
        assert_eq!(
            attribute(&data, "http.response.status_code"),
            Some(&Value::I64(200))
        );
        assert_eq!(
            attribute(&data, "rpc.grpc.status_code"),
            Some(&Value::I64(0))
        );
        assert_eq!(
            attribute(&data, "meshgate.grpc_method"),
            Some(&Value::from("GetUser"))
        );
    }

    #[test]
    fn a_root_span_has_no_parent_and_unsampled_traces_are_not_exported() {
        let trace = context(None, true);
        let data = span_data(&span(&trace, &[]), &scope()).unwrap();
        assert_eq!(data.parent_span_id, SpanId::INVALID);
        assert!(!data.parent_span_is_remote);

        let unsampled = context(Some("a3ce929d0e0e4736"), false);
        assert!(span_data(&span(&unsampled, &[]), &scope()).is_none());
    }

    #[test]
    fn statuses() {
        let trace = context(None, true);
        let mut s = span(&trace, &[]);
        s.http_status = 404;
        s.grpc_status = Some(5);
        assert_eq!(
            span_data(&s, &scope()).unwrap().status,
            Status::Unset,
            "a REST 404 is the client's error"
        );
        s.http_status = 503;
        s.grpc_status = Some(14);
        assert!(matches!(
            span_data(&s, &scope()).unwrap().status,
            Status::Error { .. }
        ));
        s.protocol = Protocol::Grpc;
        s.route = "/user.UserService/GetUser";
        s.http_status = 200;
        s.grpc_status = Some(5);
        let data = span_data(&s, &scope()).unwrap();
        assert!(matches!(data.status, Status::Error { .. }));
        assert_eq!(data.name, "user.UserService/GetUser");
        assert_eq!(attribute(&data, "http.route"), None);
        s.grpc_status = Some(0);
        assert_eq!(span_data(&s, &scope()).unwrap().status, Status::Unset);
    }

    #[test]
    fn unmatched_requests_are_named_by_method_only() {
        let trace = context(None, true);
        let mut s = span(&trace, &[]);
        s.route = "unmatched";
        s.grpc_method = "";
        s.http_status = 404;
        let data = span_data(&s, &scope()).unwrap();
        assert_eq!(data.name, "GET");
        assert_eq!(attribute(&data, "rpc.method"), None);
    }
}
