//! The file as written: the serde schema of the YAML file (`server` for pingora, `gateway` for
//! the gateway), each section with its defaults. Unknown keys are refused. Pure: no checks
//! beyond the shapes serde sees; [`super::settings`] turns the sections into settings.

use std::{collections::BTreeMap, path::PathBuf};

use serde::Deserialize;

use crate::transcode::JsonOptions;

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
    /// JWT bearer tokens required on the methods and routes its rules name; unset: no auth.
    pub auth: Option<AuthSection>,
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
            auth: None,
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
    pub(super) fn options(&self) -> JsonOptions {
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

/// `gateway.auth`: who may call what, by JWT (RS256 / ES256) against a JSON Web Key Set.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthSection {
    pub jwks: JwksSection,
    /// Accepted `iss` values; a token must carry one of them.
    #[serde(default)]
    pub issuers: Vec<String>,
    /// Accepted `aud` values; a token's `aud` must hold one of them.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// Which calls need a token, first match wins; calls no rule names pass without one.
    #[serde(default)]
    pub rules: Vec<AuthRuleSection>,
}

fn default_leeway_secs() -> u64 {
    30
}

/// Where the keys come from and how often they are fetched again.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwksSection {
    /// A JWKS file (relative to the config file's directory), re-read on the same schedule ...
    pub file: Option<PathBuf>,
    /// ... or an `http(s)://` URL (the identity provider's `jwks_uri`).
    pub url: Option<String>,
    pub refresh_interval_ms: u64,
    /// A token naming a key id the set lacks fetches the set again, at most this often.
    pub min_refresh_interval_ms: u64,
    pub fetch_timeout_ms: u64,
}

impl Default for JwksSection {
    fn default() -> Self {
        Self {
            file: None,
            url: None,
            refresh_interval_ms: 300_000,
            min_refresh_interval_ms: 10_000,
            fetch_timeout_ms: 2_000,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthRuleSection {
    pub name: String,
    /// gRPC methods, `user.UserService/CreateUser` or `/user.UserService/CreateUser`: REST,
    /// gRPC-web and gRPC calls of the method.
    #[serde(default)]
    pub methods: Vec<String>,
    /// REST routes as the access log names them, `POST /v1/users`: REST calls only.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Claims the token must carry (all of them; 403 otherwise).
    #[serde(default)]
    pub require_claims: Vec<ClaimSection>,
}

/// One claim requirement: `contains` (a word of a space-separated string such as `scope`, or
/// an array element), `equals`, or neither (present).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimSection {
    pub claim: String,
    #[serde(default)]
    pub contains: Option<String>,
    #[serde(default)]
    pub equals: Option<String>,
}
