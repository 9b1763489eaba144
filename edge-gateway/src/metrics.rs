//! Prometheus metrics (default registry, served on the metrics port).

use std::sync::LazyLock;

use prometheus::{
    HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, register_histogram_vec,
    register_int_counter, register_int_counter_vec, register_int_gauge, register_int_gauge_vec,
};

pub static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "meshgate_gateway_requests_total",
        "Requests by route, protocol and HTTP status.",
        &["route", "protocol", "status"]
    )
    .expect("metric registered once")
});

pub static LATENCY: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "meshgate_gateway_request_duration_seconds",
        "Request latency by route and protocol.",
        &["route", "protocol"],
        vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
        ]
    )
    .expect("metric registered once")
});

pub static UPSTREAM_HEALTHY: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "meshgate_gateway_upstream_healthy",
        "1 if the upstream passes grpc.health.v1 checks.",
        &["upstream"]
    )
    .expect("metric registered once")
});

pub static RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "meshgate_gateway_retries_total",
        "Retries on UNAVAILABLE, retries refused by the budget, and free failovers of attempts \
         that sent nothing (connect failures).",
        &["outcome"]
    )
    .expect("metric registered once")
});

pub static UPSTREAM_ENDPOINTS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "meshgate_gateway_upstream_endpoints",
        "Upstream endpoints currently known (resolved addresses and configured IPs)."
    )
    .expect("metric registered once")
});

pub static DNS_LOOKUPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "meshgate_gateway_dns_lookups_total",
        "Lookups of upstream names; a failed one keeps the last good endpoint set.",
        &["target", "outcome"]
    )
    .expect("metric registered once")
});

pub static OUTLIER_EJECTIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "meshgate_gateway_outlier_ejections_total",
        "Endpoints ejected after consecutive connect failures or resets.",
        &["upstream"]
    )
    .expect("metric registered once")
});

pub static PANIC_ROUTED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "meshgate_gateway_panic_routed_total",
        "Requests sent to an unavailable endpoint because too few were available (panic threshold)."
    )
    .expect("metric registered once")
});

pub static CONNECTIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "meshgate_gateway_connections",
        "Open downstream connections."
    )
    .expect("metric registered once")
});

pub static CONNECTIONS_REFUSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "meshgate_gateway_connections_refused_total",
        "Downstream connections refused at a connection cap.",
        &["reason"]
    )
    .expect("metric registered once")
});

pub static CONNECTIONS_TIMED_OUT: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "meshgate_gateway_header_timeouts_total",
        "Downstream connections closed for not delivering a request header in time."
    )
    .expect("metric registered once")
});

pub static DRAINING: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "meshgate_gateway_draining",
        "1 once SIGTERM started the drain (/readyz answers 503)."
    )
    .expect("metric registered once")
});

/// Registers the series that exist from the start (scrapes and alerts see 0, not nothing).
pub fn init(name_targets: &[String]) {
    LazyLock::force(&UPSTREAM_ENDPOINTS);
    LazyLock::force(&PANIC_ROUTED);
    LazyLock::force(&CONNECTIONS);
    LazyLock::force(&CONNECTIONS_TIMED_OUT);
    LazyLock::force(&DRAINING);
    for reason in ["max_connections", "max_per_client_ip"] {
        CONNECTIONS_REFUSED.with_label_values(&[reason]);
    }
    for target in name_targets {
        for outcome in ["resolved", "failed"] {
            DNS_LOOKUPS.with_label_values(&[target.as_str(), outcome]);
        }
    }
}

/// The text exposition of the default registry.
pub fn render() -> Vec<u8> {
    use prometheus::Encoder;
    let mut out = Vec::new();
    // Encoding into a Vec cannot fail for well-formed metric families.
    let _ = prometheus::TextEncoder::new().encode(&prometheus::gather(), &mut out);
    out
}
