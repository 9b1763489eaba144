//! Logs and traces: `tracing` with JSON (or text) output, an OpenTelemetry layer that gives
//! every span a trace id (exported over OTLP when an endpoint is configured), and the
//! propagators that continue incoming W3C `traceparent` and B3 (`b3`, `x-b3-*`) traces.

use std::sync::{LazyLock, OnceLock};

use opentelemetry::propagation::{Extractor, TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, with the current span's fields (trace_id, span_id).
    Json,
    /// Human-readable lines for development.
    Text,
}

/// What [`init`] needs.
#[derive(Debug, Clone)]
pub struct TelemetrySettings {
    pub format: LogFormat,
    pub filter: String,
    pub otlp_endpoint: Option<String>,
    pub service_name: String,
}

/// Flushes pending spans when dropped (at process exit).
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("warning: flushing traces at exit failed: {error}");
        }
    }
}

/// Installs the global subscriber. Must run inside a Tokio runtime (the OTLP exporter is a
/// tonic client). `sink` is where log lines go: stdout in production, `io::sink` in tests.
pub fn init<W>(settings: &TelemetrySettings, sink: W) -> anyhow::Result<TelemetryGuard>
where
    W: for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static,
{
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(settings.service_name.clone())
        .build();
    let mut provider = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = &settings.otlp_endpoint {
        use opentelemetry_otlp::WithExportConfig;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint.clone())
            .build()?;
        provider = provider.with_batch_exporter(exporter);
    }
    // Without an exporter spans are still created: they carry the trace ids into the logs and
    // into TestError responses.
    let provider = provider.build();
    let tracer = provider.tracer("user-service");
    opentelemetry::global::set_tracer_provider(provider.clone());

    let filter = EnvFilter::try_new(&settings.filter)
        .map_err(|error| anyhow::anyhow!("invalid log filter {:?}: {error}", settings.filter))?;
    // The log formatter only needs the `rpc` span (it carries trace_id/span_id); formatting the
    // fields of every `db.query` and `cache` span too cost ~10 µs of CPU per request. Lines
    // logged inside those spans still show the enclosing `rpc` span.
    let only_rpc_spans = tracing_subscriber::filter::filter_fn(|metadata| {
        !metadata.is_span() || metadata.name() == "rpc"
    });
    let format = match settings.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(sink)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer().with_writer(sink).boxed(),
    }
    .with_filter(only_rpc_spans);
    tracing_subscriber::registry()
        .with(filter)
        .with(format)
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                // Per-span extras that cost CPU on every call (clock reads on each poll, code
                // location and thread strings) and that no dashboard of ours reads.
                .with_tracked_inactivity(false)
                .with_location(false)
                .with_threads(false),
        )
        .try_init()?;
    Ok(TelemetryGuard { provider })
}

/// W3C trace context, then B3 (single `b3` header, else `x-b3-*`). Each extractor that finds a
/// valid context replaces the previous one, so when a request carries both, B3 wins: it is what
/// the Istio sidecar in front of us writes, i.e. the nearest hop, while a `traceparent` may be
/// left over from a caller further out.
///
/// The B3 propagator ships in `opentelemetry-zipkin`, deprecated as a whole because its
/// *exporter* is superseded by OTLP; the propagator has no successor in opentelemetry-rust 0.33,
/// so it is used with `default-features = false` (no exporter, no HTTP client).
#[allow(deprecated)]
static PROPAGATOR: LazyLock<TextMapCompositePropagator> = LazyLock::new(|| {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(opentelemetry_zipkin::Propagator::with_encoding(
            opentelemetry_zipkin::B3Encoding::SingleAndMultiHeader,
        )),
    ])
});

/// The remote parent carried by request headers (an empty context when there is none).
pub fn extract_context(headers: &http::HeaderMap) -> opentelemetry::Context {
    PROPAGATOR.extract(&HeaderExtractor(headers))
}

/// The trace id of `span` as 32 lowercase hex digits, falling back to the remote parent's when
/// no OpenTelemetry layer is installed. `None` when neither has one.
pub fn trace_id_of(span: &tracing::Span, remote: &opentelemetry::Context) -> Option<String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    [span.context(), remote.clone()].into_iter().find_map(|cx| {
        let span_context = cx.span().span_context().clone();
        span_context
            .is_valid()
            .then(|| span_context.trace_id().to_string())
    })
}

/// The W3C `traceparent` of `span` (or of the remote parent when no OpenTelemetry layer is
/// installed), for the events a request's writes record. `None` when neither has a trace.
pub fn trace_parent_of(span: &tracing::Span, remote: &opentelemetry::Context) -> Option<String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let context = [span.context(), remote.clone()]
        .into_iter()
        .find(|cx| cx.span().span_context().is_valid())?;
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.remove("traceparent")
}

/// The span id of `span` (16 hex digits), when it has one.
pub fn span_id_of(span: &tracing::Span) -> Option<String> {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let span_context = span.context().span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.span_id().to_string())
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// A `MakeWriter` that throws log lines away (tests that do not set `TEST_LOG`).
pub fn discard() -> impl for<'a> tracing_subscriber::fmt::MakeWriter<'a> + Send + Sync + 'static {
    || std::io::sink()
}

/// The default `LOG_QUEUE_LINES`: about 3 MiB of JSON lines.
pub const LOG_QUEUE_LINES: u32 = 8192;

static STDOUT_DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Stdout through its own writer thread and a queue of `queue_lines` lines. A reader that stalls
/// (a full pipe nobody drains, a stuck container runtime) then costs log lines, dropped and
/// counted ([`log_lines_dropped`]), instead of parking the threads that serve requests and
/// probes in `write`. Keep the guard until exit: dropping it flushes the queue, waiting about a
/// second at most (tracing-appender's bound), so a reader that never returns cannot hold up exit.
pub fn stdout(queue_lines: u32) -> (NonBlocking, WorkerGuard) {
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(queue_lines as usize)
        .lossy(true)
        .thread_name("log-writer")
        .finish(std::io::stdout());
    let _ = STDOUT_DROPPED.set(writer.error_counter());
    (writer, guard)
}

/// Log lines dropped so far because stdout did not keep up (0 before [`stdout`] is used).
pub fn log_lines_dropped() -> u64 {
    STDOUT_DROPPED
        .get()
        .map_or(0, |counter| counter.dropped_lines() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderMap, HeaderValue};

    fn trace_id(headers: &[(&'static str, &'static str)]) -> Option<String> {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, HeaderValue::from_static(value));
        }
        trace_id_of(&tracing::Span::none(), &extract_context(&map))
    }

    #[test]
    fn w3c_traceparent_is_continued() {
        let id = trace_id(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )]);
        assert_eq!(id.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    }

    #[test]
    fn b3_multi_headers_are_continued() {
        let id = trace_id(&[
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
            ("x-b3-sampled", "1"),
        ]);
        assert_eq!(id.as_deref(), Some("80f198ee56343ba864fe8b2a57d3eff7"));
    }

    #[test]
    fn b3_single_header_is_continued() {
        let id = trace_id(&[("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")]);
        assert_eq!(id.as_deref(), Some("80f198ee56343ba864fe8b2a57d3eff7"));
    }

    #[test]
    fn b3_wins_over_traceparent_when_both_are_present() {
        let id = trace_id(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("x-b3-traceid", "80f198ee56343ba864fe8b2a57d3eff7"),
            ("x-b3-spanid", "e457b5a2e4d86bd1"),
        ]);
        assert_eq!(id.as_deref(), Some("80f198ee56343ba864fe8b2a57d3eff7"));
    }

    #[test]
    fn malformed_b3_falls_back_to_traceparent() {
        let id = trace_id(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("b3", "garbage"),
        ]);
        assert_eq!(id.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    }

    #[test]
    fn no_headers_no_remote_trace() {
        assert_eq!(trace_id(&[]), None);
    }
}
