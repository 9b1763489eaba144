//! The upstream side. Every `upstreams` entry is an `IP:port` or a `host:port` whose A/AAAA
//! records are resolved again as their TTL runs out ([`crate::discovery`], [`crate::dns`]);
//! each address is an [`Endpoint`] with one lazily connected tonic `Channel` (HTTP/2, h2c,
//! multiplexed, reconnecting) for traffic and one for `grpc.health.v1` checks. Endpoints come
//! and go without a restart; a removed one is no longer picked, and calls under way keep its
//! channel until they finish (drained). Picking, health thresholds, passive ejection and panic
//! routing are [`crate::balance`]; retries spend tower's `TpsBudget`, except failovers of
//! attempts that provably sent nothing (connect failures), which are free for any method.
//!
//! pingora's `LoadBalancer` + `ServiceDiscovery` was the obvious seam but does not fit: its
//! discovery runs on one fixed `update_frequency` shared with the health checks (no per-name
//! TTL), new backends start healthy, and selection has no hook for ejection or panic routing.
//! The background work here still runs as a pingora background service.
//!
//! - `pool`: the endpoint set (an [`Endpoint`] per address, its channels and health) and
//!   picking from it.
//! - `call`: a call over the pool, with free failovers, retries and the deadline.
//! - `maintenance`: the background service (DNS refreshes, active health checks).
//! - `codec`: the raw-bytes codec the calls use.

mod call;
mod codec;
mod maintenance;
mod pool;

use std::time::Duration;

use bytes::Bytes;

pub use self::{
    call::{Upstreams, sent_nothing},
    codec::RawCodec,
    maintenance::UpstreamMaintenance,
    pool::{Endpoint, UpstreamPool},
};
use crate::{
    balance::{HealthThresholds, OutlierSettings},
    config::{DnsSettings, GatewayConfig},
    discovery::UpstreamTarget,
};

/// A call's outcome: response headers, messages, trailers.
pub type StreamingResponse = tonic::Response<tonic::Streaming<Bytes>>;

/// What the upstream side needs from the config.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub targets: Vec<UpstreamTarget>,
    pub dns: DnsSettings,
    pub connect_timeout: Duration,
    pub health_interval: Duration,
    pub health_timeout: Duration,
    pub health_service: String,
    pub health_thresholds: HealthThresholds,
    pub panic_threshold_percent: u8,
    pub outlier: OutlierSettings,
    pub retry_max_attempts: u32,
    pub retry_budget_ratio: f32,
    pub retry_min_per_second: u32,
    pub retry_budget_window: Duration,
}

impl UpstreamSettings {
    pub fn from_config(config: &GatewayConfig) -> Self {
        Self {
            targets: config.upstreams.clone(),
            dns: config.dns.clone(),
            connect_timeout: config.connect_timeout,
            health_interval: config.health_interval,
            health_timeout: config.health_timeout,
            health_service: config.health_service.clone(),
            health_thresholds: config.health_thresholds,
            panic_threshold_percent: config.panic_threshold_percent,
            outlier: config.outlier,
            retry_max_attempts: config.retry_max_attempts,
            retry_budget_ratio: config.retry_budget_ratio,
            retry_min_per_second: config.retry_min_per_second,
            retry_budget_window: config.retry_budget_window,
        }
    }
}

/// How an attempt on an endpoint went, for passive health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The endpoint answered (any status).
    Answered,
    /// Connect failure, reset, broken connection.
    TransportFailure,
}
