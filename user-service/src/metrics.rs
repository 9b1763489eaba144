//! Prometheus metrics and the `/metrics` HTTP endpoint (its own port, `METRICS_ADDR`), plus
//! `/livez`: the process alone, for the liveness probe of the worker (which serves no gRPC health).

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;

use crate::store::PoolStats;

/// Every metric the service exports, registered in its own registry (not the global one, so
/// several instances can live in one test process).
pub struct Metrics {
    registry: Registry,
    /// `grpc_server_handled_total{grpc_method, grpc_code}`
    pub grpc_handled: IntCounterVec,
    /// `grpc_server_handling_seconds{grpc_method}`
    pub grpc_latency: HistogramVec,
    /// `grpc_server_in_flight{grpc_method}`: calls being handled right now.
    pub grpc_in_flight: IntGaugeVec,
    /// `user_cache_requests_total{cache, result}`: result is hit, miss, error or bypass (the
    /// breaker is open, or this instance owes the cache an update for what was asked).
    pub cache_requests: IntCounterVec,
    /// `user_cache_errors_total{operation}`: timeouts and Redis errors (requests still succeed).
    pub cache_errors: IntCounterVec,
    /// `user_cache_skipped_total{operation}`: cache calls not made because the breaker is open.
    pub cache_skipped: IntCounterVec,
    /// `user_cache_breaker_state{state}`: 1 for the breaker's current state, 0 for the others.
    pub cache_breaker_state: IntGaugeVec,
    /// `user_cache_breaker_transitions_total{state}`: changes into each state.
    pub cache_breaker_transitions: IntCounterVec,
    /// `user_cache_repairs_total{result}`: failed cache updates retried until `done`, or
    /// `dropped` when too many were pending (left to the TTL).
    pub cache_repairs: IntCounterVec,
    /// `user_cache_repairs_pending`: users whose cache update is still being retried.
    pub cache_repairs_pending: IntGauge,
    /// `user_cache_shared_fills_total{cache}`: misses answered by another request's database
    /// read of the same key (single flight).
    pub cache_shared_fills: IntCounterVec,
    /// `db_query_duration_seconds{operation}`
    pub db_query_duration: HistogramVec,
    /// `db_ping_consecutive_failures`: failed health pings in a row (0 after a success).
    pub db_ping_consecutive_failures: IntGauge,
    /// `user_service_ready`: 1 while readiness is SERVING.
    pub ready: IntGauge,
    /// `db_pool_connections{state}`: idle, in_use, max. Refreshed on every scrape.
    pub db_pool_connections: IntGaugeVec,
    /// `user_outbox_backlog`: committed events not yet acknowledged by JetStream.
    pub outbox_backlog: IntGauge,
    /// `user_outbox_published_total`: events the relay got JetStream's acknowledgement for.
    pub outbox_published: prometheus::IntCounter,
    /// `user_outbox_relay_leader`: 1 while this instance's relay holds the publishing lease.
    pub outbox_relay_leader: IntGauge,
    /// `user_worker_events_total{result}`: applied, duplicate (redelivered, changed nothing) or
    /// invalid (undecodable, terminated).
    pub worker_events: IntCounterVec,
    /// `user_watchers_active`: `WatchUsers` streams open on this instance.
    pub watchers_active: IntGauge,
    /// `user_watchers_cut_off_total`: watchers ended because they fell too far behind.
    pub watchers_cut_off: prometheus::IntCounter,
    /// `user_service_log_lines_dropped_total`: log lines dropped because stdout did not keep up
    /// (the process's count, sampled per scrape).
    pub log_lines_dropped: prometheus::IntCounter,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.000_25, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let grpc_handled = IntCounterVec::new(
            Opts::new(
                "grpc_server_handled_total",
                "RPCs completed, by method and status code",
            ),
            &["grpc_method", "grpc_code"],
        )
        .expect("static metric definition");
        let grpc_latency = HistogramVec::new(
            HistogramOpts::new("grpc_server_handling_seconds", "RPC latency in the handler")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["grpc_method"],
        )
        .expect("static metric definition");
        let grpc_in_flight = IntGaugeVec::new(
            Opts::new("grpc_server_in_flight", "RPCs being handled right now"),
            &["grpc_method"],
        )
        .expect("static metric definition");
        let cache_requests = IntCounterVec::new(
            Opts::new(
                "user_cache_requests_total",
                "Cache lookups, by cache and result",
            ),
            &["cache", "result"],
        )
        .expect("static metric definition");
        let cache_errors = IntCounterVec::new(
            Opts::new(
                "user_cache_errors_total",
                "Cache operations that failed or timed out (served from the database instead)",
            ),
            &["operation"],
        )
        .expect("static metric definition");
        let counter = |name: &str, help: &str, label: &str| {
            IntCounterVec::new(Opts::new(name, help), &[label]).expect("static metric definition")
        };
        let cache_skipped = counter(
            "user_cache_skipped_total",
            "Cache calls not made because the circuit breaker is open",
            "operation",
        );
        let cache_breaker_state = IntGaugeVec::new(
            Opts::new(
                "user_cache_breaker_state",
                "Cache circuit breaker state (1 = current)",
            ),
            &["state"],
        )
        .expect("static metric definition");
        let cache_breaker_transitions = counter(
            "user_cache_breaker_transitions_total",
            "Cache circuit breaker changes into each state",
            "state",
        );
        let cache_repairs = counter(
            "user_cache_repairs_total",
            "Failed cache updates after a write, retried until done (or dropped when too many)",
            "result",
        );
        let cache_repairs_pending = IntGauge::new(
            "user_cache_repairs_pending",
            "Users whose cache update after a write is still being retried",
        )
        .expect("static metric definition");
        let cache_shared_fills = counter(
            "user_cache_shared_fills_total",
            "Cache misses answered by a concurrent request's database read of the same key",
            "cache",
        );
        let db_ping_consecutive_failures = IntGauge::new(
            "db_ping_consecutive_failures",
            "Failed database health pings in a row",
        )
        .expect("static metric definition");
        let ready = IntGauge::new(
            "user_service_ready",
            "1 while the readiness health service is SERVING",
        )
        .expect("static metric definition");
        let db_query_duration = HistogramVec::new(
            HistogramOpts::new("db_query_duration_seconds", "Database query latency")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["operation"],
        )
        .expect("static metric definition");
        let db_pool_connections = IntGaugeVec::new(
            Opts::new("db_pool_connections", "Database pool connections by state"),
            &["state"],
        )
        .expect("static metric definition");
        let outbox_backlog = IntGauge::new(
            "user_outbox_backlog",
            "Committed user events not yet acknowledged by JetStream",
        )
        .expect("static metric definition");
        let outbox_published = prometheus::IntCounter::new(
            "user_outbox_published_total",
            "User events published to JetStream and acknowledged",
        )
        .expect("static metric definition");
        let outbox_relay_leader = IntGauge::new(
            "user_outbox_relay_leader",
            "1 while this instance's outbox relay holds the publishing lease",
        )
        .expect("static metric definition");
        let worker_events = counter(
            "user_worker_events_total",
            "Events handled by the worker: applied, duplicate or invalid",
            "result",
        );
        let watchers_active = IntGauge::new(
            "user_watchers_active",
            "WatchUsers streams open on this instance",
        )
        .expect("static metric definition");
        let watchers_cut_off = prometheus::IntCounter::new(
            "user_watchers_cut_off_total",
            "WatchUsers streams ended because the watcher fell too far behind",
        )
        .expect("static metric definition");
        let log_lines_dropped = prometheus::IntCounter::new(
            "user_service_log_lines_dropped_total",
            "Log lines dropped because stdout did not keep up",
        )
        .expect("static metric definition");
        for collector in [
            Box::new(grpc_handled.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(grpc_latency.clone()),
            Box::new(grpc_in_flight.clone()),
            Box::new(cache_requests.clone()),
            Box::new(cache_errors.clone()),
            Box::new(cache_skipped.clone()),
            Box::new(cache_breaker_state.clone()),
            Box::new(cache_breaker_transitions.clone()),
            Box::new(cache_repairs.clone()),
            Box::new(cache_repairs_pending.clone()),
            Box::new(cache_shared_fills.clone()),
            Box::new(db_query_duration.clone()),
            Box::new(db_ping_consecutive_failures.clone()),
            Box::new(ready.clone()),
            Box::new(db_pool_connections.clone()),
            Box::new(outbox_backlog.clone()),
            Box::new(outbox_published.clone()),
            Box::new(outbox_relay_leader.clone()),
            Box::new(worker_events.clone()),
            Box::new(watchers_active.clone()),
            Box::new(watchers_cut_off.clone()),
            Box::new(log_lines_dropped.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Self {
            registry,
            grpc_handled,
            grpc_latency,
            grpc_in_flight,
            cache_requests,
            cache_errors,
            cache_skipped,
            cache_breaker_state,
            cache_breaker_transitions,
            cache_repairs,
            cache_repairs_pending,
            cache_shared_fills,
            db_query_duration,
            db_ping_consecutive_failures,
            ready,
            db_pool_connections,
            outbox_backlog,
            outbox_published,
            outbox_relay_leader,
            worker_events,
            watchers_active,
            watchers_cut_off,
            log_lines_dropped,
        }
    }

    /// Brings the counter up to the process's count of dropped log lines.
    pub fn record_log_lines_dropped(&self, total: u64) {
        let counted = self.log_lines_dropped.get();
        if total > counted {
            self.log_lines_dropped.inc_by(total - counted);
        }
    }

    pub fn record_pool(&self, stats: PoolStats) {
        let idle = i64::from(stats.idle);
        let in_use = i64::from(stats.size.saturating_sub(stats.idle));
        self.db_pool_connections
            .with_label_values(&["idle"])
            .set(idle);
        self.db_pool_connections
            .with_label_values(&["in_use"])
            .set(in_use);
        self.db_pool_connections
            .with_label_values(&["max"])
            .set(i64::from(stats.max));
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .expect("the registry only holds well-formed metric families")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Serves `GET /metrics` and `GET /livez` until `shutdown` completes. `pool_stats` is sampled per
/// scrape.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    pool_stats: impl Fn() -> PoolStats + Send + Sync + 'static,
    shutdown: impl Future<Output = ()>,
) {
    let pool_stats = Arc::new(pool_stats);
    let server = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "metrics listener accept failed");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let metrics = metrics.clone();
        let pool_stats = pool_stats.clone();
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let response = respond(&request, &metrics, &*pool_stats);
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = server
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "metrics connection ended");
            }
        });
    }
    graceful.shutdown().await;
}

fn respond(
    request: &Request<Incoming>,
    metrics: &Metrics,
    pool_stats: &dyn Fn() -> PoolStats,
) -> Response<Full<bytes::Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => {
            metrics.record_pool(pool_stats());
            metrics.record_log_lines_dropped(crate::telemetry::log_lines_dropped());
            (
                StatusCode::OK,
                "text/plain; version=0.0.4",
                metrics.render(),
            )
        }
        // Answered by the process itself, whatever its database or broker do: a liveness probe
        // must not restart pods for a dependency's outage.
        (&Method::GET, "/livez") => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        (_, "/metrics" | "/livez") => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "use GET\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found; try GET /metrics or GET /livez\n".to_owned(),
        ),
    };
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(bytes::Bytes::from(body)))
        .expect("static response parts are valid")
}
