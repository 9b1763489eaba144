//! Prometheus metrics (default registry, served on the metrics port).

use std::sync::LazyLock;

use prometheus::{
    HistogramVec, IntCounterVec, IntGaugeVec, register_histogram_vec, register_int_counter_vec,
    register_int_gauge_vec,
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
        "Retries on UNAVAILABLE, and retries refused by the budget.",
        &["outcome"]
    )
    .expect("metric registered once")
});

/// The text exposition of the default registry.
pub fn render() -> Vec<u8> {
    use prometheus::Encoder;
    let mut out = Vec::new();
    // Encoding into a Vec cannot fail for well-formed metric families.
    let _ = prometheus::TextEncoder::new().encode(&prometheus::gather(), &mut out);
    out
}
