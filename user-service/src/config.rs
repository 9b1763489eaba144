//! Configuration: flags with environment-variable equivalents (clap), validated once before
//! anything binds or connects.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::ArgAction;

use crate::cache::CacheSettings;
use crate::telemetry::{LogFormat, TelemetrySettings};

/// Every setting of the service. The table is in user-service/README.md (Configuration).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "user-service",
    version,
    about = "The meshgate user service (gRPC)."
)]
pub struct Config {
    /// gRPC listen address.
    #[arg(long, env = "GRPC_ADDR", default_value = "0.0.0.0:50051")]
    pub grpc_addr: SocketAddr,

    /// Prometheus `/metrics` listen address.
    #[arg(long, env = "METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,

    /// PostgreSQL URL. Unset: the embedded SQLite file at --sqlite-path.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// SQLite database file used when DATABASE_URL is unset (created if missing).
    #[arg(long, env = "SQLITE_PATH", default_value = "user-service.db")]
    pub sqlite_path: PathBuf,

    /// Maximum database connections in the pool.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_max_connections: u32,

    /// How long a query waits for a pooled connection before answering UNAVAILABLE (ms).
    #[arg(long, env = "DB_ACQUIRE_TIMEOUT_MS", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub db_acquire_timeout_ms: u64,

    /// Apply the migrations before serving.
    #[arg(long, env = "MIGRATE_ON_START", default_value_t = false, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub migrate_on_start: bool,

    /// NATS URL (JetStream) the outbox relay publishes user events to, and the worker consumes
    /// from. Unset: no broker; events still accumulate in the outbox (`ListUserEvents` shows
    /// them).
    #[arg(long, env = "NATS_URL", hide_env_values = true)]
    pub nats_url: Option<String>,

    /// Events a `WatchUsers` client may fall behind before its stream ends with
    /// RESOURCE_EXHAUSTED (the size of the one ring every watcher of this process reads).
    #[arg(long, env = "WATCH_BUFFER_EVENTS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub watch_buffer_events: u32,

    /// Replicas of the `USERS` stream on a clustered JetStream (1 on a single server, which
    /// refuses more). An existing stream with fewer is raised to it, never lowered.
    #[arg(long, env = "NATS_STREAM_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=5))]
    pub nats_stream_replicas: u64,

    /// How long a CreateUser `idempotency-key` is remembered (seconds).
    #[arg(long, env = "IDEMPOTENCY_TTL_SECS", default_value_t = 86_400,
          value_parser = clap::value_parser!(u64).range(1..=31_536_000))]
    pub idempotency_ttl_secs: u64,

    /// Valkey/Redis URL for the cache. Unset: an in-process cache.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Prefix of every cache key (lets several deployments or tests share one Redis). Never
    /// empty by default: bare keys such as `user:{id}` could collide with the replaced
    /// service's cache when both use one Redis during the cut-over.
    #[arg(long, env = "CACHE_KEY_PREFIX", default_value = DEFAULT_CACHE_KEY_PREFIX)]
    pub cache_key_prefix: String,

    /// Lifetime of cached users and list pages (seconds).
    #[arg(long, env = "CACHE_TTL_SECS", default_value_t = 900,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub cache_ttl_secs: u64,

    /// Upper bound on one cache round trip before the database is used instead (ms).
    #[arg(long, env = "CACHE_TIMEOUT_MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub cache_timeout_ms: u64,

    /// Consecutive failed cache calls that open the cache circuit breaker.
    #[arg(long, env = "CACHE_BREAKER_FAILURES", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub cache_breaker_failures: u32,

    /// How long an open cache breaker skips the cache before one probe call (ms).
    #[arg(long, env = "CACHE_BREAKER_COOLDOWN_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub cache_breaker_cooldown_ms: u64,

    /// Entries the in-process cache holds (used when REDIS_URL is unset).
    #[arg(long, env = "LOCAL_CACHE_CAPACITY", default_value_t = 10_000)]
    pub local_cache_capacity: usize,

    /// Largest gRPC message accepted or sent (bytes).
    #[arg(long, env = "MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Also serve gRPC-web (binary and text, HTTP/1.1 and HTTP/2) on the gRPC port, through
    /// tonic-web. Off: only native gRPC (HTTP/2) is answered.
    #[arg(long, env = "GRPC_WEB", default_value_t = false, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub grpc_web: bool,

    /// Browser origins allowed to call gRPC-web (CORS), comma-separated (`https://app.example`,
    /// or `*` for any). Empty: no cross-origin call is allowed.
    #[arg(long, env = "GRPC_WEB_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub grpc_web_allowed_origins: Vec<String>,

    /// Server-side cap on any call; a shorter client deadline (grpc-timeout) wins (ms).
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub request_timeout_ms: u64,

    /// How often the health probe pings the database (ms).
    #[arg(long, env = "HEALTH_PROBE_INTERVAL_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(10..))]
    pub health_probe_interval_ms: u64,

    /// Consecutive failed database pings before readiness turns NOT_SERVING.
    #[arg(long, env = "READINESS_FAILURE_THRESHOLD", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub readiness_failure_threshold: u32,

    /// After SIGTERM/SIGINT: readiness turns NOT_SERVING at once, and calls (and new
    /// connections) are still served for this long, so load balancers see it first (ms).
    #[arg(long, env = "DRAIN_DELAY_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub drain_delay_ms: u64,

    /// After the drain delay: how long in-flight calls may take before the server stops (s).
    #[arg(long, env = "SHUTDOWN_GRACE_SECS", default_value_t = 25,
          value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub shutdown_grace_secs: u64,

    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json)]
    pub log_format: LogFormat,

    /// Log lines that may wait for stdout; when a reader stalls beyond them, lines are dropped
    /// (counted in `user_service_log_lines_dropped_total`) instead of blocking request threads.
    #[arg(long, env = "LOG_QUEUE_LINES", default_value_t = crate::telemetry::LOG_QUEUE_LINES,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub log_queue_lines: u32,

    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log_filter: String,

    /// OTLP/gRPC endpoint for traces (e.g. http://otel-collector:4317). Unset: no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// service.name of exported traces.
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "user-service")]
    pub service_name: String,
}

/// The default `CACHE_KEY_PREFIX`.
pub const DEFAULT_CACHE_KEY_PREFIX: &str = "meshgate:";

/// A setting with an unusable value. Printed as one line; the binary exits with code 2.
#[derive(Debug, thiserror::Error)]
#[error("invalid {setting}: {problem}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
}

impl Config {
    /// The embedded configuration the in-process tests use: SQLite at `sqlite_path`, an
    /// in-process cache, loopback port 0 for both listeners, migrations on start, no drain
    /// delay.
    pub fn embedded(sqlite_path: PathBuf) -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: None,
            sqlite_path,
            db_max_connections: 10,
            db_acquire_timeout_ms: 2000,
            migrate_on_start: true,
            nats_url: None,
            watch_buffer_events: 1024,
            nats_stream_replicas: 1,
            idempotency_ttl_secs: 86_400,
            redis_url: None,
            cache_key_prefix: DEFAULT_CACHE_KEY_PREFIX.to_owned(),
            cache_ttl_secs: 900,
            cache_timeout_ms: 100,
            cache_breaker_failures: 5,
            cache_breaker_cooldown_ms: 1000,
            local_cache_capacity: 10_000,
            max_message_bytes: 4 * 1024 * 1024,
            grpc_web: false,
            grpc_web_allowed_origins: Vec::new(),
            request_timeout_ms: 30_000,
            health_probe_interval_ms: 1000,
            readiness_failure_threshold: 3,
            // In-process tests stop the app without a load balancer to wait for.
            drain_delay_ms: 0,
            shutdown_grace_secs: 25,
            log_format: LogFormat::Json,
            log_queue_lines: crate::telemetry::LOG_QUEUE_LINES,
            log_filter: "info".to_owned(),
            otlp_endpoint: None,
            service_name: "user-service".to_owned(),
        }
    }

    /// Checks what clap's parsers cannot: URL schemes and syntax, the log filter. Values that
    /// may be secrets (URLs) are never echoed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.database_url {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(ConfigError {
                    setting: "DATABASE_URL (--database-url)",
                    problem: "must be a postgres:// or postgresql:// URL (unset it for the embedded SQLite store)".to_owned(),
                });
            }
            sqlx::postgres::PgConnectOptions::from_str(url).map_err(|error| ConfigError {
                setting: "DATABASE_URL (--database-url)",
                problem: format!(
                    "not a valid PostgreSQL URL ({})",
                    redact(&error.to_string())
                ),
            })?;
        }
        if let Some(url) = &self.redis_url {
            redis::Client::open(url.as_str()).map_err(|error| ConfigError {
                setting: "REDIS_URL (--redis-url)",
                problem: format!("not a valid Redis URL ({})", redact(&error.to_string())),
            })?;
        }
        if let Some(url) = &self.nats_url {
            async_nats::ServerAddr::from_str(url).map_err(|error| ConfigError {
                setting: "NATS_URL (--nats-url)",
                problem: format!("not a valid NATS URL ({})", redact(&error.to_string())),
            })?;
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_filter).map_err(|error| ConfigError {
            setting: "RUST_LOG (--log-filter)",
            problem: error.to_string(),
        })?;
        if let Some(endpoint) = &self.otlp_endpoint
            && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
        {
            return Err(ConfigError {
                setting: "OTEL_EXPORTER_OTLP_ENDPOINT (--otlp-endpoint)",
                problem: "must be an http:// or https:// URL".to_owned(),
            });
        }
        self.validate_grpc_web()
    }

    /// The gRPC-web origins must be usable as `Access-Control-Allow-Origin` values, and only
    /// make sense with gRPC-web on.
    fn validate_grpc_web(&self) -> Result<(), ConfigError> {
        let problem = |what: String| ConfigError {
            setting: "GRPC_WEB_ALLOWED_ORIGINS (--grpc-web-allowed-origins)",
            problem: what,
        };
        if !self.grpc_web_allowed_origins.is_empty() && !self.grpc_web {
            return Err(problem(
                "set, but gRPC-web is off (GRPC_WEB=true turns it on)".to_owned(),
            ));
        }
        for origin in &self.grpc_web_allowed_origins {
            if origin != "*" && !is_origin(origin) {
                return Err(problem(format!(
                    "{origin:?} is not an origin (scheme://host[:port], no path), nor `*`"
                )));
            }
        }
        Ok(())
    }

    /// Checks the files a start would use, without creating or changing any: with no
    /// `DATABASE_URL`, the SQLite file must be openable for writing, or its directory (the
    /// nearest existing one, which a start would create the rest under) must accept a new file.
    pub fn check_files(&self) -> Result<(), ConfigError> {
        if self.database_url.is_some() {
            return Ok(());
        }
        let path = &self.sqlite_path;
        let problem = |what: String| ConfigError {
            setting: "SQLITE_PATH (--sqlite-path)",
            problem: what,
        };
        if path.exists() {
            if !path.is_file() {
                return Err(problem(format!("{} is not a file", path.display())));
            }
            return std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)
                .map(drop)
                .map_err(|error| problem(format!("{}: {error}", path.display())));
        }
        let mut dir = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(parent) => parent.to_path_buf(),
            None => std::path::PathBuf::from("."),
        };
        while !dir.exists() {
            match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                Some(parent) => dir = parent.to_path_buf(),
                None => dir = std::path::PathBuf::from("."),
            }
        }
        if !dir.is_dir() {
            return Err(problem(format!("{} is not a directory", dir.display())));
        }
        // Only trying tells whether this user may create a file there (permissions, a
        // read-only root filesystem): an exclusive probe file, removed at once.
        let probe = dir.join(format!(".user-service-test-{}", std::process::id()));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
        {
            Ok(_) => {
                let _ = std::fs::remove_file(&probe);
                Ok(())
            }
            Err(error) => Err(problem(format!(
                "cannot create {} in {}: {error}",
                path.display(),
                dir.display()
            ))),
        }
    }

    pub fn cache_settings(&self) -> CacheSettings {
        CacheSettings {
            key_prefix: self.cache_key_prefix.clone(),
            ttl: Duration::from_secs(self.cache_ttl_secs),
            timeout: Duration::from_millis(self.cache_timeout_ms),
            local_capacity: self.local_cache_capacity,
            breaker_failures: self.cache_breaker_failures,
            breaker_cooldown: Duration::from_millis(self.cache_breaker_cooldown_ms),
        }
    }

    pub fn telemetry_settings(&self) -> TelemetrySettings {
        TelemetrySettings {
            format: self.log_format,
            filter: self.log_filter.clone(),
            otlp_endpoint: self.otlp_endpoint.clone(),
            service_name: self.service_name.clone(),
        }
    }
}

/// `scheme://host[:port]` with an http(s) scheme and nothing after the authority, as browsers
/// send it in `Origin`.
fn is_origin(text: &str) -> bool {
    let Ok(uri) = text.parse::<http::Uri>() else {
        return false;
    };
    matches!(uri.scheme_str(), Some("http" | "https"))
        && uri.authority().is_some_and(|a| !a.host().is_empty())
        // `http` reads `https://host` with the path `/`; a written `/` is refused below.
        && uri.path_and_query().is_none_or(|pq| pq.as_str() == "/")
        && !text.ends_with('/')
}

/// sqlx errors about URLs can quote the URL; keep only the part before any "://".
fn redact(message: &str) -> String {
    match message.find("://") {
        Some(at) => format!("{}…", &message[..at]),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_architecture_ports() {
        // Read from clap's definition, so env vars of the test process cannot interfere.
        let command = <Config as clap::CommandFactory>::command();
        let default_of = |id: &str| {
            let arg = command.get_arguments().find(|a| a.get_id() == id).unwrap();
            let env = arg.get_env().unwrap().to_string_lossy().into_owned();
            let value = arg
                .get_default_values()
                .first()
                .map(|v| v.to_string_lossy().into_owned());
            (env, value)
        };
        assert_eq!(
            default_of("grpc_addr"),
            ("GRPC_ADDR".to_owned(), Some("0.0.0.0:50051".to_owned()))
        );
        assert_eq!(
            default_of("metrics_addr"),
            ("METRICS_ADDR".to_owned(), Some("0.0.0.0:9090".to_owned()))
        );
        assert_eq!(
            default_of("database_url"),
            ("DATABASE_URL".to_owned(), None)
        );
        assert_eq!(default_of("cache_ttl_secs").1.as_deref(), Some("900"));
        assert_eq!(
            default_of("cache_key_prefix").1.as_deref(),
            Some(DEFAULT_CACHE_KEY_PREFIX)
        );
        let embedded = Config::embedded("x.db".into());
        assert!(embedded.validate().is_ok());
        assert_eq!(
            (embedded.grpc_addr.port(), embedded.metrics_addr.port()),
            (0, 0)
        );
        assert!(embedded.migrate_on_start && embedded.redis_url.is_none());
    }

    #[test]
    fn non_postgres_database_url_names_the_setting() {
        let mut config = Config::embedded("x.db".into());
        config.database_url = Some("mysql://root:secret@db/users".to_owned());
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("DATABASE_URL"), "{error}");
        assert!(!error.contains("secret"), "{error}");
    }

    #[test]
    fn grpc_web_origins_must_be_origins_and_need_grpc_web() {
        let mut config = Config::embedded("x.db".into());
        assert!(!config.grpc_web, "off by default");
        config.grpc_web_allowed_origins = vec!["https://app.example".to_owned()];
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.contains("GRPC_WEB_ALLOWED_ORIGINS") && error.contains("off"),
            "{error}"
        );
        config.grpc_web = true;
        for good in ["https://app.example", "http://127.0.0.1:8080", "*"] {
            config.grpc_web_allowed_origins = vec![good.to_owned()];
            assert!(config.validate().is_ok(), "{good}");
        }
        for bad in [
            "app.example",
            "https://app.example/",
            "https://app.example/x",
            "ftp://a.b",
            "",
        ] {
            config.grpc_web_allowed_origins = vec![bad.to_owned()];
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains("GRPC_WEB_ALLOWED_ORIGINS"), "{bad}: {error}");
        }
    }

    #[test]
    fn bad_redis_url_names_the_setting() {
        let mut config = Config::embedded("x.db".into());
        config.redis_url = Some("http://nope".to_owned());
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("REDIS_URL")
        );
    }
}
