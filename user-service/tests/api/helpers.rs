//! `spawn_app`: the real service in process on port 0, with its own PostgreSQL database (named
//! with a UUID, dropped at teardown) or its own SQLite file, and its own Redis key prefix.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use meshgate_proto::user::user_service_client::UserServiceClient;
use meshgate_proto::user::{CreateUserRequest, User};
use sqlx::Connection;
use sqlx::Executor;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use user_service::telemetry::{self, LogFormat, TelemetryGuard, TelemetrySettings};
use user_service::{Application, Config};

use crate::proxy::TcpProxy;

/// Which storage the app under test uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL + Redis (the production shape).
    Postgres,
    /// The embedded default: SQLite file + in-process cache.
    Sqlite,
}

pub fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// Logs are discarded unless TEST_LOG is set (then text lines on stdout).
fn init_telemetry() {
    static GUARD: OnceLock<Option<TelemetryGuard>> = OnceLock::new();
    GUARD.get_or_init(|| {
        let settings = TelemetrySettings {
            format: LogFormat::Text,
            filter: std::env::var("TEST_LOG_FILTER").unwrap_or_else(|_| "info".to_owned()),
            otlp_endpoint: None,
            service_name: "user-service-test".to_owned(),
        };
        if std::env::var_os("TEST_LOG").is_some() {
            telemetry::init(&settings, std::io::stdout).ok()
        } else {
            telemetry::init(&settings, telemetry::discard()).ok()
        }
    });
}

pub struct TestApp {
    pub grpc_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub client: UserServiceClient<Channel>,
    pub channel: Channel,
    pub key_prefix: String,
    /// The Redis the app's cache uses (`None`: the in-process cache).
    pub redis_url: Option<String>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    database: Option<TestDatabase>,
    sqlite_dir: Option<PathBuf>,
}

/// A freshly created PostgreSQL database, dropped by `TestApp::teardown`.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        let server = server_url();
        let mut connection = PgConnection::connect(&server)
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "PostgreSQL at DATABASE_URL ({}) is unreachable: {error}. \
                 Run the suite with ./scripts/test, which provides PostgreSQL and Redis.",
                    redact(&server)
                )
            });
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        connection
            .execute(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
            .await
            .expect("the test role may CREATE DATABASE");
        let url = with_database(&server, &name);
        Self { name, url }
    }

    /// The same database reached through `proxy` instead of directly.
    pub fn url_via(&self, proxy: &TcpProxy) -> String {
        let options = PgConnectOptions::from_str(&self.url).expect("valid URL");
        let (host, port) = (options.get_host().to_owned(), options.get_port());
        self.url
            .replacen(&format!("{host}:{port}"), &proxy.addr().to_string(), 1)
    }

    pub async fn drop_database(&self) {
        if let Ok(mut connection) = PgConnection::connect(&server_url()).await {
            let _ = connection
                .execute(sqlx::AssertSqlSafe(format!(
                    r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#,
                    self.name
                )))
                .await;
        }
    }
}

/// The address of the PostgreSQL server (for a proxy in front of it).
pub fn postgres_server_addr() -> String {
    let options = PgConnectOptions::from_str(&server_url()).expect("DATABASE_URL is a valid URL");
    format!("{}:{}", options.get_host(), options.get_port())
}

/// Replaces the database name (the path) of a postgres URL, keeping any query string.
fn with_database(url: &str, name: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |at| at + 3);
    let path_start = url[after_scheme..].find('/').map(|at| after_scheme + at);
    let query_start = url.find('?');
    let (base, query) = match query_start {
        Some(at) => (&url[..at], &url[at..]),
        None => (url, ""),
    };
    let base = match path_start {
        Some(at) if query_start.is_none_or(|q| at < q) => &base[..at],
        _ => base,
    };
    format!("{base}/{name}{query}")
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://…{}", &url[..scheme], &url[at..]),
        _ => url.to_owned(),
    }
}

/// Whether a Redis at `url` answers PING within `wait`.
pub async fn redis_answers(url: &str, wait: Duration) -> bool {
    let ping = async {
        let client = redis::Client::open(url).ok()?;
        let mut connection = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .ok()
    };
    tokio::time::timeout(wait, ping)
        .await
        .ok()
        .flatten()
        .is_some()
}

/// Fails with a clear message when the test Redis is not there.
pub async fn ensure_redis() {
    let url = redis_url();
    if !redis_answers(&url, Duration::from_secs(3)).await {
        panic!(
            "Redis at REDIS_URL ({url}) is unreachable. Run the suite with ./scripts/test, \
             which provides PostgreSQL and Redis."
        );
    }
}

/// The embedded config with test-friendly timings.
pub fn base_config() -> Config {
    let mut config = Config::embedded(PathBuf::new());
    config.health_probe_interval_ms = 100;
    config.db_acquire_timeout_ms = 1000;
    config.shutdown_grace_secs = 10;
    // Generous, so a loaded CI machine does not turn a slow Redis reply into a cache error
    // (tests that want cache failures point REDIS_URL at a closed port).
    config.cache_timeout_ms = 2000;
    config
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// Spawns the app for `backend`, letting `adjust` change the config (e.g. a closed Redis port).
pub async fn spawn_app_with(backend: Backend, adjust: impl FnOnce(&mut Config)) -> TestApp {
    match backend {
        Backend::Postgres => {
            let database = TestDatabase::create().await;
            let url = database.url.clone();
            spawn_configured(Some(database), move |config| {
                config.database_url = Some(url);
                adjust(config);
            })
            .await
        }
        Backend::Sqlite => spawn_configured(None, adjust).await,
    }
}

/// Spawns the app on an already created database (used with a proxy).
pub async fn spawn_configured(
    database: Option<TestDatabase>,
    adjust: impl FnOnce(&mut Config),
) -> TestApp {
    init_telemetry();
    let key_prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
    let mut config = base_config();
    config.cache_key_prefix = key_prefix.clone();
    let sqlite_dir =
        std::env::temp_dir().join(format!("user-service-test-{}", uuid::Uuid::new_v4()));
    config.sqlite_path = sqlite_dir.join("users.db");
    if database.is_some() {
        ensure_redis().await;
        config.redis_url = Some(redis_url());
    }
    adjust(&mut config);
    let redis_url = config.redis_url.clone();

    let application = Application::build(config)
        .await
        .expect("the application builds");
    let grpc_addr = application.grpc_addr();
    let metrics_addr = application.metrics_addr();
    let (shutdown, stop) = oneshot::channel::<()>();
    let handle = tokio::spawn(application.run_until_stopped(async move {
        let _ = stop.await;
    }));
    let channel = Channel::from_shared(format!("http://{grpc_addr}"))
        .expect("valid URI")
        .connect()
        .await
        .expect("the server accepts connections");
    TestApp {
        grpc_addr,
        metrics_addr,
        client: UserServiceClient::new(channel.clone()),
        channel,
        key_prefix,
        redis_url,
        shutdown: Some(shutdown),
        handle: Some(handle),
        database,
        sqlite_dir: Some(sqlite_dir),
    }
}

impl TestApp {
    /// The app's PostgreSQL database, if it has one.
    pub fn database_url(&self) -> Option<&str> {
        self.database.as_ref().map(|database| database.url.as_str())
    }

    pub async fn create(&self, name: &str, email: &str, age: i32) -> Result<User, tonic::Status> {
        let response = self
            .client
            .clone()
            .create_user(CreateUserRequest {
                name: name.to_owned(),
                email: email.to_owned(),
                age,
            })
            .await?;
        Ok(response
            .into_inner()
            .user
            .expect("CreateUser returns the user"))
    }

    pub async fn health(&self, service: &str) -> ServingStatus {
        let response = HealthClient::new(self.channel.clone())
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .expect("health check answers");
        response.into_inner().status()
    }

    /// Polls readiness until it reports `wanted` (the probe runs every 100 ms in tests).
    pub async fn wait_for_health(&self, wanted: ServingStatus) {
        self.wait_for_service_health("user.UserService", wanted)
            .await;
    }

    pub async fn wait_for_service_health(&self, service: &str, wanted: ServingStatus) {
        for _ in 0..150 {
            if self.health(service).await == wanted {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("health of {service:?} never became {wanted:?}");
    }

    /// GET /metrics over plain HTTP/1.1.
    pub async fn metrics(&self) -> String {
        scrape(self.metrics_addr).await
    }

    /// Polls /metrics until it contains `line`.
    pub async fn wait_for_metric(&self, line: &str) {
        for _ in 0..1500 {
            if self.metrics().await.contains(line) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("/metrics never showed {line}");
    }

    /// Removes `dir` at teardown (for an app started on a SQLite file the test prepared).
    pub fn remove_dir_on_teardown(&mut self, dir: PathBuf) {
        self.sqlite_dir = Some(dir);
    }

    /// Raises the shutdown signal without waiting.
    pub fn signal_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    /// Waits for the server to stop after `signal_shutdown`.
    pub async fn stopped(&mut self) -> anyhow::Result<()> {
        let handle = self.handle.take().expect("not stopped yet");
        tokio::time::timeout(Duration::from_secs(30), handle)
            .await
            .expect("the server stops within 30 s")
            .expect("the server task does not panic")
    }

    /// Stops the server and drops the test database.
    pub async fn teardown(mut self) {
        self.signal_shutdown();
        if self.handle.is_some() {
            self.stopped().await.expect("the server stops cleanly");
        }
        if let Some(database) = self.database.take() {
            database.drop_database().await;
        }
        if let Some(dir) = self.sqlite_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// GET /metrics of the service at `addr` over plain HTTP/1.1.
pub async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

/// Waits until `count` sessions of the database at `url` wait on a lock (a row, a table or an
/// advisory lock): how a test knows the interleaving it forces has happened.
pub async fn wait_for_lock_waiters(url: &str, count: i64) {
    let mut observer = PgConnection::connect(url).await.unwrap();
    let mut waiting = 0;
    for _ in 0..500 {
        waiting = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut observer)
        .await
        .unwrap();
        if waiting == count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{waiting} sessions wait on a lock, not {count}");
}

/// The edge gateway in process in front of the service(s) `config` names, on a loopback
/// socket bound here (the config's `listen` is replaced by it), so no parallel test can take
/// its port first. The address is `gateway.state.config.listen`.
pub async fn spawn_edge(
    config: edge_gateway::config::GatewayConfig,
) -> edge_gateway::server::RunningGateway {
    let listeners = edge_gateway::server::Listeners {
        main: Some(std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback socket")),
        ..Default::default()
    };
    tokio::task::spawn_blocking(move || {
        edge_gateway::server::RunningGateway::start_on(
            config,
            edge_gateway::hooks::FilterChain::default(),
            listeners,
        )
        .expect("the gateway starts")
    })
    .await
    .expect("the gateway start does not panic")
}

/// A unique email per call, so tests never collide.
pub fn unique_email() -> String {
    format!("user-{}@example.com", uuid::Uuid::new_v4().simple())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://u@h:5432/test", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u@h/test?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
        assert_eq!(
            with_database("postgres://u@h:5432", "x"),
            "postgres://u@h:5432/x"
        );
    }
}
