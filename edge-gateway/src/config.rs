//! Configuration: one YAML file with pingora's `server` section and the gateway's own, then
//! flag/env overrides, validated once into [`GatewayConfig`]. Precedence: flag > env > file.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use meshgate_filter_host::{BuiltIn, FailStrategy};
use serde::Deserialize;

use crate::{
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

/// The file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// pingora's ServerConf (threads, pid_file, upgrade_sock, grace periods, ...).
    #[serde(default)]
    pub server: Option<serde_norway::Value>,
    #[serde(default)]
    pub gateway: GatewaySection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySection {
    pub listen: String,
    pub metrics_listen: String,
    pub upstreams: Vec<String>,
    /// Extra encoded FileDescriptorSets (with google.api.http options) to route.
    pub descriptor_sets: Vec<PathBuf>,
    /// Leave out the built-in meshgate contract.
    pub skip_builtin_descriptors: bool,
    pub json: JsonSection,
    pub max_body_bytes: usize,
    pub timeout_ms: u64,
    /// Per-route timeouts, keyed by `METHOD /template` or a gRPC method `/pkg.Service/Method`.
    pub route_timeouts_ms: BTreeMap<String, u64>,
    pub connect_timeout_ms: u64,
    /// Concurrent h2 streams per upstream connection for gRPC pass-through (pingora's default is 1).
    pub h2_streams_per_connection: usize,
    pub health_check: HealthSection,
    /// How upstream host names are resolved (`upstreams` entries that are not `IP:port`).
    pub dns: DnsSection,
    pub load_balancing: LoadBalancingSection,
    pub outlier_detection: OutlierSection,
    pub retry: RetrySection,
    pub shutdown: ShutdownSection,
    /// Downstream connection limits (slow, idle and too many clients).
    pub connections: ConnectionsSection,
    pub cors: CorsSection,
    pub tls: Option<TlsSection>,
    /// OTLP span export (off unless an endpoint is set here or in OTEL_EXPORTER_OTLP_ENDPOINT).
    pub otlp: OtlpSection,
    /// Static files (the built web page) served at `/` for GET/HEAD paths no API route claims.
    pub static_dir: Option<PathBuf>,
    /// Filters (istio-filters built-ins natively, or proxy-wasm modules), run in this order on
    /// every API request.
    pub filters: Vec<FilterSection>,
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            metrics_listen: "0.0.0.0:9091".into(),
            upstreams: vec!["127.0.0.1:50051".into()],
            descriptor_sets: Vec::new(),
            skip_builtin_descriptors: false,
            json: JsonSection::default(),
            max_body_bytes: 1024 * 1024,
            timeout_ms: 10_000,
            route_timeouts_ms: BTreeMap::new(),
            connect_timeout_ms: 1_000,
            h2_streams_per_connection: 128,
            health_check: HealthSection::default(),
            dns: DnsSection::default(),
            load_balancing: LoadBalancingSection::default(),
            outlier_detection: OutlierSection::default(),
            retry: RetrySection::default(),
            shutdown: ShutdownSection::default(),
            connections: ConnectionsSection::default(),
            cors: CorsSection::default(),
            tls: None,
            otlp: OtlpSection::default(),
            static_dir: None,
            filters: Vec::new(),
        }
    }
}

/// REST JSON conventions: `style` picks a preset, each key below overrides it.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JsonSection {
    pub style: JsonStyle,
    /// `created_at` instead of `createdAt`.
    pub use_proto_field_names: Option<bool>,
    /// Fields holding their default value are written.
    pub emit_defaults: Option<bool>,
    /// 64-bit integers as JSON numbers up to ±(2^53 − 1), strings beyond.
    pub int64_as_number: Option<bool>,
    /// Unknown request fields and query parameters are ignored instead of refused.
    pub ignore_unknown_fields: Option<bool>,
    /// Error bodies add `detail`; request-validation failures are 422 with an item list.
    pub error_detail: Option<bool>,
}

/// The two REST JSON presets.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JsonStyle {
    /// grpc-gateway / AIP: lowerCamelCase names, 64-bit integers as strings, unknown fields
    /// refused, errors as google.rpc.Status, validation failures 400.
    #[default]
    GrpcGateway,
    /// The replaced FastAPI facade: proto (snake_case) names, 64-bit integers as numbers,
    /// unknown fields ignored, errors with `detail`, validation failures 422.
    Fastapi,
}

impl JsonSection {
    fn options(&self) -> JsonOptions {
        let fastapi = self.style == JsonStyle::Fastapi;
        JsonOptions {
            use_proto_field_names: self.use_proto_field_names.unwrap_or(fastapi),
            emit_defaults: self.emit_defaults.unwrap_or(true),
            int64_as_number: self.int64_as_number.unwrap_or(fastapi),
            ignore_unknown_fields: self.ignore_unknown_fields.unwrap_or(fastapi),
            error_detail: self.error_detail.unwrap_or(fastapi),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthSection {
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// The service name asked about in grpc.health.v1 (empty: the whole server).
    pub service: String,
    /// Consecutive failed checks before an endpoint leaves the rotation.
    pub unhealthy_threshold: u32,
    /// Consecutive passed checks before it returns.
    pub healthy_threshold: u32,
}

impl Default for HealthSection {
    fn default() -> Self {
        Self {
            interval_ms: 1_000,
            timeout_ms: 500,
            service: String::new(),
            unhealthy_threshold: 3,
            healthy_threshold: 2,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSection {
    /// `IP:port` of the DNS servers to ask; empty: the system's (`/etc/resolv.conf`).
    pub nameservers: Vec<String>,
    /// Search domains; unset: the system's (`search` in `/etc/resolv.conf`).
    pub search: Option<Vec<String>>,
    /// `ndots`; unset: the system's (Kubernetes sets 5).
    pub ndots: Option<usize>,
    /// Per-query timeout.
    pub timeout_ms: u64,
    /// A name is re-resolved when its records' TTL runs out, but never sooner than this ...
    pub min_refresh_ms: u64,
    /// ... and never later than this.
    pub max_refresh_ms: u64,
}

impl Default for DnsSection {
    fn default() -> Self {
        Self {
            nameservers: Vec::new(),
            search: None,
            ndots: None,
            timeout_ms: 2_000,
            min_refresh_ms: 1_000,
            max_refresh_ms: 30_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoadBalancingSection {
    /// Below this percentage of available endpoints (healthy and not ejected), requests go to
    /// every endpoint instead (Envoy's panic threshold); 0 turns panic routing off.
    pub panic_threshold_percent: u8,
}

impl Default for LoadBalancingSection {
    fn default() -> Self {
        Self {
            panic_threshold_percent: 50,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutlierSection {
    /// Consecutive connect failures / resets that eject an endpoint; 0: no passive ejection.
    pub consecutive_failures: u32,
    /// The first ejection lasts this long; the n-th, n times as long ...
    pub base_ejection_ms: u64,
    /// ... up to this.
    pub max_ejection_ms: u64,
}

impl Default for OutlierSection {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            base_ejection_ms: 5_000,
            max_ejection_ms: 60_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSection {
    /// After SIGTERM, `/readyz` answers 503 and the gateway keeps serving this long before it
    /// stops accepting; in-flight requests then get `server.grace_period_seconds` to finish.
    pub drain_delay_ms: u64,
}

impl Default for ShutdownSection {
    fn default() -> Self {
        Self {
            drain_delay_ms: 5_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionsSection {
    /// A connection must deliver a complete request header this soon after it opens, or after
    /// its previous request ended plus `idle_timeout_ms` (slowloris).
    pub header_read_timeout_ms: u64,
    /// HTTP/1.1 keep-alive and HTTP/2 connections with no request in progress are closed after this.
    pub idle_timeout_ms: u64,
    /// Open downstream connections; more are answered 503 and closed. Also capped below the
    /// process's open-file limit, so upstream connections always find a descriptor.
    pub max: usize,
    /// Open connections per client IP; 0: no per-client cap.
    pub max_per_client_ip: usize,
}

impl Default for ConnectionsSection {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            max: 4_096,
            max_per_client_ip: 0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetrySection {
    /// Attempts for GET routes answered UNAVAILABLE, first try included.
    pub max_attempts: u32,
    /// Retries allowed as a fraction of requests ...
    pub budget_ratio: f32,
    /// ... plus this many retries per second regardless of traffic.
    pub min_retries_per_second: u32,
    /// How long a request counts towards the budget (1-60 s).
    pub budget_window_secs: u64,
}

impl Default for RetrySection {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            budget_ratio: 0.2,
            min_retries_per_second: 10,
            budget_window_secs: 10,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsSection {
    /// Exact origins, or `*` for any.
    pub allowed_origins: Vec<String>,
    pub allow_credentials: bool,
    pub max_age_secs: u64,
}

impl Default for CorsSection {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            allow_credentials: false,
            max_age_secs: 600,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub listen: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpSection {
    /// OTLP/gRPC collector, `http://host:4317`; empty: no export.
    pub endpoint: String,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

impl Default for OtlpSection {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            service_name: "edge-gateway".into(),
        }
    }
}

/// One filter: a built-in istio-filters filter (run natively by default) or a proxy-wasm
/// module, with the same pluginConfig its WasmPlugin carries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterSection {
    pub name: String,
    /// A filter of istio-filters: `span-enrichment`, `rate-limit`, `cache-headers` or `bundle`
    /// (the three in one stream context).
    #[serde(default)]
    pub builtin: Option<String>,
    /// `native` (the default with `builtin`: the filter's own code, no VM) or `wasm` (the
    /// default with only `module`: any proxy-wasm module, ours included).
    #[serde(default)]
    pub runtime: Option<String>,
    /// Path to the `.wasm` (runtime `wasm`); a relative path is taken from the config file's
    /// directory. Ignored by runtime `native`, so one key flips a built-in between the two.
    #[serde(default)]
    pub module: Option<PathBuf>,
    /// The WasmPlugin's `pluginConfig` object (YAML or JSON syntax); handed over as JSON.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    /// Workers running the filter (Envoy's worker threads: a VM each with `wasm`, a configured
    /// root each with `native`); shared data is shared between them.
    #[serde(default)]
    pub workers: Option<usize>,
    /// The WasmPlugin's `failStrategy` when the filter traps or panics mid-request:
    /// `FAIL_CLOSE` (Istio's default: 503 / `UNAVAILABLE`) or `FAIL_OPEN` (the request passes).
    #[serde(default, rename = "failStrategy")]
    pub fail_strategy: Option<String>,
}

/// What runs a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterRuntime {
    /// A built-in filter, natively (Envoy's null VM).
    Native(BuiltIn),
    /// A proxy-wasm module on wasmtime.
    Wasm { module: PathBuf },
}

/// A validated [`FilterSection`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterSpec {
    pub name: String,
    pub runtime: FilterRuntime,
    pub config_json: String,
    pub workers: usize,
    pub fail_strategy: FailStrategy,
}

/// Workers per filter when `workers` is not set: enough that the gateway's threads rarely wait.
pub const DEFAULT_FILTER_WORKERS: usize = 4;
const MAX_FILTER_WORKERS: usize = 64;

fn builtin_names() -> String {
    BuiltIn::ALL.map(BuiltIn::name).join(", ")
}

fn filter_runtime(
    section: &FilterSection,
    key: &dyn Fn(&str) -> String,
) -> Result<FilterRuntime, ConfigError> {
    let builtin = match section.builtin.as_deref() {
        None => None,
        Some(name) => Some(BuiltIn::from_name(name).ok_or_else(|| {
            invalid(
                &key("builtin"),
                format!("{name:?} is not a built-in filter ({})", builtin_names()),
            )
        })?),
    };
    let native = match section.runtime.as_deref() {
        None => builtin.is_some(),
        Some("native") => true,
        Some("wasm") => false,
        Some(other) => {
            return Err(invalid(
                &key("runtime"),
                format!("{other:?} must be native or wasm"),
            ));
        }
    };
    if native {
        let builtin = builtin.ok_or_else(|| {
            invalid(
                &key("builtin"),
                format!(
                    "runtime native runs a built-in filter: set builtin ({})",
                    builtin_names()
                ),
            )
        })?;
        return Ok(FilterRuntime::Native(builtin));
    }
    match &section.module {
        Some(module) if !module.as_os_str().is_empty() => Ok(FilterRuntime::Wasm {
            module: module.clone(),
        }),
        _ => Err(invalid(
            &key("module"),
            "runtime wasm needs a path to a .wasm module",
        )),
    }
}

fn filter_specs(sections: Vec<FilterSection>) -> Result<Vec<FilterSpec>, ConfigError> {
    let mut specs: Vec<FilterSpec> = Vec::with_capacity(sections.len());
    for (index, section) in sections.into_iter().enumerate() {
        let key = |field: &str| format!("gateway.filters[{index}].{field}");
        let name_ok = !section.name.is_empty()
            && section
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            return Err(invalid(
                &key("name"),
                format!("{:?} must be non-empty [A-Za-z0-9_-]", section.name),
            ));
        }
        if specs.iter().any(|spec| spec.name == section.name) {
            return Err(invalid(
                &key("name"),
                format!("{:?} is used by an earlier filter", section.name),
            ));
        }
        let runtime = filter_runtime(&section, &key)?;
        let config_json = match section.config {
            None => "{}".to_owned(),
            Some(value @ serde_json::Value::Object(_)) => value.to_string(),
            Some(other) => {
                return Err(invalid(
                    &key("config"),
                    format!("must be an object (the WasmPlugin pluginConfig), not {other}"),
                ));
            }
        };
        let workers = section.workers.unwrap_or(DEFAULT_FILTER_WORKERS);
        if !(1..=MAX_FILTER_WORKERS).contains(&workers) {
            return Err(invalid(
                &key("workers"),
                format!("must be between 1 and {MAX_FILTER_WORKERS}"),
            ));
        }
        let fail_strategy = match section.fail_strategy.as_deref() {
            None => FailStrategy::default(),
            Some(name) => FailStrategy::from_name(name).ok_or_else(|| {
                invalid(
                    &key("failStrategy"),
                    format!("{name:?} must be FAIL_CLOSE or FAIL_OPEN"),
                )
            })?,
        };
        specs.push(FilterSpec {
            name: section.name,
            runtime,
            config_json,
            workers,
            fail_strategy,
        });
    }
    Ok(specs)
}

fn at_least_one(key: &str, value: u32) -> Result<u32, ConfigError> {
    if value == 0 {
        Err(invalid(key, "must be at least 1"))
    } else {
        Ok(value)
    }
}

fn millis(key: &str, value: u64) -> Result<Duration, ConfigError> {
    if value == 0 {
        Err(invalid(key, "must be greater than 0"))
    } else {
        Ok(Duration::from_millis(value))
    }
}

fn dns_settings(section: DnsSection) -> Result<DnsSettings, ConfigError> {
    let nameservers = section
        .nameservers
        .iter()
        .enumerate()
        .map(|(i, value)| {
            value.trim().parse::<SocketAddr>().map_err(|_| {
                invalid(
                    &format!("gateway.dns.nameservers[{i}]"),
                    format!(
                        "{value:?} is not an IP:port address (also --dns-nameserver / \
                         GATEWAY_DNS_NAMESERVERS)"
                    ),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(search) = &section.search {
        for (i, domain) in search.iter().enumerate() {
            let probe = format!("{}:1", domain.trim_end_matches('.'));
            if !matches!(
                UpstreamTarget::parse(&probe),
                Ok(UpstreamTarget::Name { .. })
            ) {
                return Err(invalid(
                    &format!("gateway.dns.search[{i}]"),
                    format!("{domain:?} is not a DNS domain"),
                ));
            }
        }
    }
    if let Some(ndots) = section.ndots
        && ndots > 15
    {
        return Err(invalid("gateway.dns.ndots", "must be at most 15"));
    }
    let min_refresh = millis("gateway.dns.min_refresh_ms", section.min_refresh_ms)?;
    let max_refresh = millis("gateway.dns.max_refresh_ms", section.max_refresh_ms)?;
    if max_refresh < min_refresh {
        return Err(invalid(
            "gateway.dns.max_refresh_ms",
            "must not be below gateway.dns.min_refresh_ms",
        ));
    }
    Ok(DnsSettings {
        nameservers,
        search: section.search,
        ndots: section.ndots,
        timeout: millis("gateway.dns.timeout_ms", section.timeout_ms)?,
        min_refresh,
        max_refresh,
    })
}

fn outlier_settings(section: &OutlierSection) -> Result<OutlierSettings, ConfigError> {
    let base_ejection = millis(
        "gateway.outlier_detection.base_ejection_ms",
        section.base_ejection_ms,
    )?;
    let max_ejection = millis(
        "gateway.outlier_detection.max_ejection_ms",
        section.max_ejection_ms,
    )?;
    if max_ejection < base_ejection {
        return Err(invalid(
            "gateway.outlier_detection.max_ejection_ms",
            "must not be below gateway.outlier_detection.base_ejection_ms",
        ));
    }
    Ok(OutlierSettings {
        consecutive_failures: section.consecutive_failures,
        base_ejection,
        max_ejection,
    })
}

fn connection_settings(section: &ConnectionsSection) -> Result<ConnectionSettings, ConfigError> {
    if section.max == 0 {
        return Err(invalid("gateway.connections.max", "must be at least 1"));
    }
    if section.max_per_client_ip > section.max {
        return Err(invalid(
            "gateway.connections.max_per_client_ip",
            "must not exceed gateway.connections.max (0 turns the per-client cap off)",
        ));
    }
    let idle_timeout = millis(
        "gateway.connections.idle_timeout_ms",
        section.idle_timeout_ms,
    )?;
    if idle_timeout < Duration::from_secs(1) {
        // pingora's HTTP/1.1 keep-alive timeout has whole seconds.
        return Err(invalid(
            "gateway.connections.idle_timeout_ms",
            "must be at least 1000",
        ));
    }
    Ok(ConnectionSettings {
        header_read_timeout: millis(
            "gateway.connections.header_read_timeout_ms",
            section.header_read_timeout_ms,
        )?,
        idle_timeout,
        max: section.max,
        max_per_client_ip: section.max_per_client_ip,
    })
}

fn otlp_settings(section: OtlpSection) -> Result<Option<OtlpSettings>, ConfigError> {
    let endpoint = section.endpoint.trim();
    if endpoint.is_empty() {
        return Ok(None);
    }
    const KEY: &str = "gateway.otlp.endpoint";
    let uri: http::Uri = endpoint.parse().map_err(|e| {
        invalid(
            KEY,
            format!("{endpoint:?} is not a URL (also OTEL_EXPORTER_OTLP_ENDPOINT): {e}"),
        )
    })?;
    if uri.scheme_str() != Some("http") || uri.authority().is_none() {
        return Err(invalid(
            KEY,
            format!(
                "{endpoint:?} must be http://host:port (OTLP/gRPC in plaintext, e.g. to a \
                 collector agent next to the gateway; also OTEL_EXPORTER_OTLP_ENDPOINT)"
            ),
        ));
    }
    let service_name = section.service_name.trim();
    if service_name.is_empty() {
        return Err(invalid(
            "gateway.otlp.service_name",
            "must not be empty (also OTEL_SERVICE_NAME)",
        ));
    }
    Ok(Some(OtlpSettings {
        endpoint: endpoint.to_owned(),
        service_name: service_name.to_owned(),
    }))
}

/// The certificate and key are loaded and checked now, so a bad file is a config error.
#[cfg(feature = "rustls")]
fn check_tls(cert: &std::path::Path, key: &std::path::Path) -> Result<(), ConfigError> {
    crate::tls::load_certified_key(cert, key)
        .map(drop)
        .map_err(|e| invalid(e.key, e.reason))
}

#[cfg(not(feature = "rustls"))]
fn check_tls(_cert: &std::path::Path, _key: &std::path::Path) -> Result<(), ConfigError> {
    Err(invalid(
        "gateway.tls",
        "this edge-gateway was built without TLS (cargo feature `rustls`)",
    ))
}

/// Overrides from flags and environment (clap fills both).
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// Main listener (REST, gRPC-web, gRPC).
    #[arg(long, env = "GATEWAY_LISTEN")]
    pub listen: Option<String>,
    /// Metrics listener.
    #[arg(long, env = "GATEWAY_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Upstream gRPC services, comma-separated `host:port` (resolved, every A/AAAA record an
    /// endpoint) or `IP:port`.
    #[arg(long = "upstream", env = "GATEWAY_UPSTREAMS", value_delimiter = ',')]
    pub upstreams: Vec<String>,
    /// DNS servers (`IP:port`, comma-separated) for upstream names; default: /etc/resolv.conf.
    #[arg(
        long = "dns-nameserver",
        env = "GATEWAY_DNS_NAMESERVERS",
        value_delimiter = ','
    )]
    pub dns_nameservers: Vec<String>,
    /// CORS allowed origins, comma-separated.
    #[arg(
        long = "cors-origin",
        env = "GATEWAY_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// Directory served at `/` for paths no API route claims (the built web page).
    #[arg(long, env = "GATEWAY_STATIC_DIR")]
    pub static_dir: Option<PathBuf>,
    /// OTLP/gRPC endpoint for the gateway's spans (http://collector:4317); empty: no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// service.name of the exported spans.
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    pub service_name: Option<String>,
}

/// The validated configuration the gateway runs on.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub server: Option<String>,
    pub listen: SocketAddr,
    pub metrics_listen: Option<SocketAddr>,
    pub upstreams: Vec<UpstreamTarget>,
    pub dns: DnsSettings,
    pub descriptor_sets: Vec<PathBuf>,
    pub skip_builtin_descriptors: bool,
    /// REST JSON conventions (`gateway.json`).
    pub json: JsonOptions,
    pub max_body_bytes: usize,
    pub timeout: Duration,
    pub route_timeouts: BTreeMap<String, Duration>,
    pub connect_timeout: Duration,
    pub h2_streams_per_connection: usize,
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

/// Longest accepted `drain_delay_ms`: beyond it a rolling update would stall.
const MAX_DRAIN_DELAY_MS: u64 = 300_000;

impl GatewayConfig {
    /// Reads the file (if any), applies overrides, validates.
    pub fn load(
        path: Option<&std::path::Path>,
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let file = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Self::parse_file(&text)?
            }
            None => FileConfig::default(),
        };
        let mut config = Self::from_file(file, overrides)?;
        if let Some(dir) = path.and_then(std::path::Path::parent) {
            for filter in &mut config.filters {
                if let FilterRuntime::Wasm { module } = &mut filter.runtime
                    && module.is_relative()
                {
                    *module = dir.join(&*module);
                }
            }
        }
        Ok(config)
    }

    pub fn parse_file(text: &str) -> Result<FileConfig, ConfigError> {
        serde_norway::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))
    }

    pub fn from_file(file: FileConfig, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut gateway = file.gateway;
        if let Some(listen) = &overrides.listen {
            gateway.listen = listen.clone();
        }
        if let Some(listen) = &overrides.metrics_listen {
            gateway.metrics_listen = listen.clone();
        }
        if !overrides.upstreams.is_empty() {
            gateway.upstreams = overrides.upstreams.clone();
        }
        if !overrides.dns_nameservers.is_empty() {
            gateway.dns.nameservers = overrides.dns_nameservers.clone();
        }
        if !overrides.cors_origins.is_empty() {
            gateway.cors.allowed_origins = overrides.cors_origins.clone();
        }
        if let Some(dir) = &overrides.static_dir {
            gateway.static_dir = Some(dir.clone());
        }
        if let Some(endpoint) = &overrides.otlp_endpoint {
            gateway.otlp.endpoint = endpoint.clone();
        }
        if let Some(name) = &overrides.service_name {
            gateway.otlp.service_name = name.clone();
        }
        if let Some(dir) = &gateway.static_dir
            && !dir.is_dir()
        {
            return Err(invalid(
                "gateway.static_dir",
                format!(
                    "{} is not a directory (build the page: scripts/build-web)",
                    dir.display()
                ),
            ));
        }
        let addr = |key: &str, value: &str| -> Result<SocketAddr, ConfigError> {
            value
                .parse()
                .map_err(|_| invalid(key, format!("{value:?} is not an IP:port address")))
        };
        let server = match file.server {
            Some(value) => {
                let text = serde_norway::to_string(&value)
                    .map_err(|e| invalid("server", e.to_string()))?;
                pingora::server::configuration::ServerConf::from_yaml(&text)
                    .map_err(|e| invalid("server", e.to_string()))?;
                Some(text)
            }
            None => None,
        };
        let listen = addr("gateway.listen", &gateway.listen)?;
        let metrics_listen = if gateway.metrics_listen.is_empty() {
            None
        } else {
            Some(addr("gateway.metrics_listen", &gateway.metrics_listen)?)
        };
        if gateway.upstreams.is_empty() {
            return Err(invalid(
                "gateway.upstreams",
                "at least one upstream address is required",
            ));
        }
        let upstreams = gateway
            .upstreams
            .iter()
            .enumerate()
            .map(|(i, value)| {
                UpstreamTarget::parse(value).map_err(|reason| {
                    invalid(
                        &format!("gateway.upstreams[{i}]"),
                        format!("{reason} (also --upstream / GATEWAY_UPSTREAMS)"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let positive = |key: &str, value: u64| -> Result<Duration, ConfigError> {
            if value == 0 {
                Err(invalid(key, "must be greater than 0"))
            } else {
                Ok(Duration::from_millis(value))
            }
        };
        let mut route_timeouts = BTreeMap::new();
        for (route, ms) in &gateway.route_timeouts_ms {
            route_timeouts.insert(
                route.clone(),
                positive(&format!("gateway.route_timeouts_ms.{route}"), *ms)?,
            );
        }
        if gateway.max_body_bytes == 0 {
            return Err(invalid("gateway.max_body_bytes", "must be greater than 0"));
        }
        if gateway.retry.max_attempts == 0 {
            return Err(invalid("gateway.retry.max_attempts", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&gateway.retry.budget_ratio) {
            return Err(invalid(
                "gateway.retry.budget_ratio",
                "must be between 0 and 1",
            ));
        }
        if !(1..=60).contains(&gateway.retry.budget_window_secs) {
            return Err(invalid(
                "gateway.retry.budget_window_secs",
                "must be between 1 and 60",
            ));
        }
        if i32::try_from(gateway.retry.min_retries_per_second).is_err() {
            return Err(invalid(
                "gateway.retry.min_retries_per_second",
                "is too large",
            ));
        }
        let dns = dns_settings(gateway.dns)?;
        let health_thresholds = HealthThresholds {
            unhealthy: at_least_one(
                "gateway.health_check.unhealthy_threshold",
                gateway.health_check.unhealthy_threshold,
            )?,
            healthy: at_least_one(
                "gateway.health_check.healthy_threshold",
                gateway.health_check.healthy_threshold,
            )?,
        };
        if gateway.load_balancing.panic_threshold_percent > 100 {
            return Err(invalid(
                "gateway.load_balancing.panic_threshold_percent",
                "must be between 0 and 100",
            ));
        }
        let outlier = outlier_settings(&gateway.outlier_detection)?;
        if gateway.shutdown.drain_delay_ms > MAX_DRAIN_DELAY_MS {
            return Err(invalid(
                "gateway.shutdown.drain_delay_ms",
                format!("must be at most {MAX_DRAIN_DELAY_MS}"),
            ));
        }
        let connections = connection_settings(&gateway.connections)?;
        for (i, origin) in gateway.cors.allowed_origins.iter().enumerate() {
            if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(invalid(
                    &format!("gateway.cors.allowed_origins[{i}]"),
                    format!("{origin:?} must be `*` or an http(s):// origin"),
                ));
            }
        }
        if gateway.cors.allow_credentials && gateway.cors.allowed_origins.iter().any(|o| o == "*") {
            return Err(invalid(
                "gateway.cors.allow_credentials",
                "cannot be combined with origin `*`",
            ));
        }
        let tls = match gateway.tls {
            Some(tls) => {
                let tls_listen = addr("gateway.tls.listen", &tls.listen)?;
                if tls_listen == listen {
                    return Err(invalid(
                        "gateway.tls.listen",
                        format!("{tls_listen} is already gateway.listen (plaintext)"),
                    ));
                }
                check_tls(&tls.cert_path, &tls.key_path)?;
                Some((tls_listen, tls.cert_path, tls.key_path))
            }
            None => None,
        };
        let filters = filter_specs(gateway.filters)?;
        let otlp = otlp_settings(gateway.otlp)?;
        Ok(Self {
            server,
            listen,
            metrics_listen,
            upstreams,
            dns,
            descriptor_sets: gateway.descriptor_sets,
            skip_builtin_descriptors: gateway.skip_builtin_descriptors,
            json: gateway.json.options(),
            max_body_bytes: gateway.max_body_bytes,
            timeout: positive("gateway.timeout_ms", gateway.timeout_ms)?,
            route_timeouts,
            connect_timeout: positive("gateway.connect_timeout_ms", gateway.connect_timeout_ms)?,
            h2_streams_per_connection: gateway.h2_streams_per_connection.max(1),
            health_interval: positive(
                "gateway.health_check.interval_ms",
                gateway.health_check.interval_ms,
            )?,
            health_timeout: positive(
                "gateway.health_check.timeout_ms",
                gateway.health_check.timeout_ms,
            )?,
            health_service: gateway.health_check.service,
            health_thresholds,
            panic_threshold_percent: gateway.load_balancing.panic_threshold_percent,
            outlier,
            retry_max_attempts: gateway.retry.max_attempts,
            retry_budget_ratio: gateway.retry.budget_ratio,
            retry_min_per_second: gateway.retry.min_retries_per_second,
            retry_budget_window: Duration::from_secs(gateway.retry.budget_window_secs),
            drain_delay: Duration::from_millis(gateway.shutdown.drain_delay_ms),
            connections,
            cors_origins: gateway.cors.allowed_origins,
            cors_allow_credentials: gateway.cors.allow_credentials,
            cors_max_age: Duration::from_secs(gateway.cors.max_age_secs),
            tls,
            otlp,
            static_dir: gateway.static_dir,
            filters,
        })
    }

    /// Test and embedding helper: defaults with the given listener and upstreams.
    pub fn for_upstreams(listen: SocketAddr, upstreams: Vec<SocketAddr>) -> Self {
        let mut config = Self::from_file(FileConfig::default(), &Overrides::default())
            .expect("defaults are valid");
        config.listen = listen;
        config.metrics_listen = None;
        config.upstreams = upstreams.into_iter().map(UpstreamTarget::Address).collect();
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
mod tests {
    use super::*;

    fn load(text: &str) -> Result<GatewayConfig, ConfigError> {
        GatewayConfig::from_file(GatewayConfig::parse_file(text)?, &Overrides::default())
    }

    #[test]
    fn shipped_config_is_valid() {
        let text = include_str!("../config/gateway.yaml");
        let config = load(text).unwrap();
        assert_eq!(config.listen.port(), 8080);
        assert_eq!(config.metrics_listen.unwrap().port(), 9091);
        assert_eq!(
            config.upstreams,
            vec![UpstreamTarget::Address("127.0.0.1:50051".parse().unwrap())]
        );
        // Route timeouts exceed the user-service's database acquire timeout (2 s), so a busy
        // pool answers UNAVAILABLE (503) rather than a gateway timeout (504).
        for (route, timeout) in &config.route_timeouts {
            assert!(*timeout > Duration::from_millis(2_000), "{route}");
        }
        // The replaced facade's REST contract.
        assert_eq!(
            config.json,
            JsonOptions {
                use_proto_field_names: true,
                emit_defaults: true,
                int64_as_number: true,
                ignore_unknown_fields: true,
                error_detail: true,
            }
        );
        let aip = load(include_str!("../config/gateway-grpc-gateway.yaml")).unwrap();
        assert_eq!(aip.json, JsonOptions::default());
        assert_eq!(aip.listen.port(), 8080);
    }

    #[test]
    fn json_keys_override_the_style() {
        let config =
            load("gateway:\n  json:\n    style: fastapi\n    use_proto_field_names: false\n")
                .unwrap();
        assert!(!config.json.use_proto_field_names);
        assert!(config.json.error_detail && config.json.int64_as_number);
        let config = load("gateway:\n  json:\n    int64_as_number: true\n").unwrap();
        assert!(config.json.int64_as_number && !config.json.error_detail);
        let error = load("gateway:\n  json:\n    style: fast\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("gateway.json.style"), "{error}");
        assert!(error.contains("fastapi"), "{error}");
    }

    #[test]
    fn resilience_defaults() {
        let config = load("gateway: {}\n").unwrap();
        assert_eq!(
            config.health_thresholds,
            HealthThresholds {
                unhealthy: 3,
                healthy: 2
            }
        );
        assert_eq!(config.panic_threshold_percent, 50);
        assert_eq!(config.outlier.consecutive_failures, 5);
        assert_eq!(config.drain_delay, Duration::from_secs(5));
        assert_eq!(config.connections.max, 4_096);
        assert_eq!(config.connections.max_per_client_ip, 0);
        assert_eq!(
            config.connections.header_read_timeout,
            Duration::from_secs(10)
        );
        assert!(
            config.dns.nameservers.is_empty(),
            "system resolver by default"
        );
        assert_eq!(config.dns.min_refresh, Duration::from_secs(1));
        assert_eq!(config.dns.max_refresh, Duration::from_secs(30));
    }

    #[test]
    fn upstreams_may_be_names_and_nameservers_explicit() {
        let config = load(
            "gateway:\n  upstreams: [\"user-service:50051\", \"10.0.0.7:50051\"]\n  dns:\n    nameservers: [\"127.0.0.1:5353\"]\n    search: [meshgate.svc.cluster.local]\n    ndots: 5\n",
        )
        .unwrap();
        assert_eq!(
            config.upstreams[0],
            UpstreamTarget::Name {
                host: "user-service".into(),
                port: 50051
            }
        );
        assert_eq!(
            config.dns.nameservers,
            vec!["127.0.0.1:5353".parse().unwrap()]
        );
        assert_eq!(config.dns.ndots, Some(5));
        let overrides = Overrides {
            dns_nameservers: vec!["127.0.0.2:53".into()],
            ..Default::default()
        };
        let config = GatewayConfig::from_file(
            GatewayConfig::parse_file("gateway: {}\n").unwrap(),
            &overrides,
        )
        .unwrap();
        assert_eq!(
            config.dns.nameservers,
            vec!["127.0.0.2:53".parse().unwrap()]
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let error = load("gateway:\n  cors:\n    allowed_origns: []\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("allowed_origns"), "{error}");
        assert!(error.contains("gateway.cors"), "{error}");
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            ("gateway:\n  listen: nowhere\n", "gateway.listen"),
            ("gateway:\n  upstreams: []\n", "gateway.upstreams"),
            ("gateway:\n  upstreams: [\"x\"]\n", "gateway.upstreams[0]"),
            (
                "gateway:\n  upstreams: [\"a\", \"bad host:1\"]\n",
                "gateway.upstreams[0]",
            ),
            (
                "gateway:\n  upstreams: [\"host:0\"]\n",
                "gateway.upstreams[0]",
            ),
            (
                "gateway:\n  dns: {nameservers: [\"dns.example\"]}\n",
                "gateway.dns.nameservers[0]",
            ),
            (
                "gateway:\n  dns: {search: [\"a b\"]}\n",
                "gateway.dns.search[0]",
            ),
            ("gateway:\n  dns: {ndots: 16}\n", "gateway.dns.ndots"),
            (
                "gateway:\n  dns: {timeout_ms: 0}\n",
                "gateway.dns.timeout_ms",
            ),
            (
                "gateway:\n  dns: {min_refresh_ms: 0}\n",
                "gateway.dns.min_refresh_ms",
            ),
            (
                "gateway:\n  dns: {min_refresh_ms: 5000, max_refresh_ms: 1000}\n",
                "gateway.dns.max_refresh_ms",
            ),
            ("gateway:\n  dns: {nameserver: []}\n", "nameserver"),
            (
                "gateway:\n  health_check: {unhealthy_threshold: 0}\n",
                "gateway.health_check.unhealthy_threshold",
            ),
            (
                "gateway:\n  health_check: {healthy_threshold: 0}\n",
                "gateway.health_check.healthy_threshold",
            ),
            (
                "gateway:\n  load_balancing: {panic_threshold_percent: 101}\n",
                "gateway.load_balancing.panic_threshold_percent",
            ),
            (
                "gateway:\n  outlier_detection: {base_ejection_ms: 0}\n",
                "gateway.outlier_detection.base_ejection_ms",
            ),
            (
                "gateway:\n  outlier_detection: {base_ejection_ms: 2000, max_ejection_ms: 1000}\n",
                "gateway.outlier_detection.max_ejection_ms",
            ),
            (
                "gateway:\n  retry: {budget_window_secs: 61}\n",
                "gateway.retry.budget_window_secs",
            ),
            (
                "gateway:\n  retry: {min_retries_per_second: 4000000000}\n",
                "gateway.retry.min_retries_per_second",
            ),
            (
                "gateway:\n  shutdown: {drain_delay_ms: 300001}\n",
                "gateway.shutdown.drain_delay_ms",
            ),
            (
                "gateway:\n  connections: {max: 0}\n",
                "gateway.connections.max",
            ),
            (
                "gateway:\n  connections: {max: 10, max_per_client_ip: 11}\n",
                "gateway.connections.max_per_client_ip",
            ),
            (
                "gateway:\n  connections: {idle_timeout_ms: 500}\n",
                "gateway.connections.idle_timeout_ms",
            ),
            (
                "gateway:\n  connections: {header_read_timeout_ms: 0}\n",
                "gateway.connections.header_read_timeout_ms",
            ),
            ("gateway:\n  timeout_ms: 0\n", "gateway.timeout_ms"),
            (
                "gateway:\n  retry:\n    budget_ratio: 2\n",
                "gateway.retry.budget_ratio",
            ),
            (
                "gateway:\n  cors:\n    allowed_origins: [\"example.com\"]\n",
                "gateway.cors.allowed_origins[0]",
            ),
            ("server:\n  threads: many\n", "server"),
            (
                "gateway:\n  static_dir: /definitely/not/a/dir\n",
                "gateway.static_dir",
            ),
            (
                "gateway:\n  filters:\n    - {name: \"\", module: a.wasm}\n",
                "gateway.filters[0].name",
            ),
            (
                "gateway:\n  filters:\n    - {name: a, builtin: ratelimit}\n",
                "gateway.filters[0].builtin",
            ),
            (
                "gateway:\n  filters:\n    - {name: a, builtin: bundle, runtime: v8}\n",
                "gateway.filters[0].runtime",
            ),
            (
                "gateway:\n  filters:\n    - {name: a, builtin: bundle, runtime: wasm}\n",
                "gateway.filters[0].module",
            ),
            (
                "gateway:\n  filters:\n    - {name: a, module: a.wasm, runtime: native}\n",
                "gateway.filters[0].builtin",
            ),
            (
                "gateway:\n  filters:\n    - {name: a}\n",
                "gateway.filters[0].module",
            ),
            (
                "gateway:\n  filters:\n    - {name: a, module: a.wasm}\n    - {name: a, module: b.wasm}\n",
                "gateway.filters[1].name",
            ),
            (
                "gateway:\n  filters:\n    - {name: a, module: a.wasm, config: [1]}\n",
                "gateway.filters[0].config",
            ),
            (
                "gateway:\n  filters:\n    - {name: a, module: a.wasm, workers: 0}\n",
                "gateway.filters[0].workers",
            ),
            (
                "gateway:\n  tls: {listen: nowhere, cert_path: c.pem, key_path: k.pem}\n",
                "gateway.tls.listen",
            ),
            (
                "gateway:\n  otlp: {endpoint: \"collector:4317\"}\n",
                "gateway.otlp.endpoint",
            ),
            (
                "gateway:\n  otlp: {endpoint: \"https://collector:4317\"}\n",
                "gateway.otlp.endpoint",
            ),
            (
                "gateway:\n  otlp: {endpoint: \"http://collector:4317\", service_name: \" \"}\n",
                "gateway.otlp.service_name",
            ),
            ("gateway:\n  otlp: {endpont: x}\n", "endpont"),
            (
                "gateway:\n  listen: 127.0.0.1:8443\n  tls: {listen: 127.0.0.1:8443, cert_path: c.pem, key_path: k.pem}\n",
                "gateway.tls.listen",
            ),
            (
                "gateway:\n  tls: {listen: 127.0.0.1:8443, cert_path: /definitely/not/cert.pem, key_path: /definitely/not/key.pem}\n",
                "gateway.tls",
            ),
        ];
        for (text, key) in cases {
            let error = load(text).unwrap_err().to_string();
            assert!(error.contains(key), "{text:?} → {error}");
        }
    }

    #[test]
    fn filter_config_is_handed_over_as_json() {
        let config = load(
            "gateway:\n  filters:\n    - name: rl\n      module: /m/rl.wasm\n      config:\n        mode: shadow\n        rules: [{name: r, requests: 2}]\n",
        )
        .unwrap();
        let spec = &config.filters[0];
        assert_eq!(spec.workers, DEFAULT_FILTER_WORKERS);
        assert_eq!(
            spec.runtime,
            FilterRuntime::Wasm {
                module: "/m/rl.wasm".into()
            }
        );
        let json: serde_json::Value = serde_json::from_str(&spec.config_json).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"mode": "shadow", "rules": [{"name": "r", "requests": 2}]})
        );
    }

    #[test]
    fn fail_strategy_is_the_wasmplugin_field_and_defaults_to_fail_close() {
        let config = load(
            "gateway:\n  filters:\n    - {name: a, builtin: bundle}\n    - {name: b, builtin: bundle, failStrategy: FAIL_OPEN}\n    - {name: c, builtin: bundle, failStrategy: FAIL_CLOSE}\n",
        )
        .unwrap();
        let strategies: Vec<FailStrategy> =
            config.filters.iter().map(|f| f.fail_strategy).collect();
        assert_eq!(
            strategies,
            [
                FailStrategy::FailClose,
                FailStrategy::FailOpen,
                FailStrategy::FailClose
            ]
        );
        let error = load(
            "gateway:\n  filters:\n    - {name: a, builtin: bundle, failStrategy: fail_open}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            error.contains("gateway.filters[0].failStrategy")
                && error.contains("\"fail_open\" must be FAIL_CLOSE or FAIL_OPEN"),
            "{error}"
        );
    }

    #[test]
    fn builtin_filters_run_natively_unless_runtime_says_wasm() {
        let config = load(
            "gateway:\n  filters:\n    - {name: all, builtin: bundle, module: f.wasm, config: {}}\n    - {name: rl, builtin: rate-limit, runtime: wasm, module: /m/rl.wasm}\n    - {name: own, module: /m/own.wasm}\n",
        )
        .unwrap();
        let runtimes: Vec<&FilterRuntime> = config.filters.iter().map(|f| &f.runtime).collect();
        assert_eq!(
            runtimes,
            [
                &FilterRuntime::Native(BuiltIn::Bundle),
                &FilterRuntime::Wasm {
                    module: "/m/rl.wasm".into()
                },
                &FilterRuntime::Wasm {
                    module: "/m/own.wasm".into()
                },
            ]
        );
    }

    #[test]
    fn otlp_is_off_by_default_and_the_env_or_flag_wins() {
        assert_eq!(load("gateway: {}\n").unwrap().otlp, None);
        let file = "gateway:\n  otlp: {endpoint: \"http://file:4317\", service_name: gw-file}\n";
        let from_file = load(file).unwrap().otlp.unwrap();
        assert_eq!(from_file.endpoint, "http://file:4317");
        assert_eq!(from_file.service_name, "gw-file");
        let overrides = Overrides {
            otlp_endpoint: Some("http://env:4317".into()),
            service_name: Some("gw-env".into()),
            ..Default::default()
        };
        let config =
            GatewayConfig::from_file(GatewayConfig::parse_file(file).unwrap(), &overrides).unwrap();
        let settings = config.otlp.unwrap();
        assert_eq!(settings.endpoint, "http://env:4317");
        assert_eq!(settings.service_name, "gw-env");
        // An empty endpoint (e.g. OTEL_EXPORTER_OTLP_ENDPOINT="") turns export off.
        let overrides = Overrides {
            otlp_endpoint: Some(String::new()),
            ..Default::default()
        };
        let config =
            GatewayConfig::from_file(GatewayConfig::parse_file(file).unwrap(), &overrides).unwrap();
        assert_eq!(config.otlp, None);
    }

    #[test]
    fn overrides_win_over_the_file() {
        let file = GatewayConfig::parse_file("gateway:\n  listen: 0.0.0.0:1\n").unwrap();
        let overrides = Overrides {
            listen: Some("127.0.0.1:2".into()),
            upstreams: vec!["127.0.0.1:3".into(), "127.0.0.1:4".into()],
            ..Default::default()
        };
        let config = GatewayConfig::from_file(file, &overrides).unwrap();
        assert_eq!(config.listen.port(), 2);
        assert_eq!(config.upstreams.len(), 2);
    }

    #[test]
    fn static_dir_comes_from_the_file_or_the_flag() {
        let dir = std::env::temp_dir();
        let file =
            GatewayConfig::parse_file(&format!("gateway:\n  static_dir: {}\n", dir.display()))
                .unwrap();
        let config = GatewayConfig::from_file(file, &Overrides::default()).unwrap();
        assert_eq!(config.static_dir.as_deref(), Some(dir.as_path()));

        let overrides = Overrides {
            static_dir: Some("/definitely/not/a/dir".into()),
            ..Default::default()
        };
        let file =
            GatewayConfig::parse_file(&format!("gateway:\n  static_dir: {}\n", dir.display()))
                .unwrap();
        let error = GatewayConfig::from_file(file, &overrides)
            .unwrap_err()
            .to_string();
        assert!(error.contains("gateway.static_dir"), "{error}");
    }
}
