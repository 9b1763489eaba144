//! Configuration: one YAML file with pingora's `server` section and the gateway's own, then
//! flag/env overrides, validated once into [`GatewayConfig`]. Precedence: flag > env > file.
//!
//! - `schema` (pure): the file as written, each section with its defaults.
//! - `overrides` (pure): flags and environment over the file.
//! - `settings`, `filters` and `auth` (pure): sections checked into settings, each failure
//!   naming its key.
//! - `load` (I/O): reads the file, checks what needs the file system or pingora.

mod auth;
mod filters;
mod load;
mod overrides;
mod schema;
mod settings;

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

pub use self::{
    filters::{DEFAULT_FILTER_WORKERS, FilterRuntime, FilterSpec},
    overrides::Overrides,
    schema::{
        AuthRuleSection, AuthSection, ClaimSection, ConnectionsSection, CorsSection, DnsSection,
        FileConfig, FilterSection, GatewaySection, HealthSection, JsonSection, JsonStyle,
        JwksSection, LoadBalancingSection, OtlpSection, OutlierSection, RetrySection,
        ShutdownSection, TlsSection,
    },
};
use crate::{
    auth::policy::AuthSettings,
    balance::{HealthThresholds, OutlierSettings},
    conn_limits::ConnectionSettings,
    discovery::UpstreamTarget,
    telemetry::OtlpSettings,
    transcode::JsonOptions,
};

/// A configuration problem, naming the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Yaml(String),
    #[error("invalid config key `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// The validated configuration the gateway runs on.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub server: Option<String>,
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    /// `gateway.upstreams` and how they are found, checked, picked and retried.
    pub upstream: UpstreamSettings,
    pub descriptor_sets: Vec<PathBuf>,
    pub skip_builtin_descriptors: bool,
    /// REST JSON conventions (`gateway.json`).
    pub json: JsonOptions,
    pub max_body_bytes: usize,
    pub timeout: Duration,
    pub route_timeouts: BTreeMap<String, Duration>,
    pub h2_streams_per_connection: usize,
    /// `gateway.shutdown.drain_delay_ms`.
    pub drain_delay: Duration,
    pub connections: ConnectionSettings,
    pub cors_origins: Vec<String>,
    pub cors_allow_credentials: bool,
    pub cors_max_age: Duration,
    pub tls: Option<(SocketAddr, PathBuf, PathBuf)>,
    /// Span export; `None`: off.
    pub otlp: Option<OtlpSettings>,
    pub static_dir: Option<PathBuf>,
    pub filters: Vec<FilterSpec>,
    /// `gateway.auth`; `None`: no call needs a token.
    pub auth: Option<AuthSettings>,
}

/// What the upstream side (`crate::upstream`) runs on: the targets, their discovery, health
/// checks, picking and retries.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// `gateway.upstreams`.
    pub targets: Vec<UpstreamTarget>,
    pub dns: DnsSettings,
    /// `gateway.connect_timeout_ms`.
    pub connect_timeout: Duration,
    pub health_interval: Duration,
    pub health_timeout: Duration,
    pub health_service: String,
    pub health_thresholds: HealthThresholds,
    /// `gateway.load_balancing.panic_threshold_percent`.
    pub panic_threshold_percent: u8,
    pub outlier: OutlierSettings,
    pub retry_max_attempts: u32,
    pub retry_budget_ratio: f32,
    pub retry_min_per_second: u32,
    pub retry_budget_window: Duration,
}

/// `gateway.dns`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsSettings {
    /// Empty: the system's resolver configuration.
    pub nameservers: Vec<SocketAddr>,
    pub search: Option<Vec<String>>,
    pub ndots: Option<usize>,
    pub timeout: Duration,
    pub min_refresh: Duration,
    pub max_refresh: Duration,
}
impl GatewayConfig {
    /// Test and embedding helper: defaults with the given listener and upstreams.
    pub fn for_upstreams(listen: SocketAddr, upstreams: Vec<SocketAddr>) -> Self {
        let mut config = Self::from_file(FileConfig::default(), &Overrides::default())
            .expect("defaults are valid");
        config.listen = listen;
        config.metrics_listen = None;
        config.upstream.targets = upstreams.into_iter().map(UpstreamTarget::Address).collect();
        config
    }

    /// Timeout for a route label (`GET /v1/users/{id}`) or gRPC path.
    pub fn timeout_for(&self, route_label: Option<&str>, grpc_path: &str) -> Duration {
        route_label
            .and_then(|label| self.route_timeouts.get(label))
            .or_else(|| self.route_timeouts.get(grpc_path))
            .copied()
            .unwrap_or(self.timeout)
    }
}

#[cfg(test)]
mod tests;
