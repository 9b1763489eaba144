//! Prometheus metrics, served on the metrics port. Every metric lives in the gateway's own
//! [`Registry`] (as the user-service's do), not prometheus' global one: two gateways in one
//! process (the tests) have separate series, so a test can check values, not just names.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder, core::Collector,
};

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Every metric one gateway exports, registered in its own registry.
pub struct Metrics {
    registry: Registry,
    /// `meshgate_gateway_requests_total{route, protocol, status}`
    pub requests: IntCounterVec,
    /// `meshgate_gateway_request_duration_seconds{route, protocol}`
    pub latency: HistogramVec,
    /// `meshgate_gateway_upstream_healthy{upstream}`: 1 while the endpoint passes its checks.
    pub upstream_healthy: IntGaugeVec,
    /// `meshgate_gateway_retries_total{outcome}`: retried, budget_exhausted, connect_failover.
    pub retries: IntCounterVec,
    /// `meshgate_gateway_upstream_endpoints`
    pub upstream_endpoints: IntGauge,
    /// `meshgate_gateway_dns_lookups_total{target, outcome}`
    pub dns_lookups: IntCounterVec,
    /// `meshgate_gateway_outlier_ejections_total{upstream}`
    pub outlier_ejections: IntCounterVec,
    /// `meshgate_gateway_panic_routed_total`
    pub panic_routed: IntCounter,
    /// `meshgate_gateway_connections`: open downstream connections.
    pub connections: IntGauge,
    /// `meshgate_gateway_connections_refused_total{reason}`
    pub connections_refused: IntCounterVec,
    /// `meshgate_gateway_header_timeouts_total`
    pub header_timeouts: IntCounter,
    /// `meshgate_gateway_draining`: 1 once SIGTERM started the drain.
    pub draining: IntGauge,
    /// `meshgate_gateway_auth_decisions_total{outcome}`: calls a `gateway.auth` rule covers.
    pub auth_decisions: IntCounterVec,
    /// `meshgate_gateway_jwks_refresh_failures_total`
    pub jwks_refresh_failures: IntCounter,
    /// `meshgate_gateway_jwks_keys`: usable keys in the current set.
    pub jwks_keys: IntGauge,
}

impl Metrics {
    /// The gateway's metrics; `name_targets` are the upstream names (`host:port`) whose lookup
    /// series exist from the start, as every other unlabelled or closed-set series does
    /// (scrapes and alerts see 0, not nothing).
    pub fn new(name_targets: &[String]) -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(name, help), labels).expect("static metric definition")
        };
        let gauge =
            |name: &str, help: &str| IntGauge::new(name, help).expect("static metric definition");
        let metrics = Self {
            registry: Registry::new(),
            requests: counter(
                "meshgate_gateway_requests_total",
                "Requests by route, protocol and HTTP status.",
                &["route", "protocol", "status"],
            ),
            latency: HistogramVec::new(
                HistogramOpts::new(
                    "meshgate_gateway_request_duration_seconds",
                    "Request latency by route and protocol.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["route", "protocol"],
            )
            .expect("static metric definition"),
            upstream_healthy: IntGaugeVec::new(
                Opts::new(
                    "meshgate_gateway_upstream_healthy",
                    "1 if the upstream passes grpc.health.v1 checks.",
                ),
                &["upstream"],
            )
            .expect("static metric definition"),
            retries: counter(
                "meshgate_gateway_retries_total",
                "Retries on UNAVAILABLE, retries refused by the budget, and free failovers of \
                 attempts that sent nothing (connect failures).",
                &["outcome"],
            ),
            upstream_endpoints: gauge(
                "meshgate_gateway_upstream_endpoints",
                "Upstream endpoints currently known (resolved addresses and configured IPs).",
            ),
            dns_lookups: counter(
                "meshgate_gateway_dns_lookups_total",
                "Lookups of upstream names; a failed one keeps the last good endpoint set.",
                &["target", "outcome"],
            ),
            outlier_ejections: counter(
                "meshgate_gateway_outlier_ejections_total",
                "Endpoints ejected after consecutive connect failures or resets.",
                &["upstream"],
            ),
            panic_routed: IntCounter::new(
                "meshgate_gateway_panic_routed_total",
                "Requests sent to an unavailable endpoint because too few were available (panic \
                 threshold).",
            )
            .expect("static metric definition"),
            connections: gauge(
                "meshgate_gateway_connections",
                "Open downstream connections.",
            ),
            connections_refused: counter(
                "meshgate_gateway_connections_refused_total",
                "Downstream connections refused at a connection cap.",
                &["reason"],
            ),
            header_timeouts: IntCounter::new(
                "meshgate_gateway_header_timeouts_total",
                "Downstream connections closed for not delivering a request header in time.",
            )
            .expect("static metric definition"),
            draining: gauge(
                "meshgate_gateway_draining",
                "1 once SIGTERM started the drain (/readyz answers 503).",
            ),
            auth_decisions: counter(
                "meshgate_gateway_auth_decisions_total",
                "Calls a gateway.auth rule covers, by outcome: allowed, forbidden (a claim \
                 requirement failed, 403) or why the token was refused (401).",
                &["outcome"],
            ),
            jwks_refresh_failures: IntCounter::new(
                "meshgate_gateway_jwks_refresh_failures_total",
                "JWKS fetches (or file reads) that failed or gave no usable key; the last good \
                 keys stay in use.",
            )
            .expect("static metric definition"),
            jwks_keys: gauge(
                "meshgate_gateway_jwks_keys",
                "Usable RS256/ES256 keys in the current JWKS (0 without gateway.auth).",
            ),
        };
        for collector in [
            Box::new(metrics.requests.clone()) as Box<dyn Collector>,
            Box::new(metrics.latency.clone()),
            Box::new(metrics.upstream_healthy.clone()),
            Box::new(metrics.retries.clone()),
            Box::new(metrics.upstream_endpoints.clone()),
            Box::new(metrics.dns_lookups.clone()),
            Box::new(metrics.outlier_ejections.clone()),
            Box::new(metrics.panic_routed.clone()),
            Box::new(metrics.connections.clone()),
            Box::new(metrics.connections_refused.clone()),
            Box::new(metrics.header_timeouts.clone()),
            Box::new(metrics.draining.clone()),
            Box::new(metrics.auth_decisions.clone()),
            Box::new(metrics.jwks_refresh_failures.clone()),
            Box::new(metrics.jwks_keys.clone()),
        ] {
            metrics.register(collector);
        }
        for outcome in crate::auth::policy::AuthFailure::OUTCOMES {
            metrics.auth_decisions.with_label_values(&[outcome]);
        }
        for reason in ["max_connections", "max_per_client_ip"] {
            metrics.connections_refused.with_label_values(&[reason]);
        }
        for target in name_targets {
            for outcome in ["resolved", "failed"] {
                metrics
                    .dns_lookups
                    .with_label_values(&[target.as_str(), outcome]);
            }
        }
        metrics
    }

    /// Adds a collector of the gateway's (the filters' counters) to what `/metrics` serves.
    pub fn register(&self, collector: Box<dyn Collector>) {
        if let Err(error) = self.registry.register(collector) {
            // Only a name clash: the series already served win.
            tracing::warn!(%error, "metric collector not registered");
        }
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
        Self::new(&[])
    }
}
