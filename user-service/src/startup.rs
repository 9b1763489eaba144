//! Wiring: [`Application::build`] validates the config, opens the stores and binds both
//! listeners; [`Application::run_until_stopped`] serves until the shutdown future completes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meshgate_proto::user::user_service_server::UserServiceServer;
use meshgate_proto::user::v2::user_service_server::UserServiceServer as UserServiceV2Server;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::ServingStatus;
use tonic_web::GrpcWebLayer;
use tower::layer::util::Stack;
use tower_http::cors::CorsLayer;

use crate::cache::{CacheBackend, CachedStore};
use crate::config::Config;
use crate::events::live::{self, LiveEvents};
use crate::events::relay::{self, RelaySettings};
use crate::events::worker::{self, WorkerSettings};
use crate::grpc::UserApi;
use crate::health;
use crate::metrics::{self, Metrics};
use crate::store::postgres::PoolSettings;
use crate::store::{Database, PostgresStore, SqliteStore};

pub struct Application {
    config: Config,
    grpc_listener: TcpListener,
    metrics_listener: TcpListener,
    grpc_addr: SocketAddr,
    metrics_addr: SocketAddr,
    database: Database,
    store: Arc<CachedStore<Database>>,
    metrics: Arc<Metrics>,
    /// JetStream, when NATS_URL is set: the outbox relay publishes there.
    jetstream: Option<async_nats::jetstream::Context>,
    /// Woken by this process's commits, so its relay publishes without waiting for a poll.
    outbox_written: Arc<Notify>,
    /// What `WatchUsers` reads: fed by JetStream when there is a broker, else by the commits.
    live: LiveEvents,
}

/// [`open_database`], then the migrations when `--migrate-on-start` asks for them.
async fn open_migrated_database(
    config: &Config,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Database> {
    let database = open_database(config, metrics)?;
    migrate_if_configured(config, &database).await?;
    Ok(database)
}

async fn migrate_if_configured(config: &Config, database: &Database) -> anyhow::Result<()> {
    if config.migrate_on_start {
        database
            .migrate()
            .await
            .with_context(|| format!("applying the {} migrations", database.backend()))?;
    }
    Ok(())
}

/// Opens the configured database (PostgreSQL when `DATABASE_URL` is set, else SQLite).
/// Connections are made lazily.
pub fn open_database(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Database> {
    let acquire_timeout = Duration::from_millis(config.db_acquire_timeout_ms);
    Ok(match &config.database_url {
        Some(url) => {
            let settings = PoolSettings {
                max_connections: config.db_max_connections,
                acquire_timeout,
            };
            Database::Postgres(
                PostgresStore::connect_lazy(url, &settings, metrics)
                    .context("configuring the PostgreSQL pool")?,
            )
        }
        None => {
            if let Some(parent) = config
                .sqlite_path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
            {
                std::fs::create_dir_all(parent).with_context(|| {
                    format!(
                        "creating the directory of SQLITE_PATH {}",
                        config.sqlite_path.display()
                    )
                })?;
            }
            Database::Sqlite(SqliteStore::open(
                &config.sqlite_path,
                config.db_max_connections,
                acquire_timeout,
                metrics,
            ))
        }
    })
}

impl Application {
    /// Validates `config`, opens the stores, applies migrations when asked and binds the gRPC
    /// and metrics listeners (port 0 picks a free port; see [`Self::grpc_addr`]).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        config.validate()?;
        let metrics = Arc::new(Metrics::new());
        let mut database = open_migrated_database(&config, metrics.clone()).await?;
        let jetstream = connect_jetstream(&config).await?;
        // Without a broker the process's own commits are the feed, connected from the start.
        let live = LiveEvents::new(
            config.watch_buffer_events as usize,
            jetstream.is_none(),
            metrics.clone(),
        );
        let outbox_written = Arc::new(Notify::new());
        if jetstream.is_none() {
            database.feed_commits_to(live.clone());
        } else {
            database.wake_on_commits(outbox_written.clone());
        }
        let store = Arc::new(open_cached_store(&config, &database, &metrics)?);
        let grpc_listener = TcpListener::bind(config.grpc_addr)
            .await
            .with_context(|| format!("binding GRPC_ADDR {}", config.grpc_addr))?;
        let metrics_listener = TcpListener::bind(config.metrics_addr)
            .await
            .with_context(|| format!("binding METRICS_ADDR {}", config.metrics_addr))?;
        let grpc_addr = grpc_listener.local_addr()?;
        let metrics_addr = metrics_listener.local_addr()?;
        Ok(Self {
            config,
            grpc_listener,
            metrics_listener,
            grpc_addr,
            metrics_addr,
            database,
            store,
            metrics,
            jetstream,
            outbox_written,
            live,
        })
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc_addr
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr
    }

    /// Serves gRPC and `/metrics` until `shutdown` completes, then drains: readiness turns
    /// NOT_SERVING at once while calls are still served for `DRAIN_DELAY_MS` (load balancers
    /// stop sending), then the listener closes, in-flight calls finish (up to
    /// `SHUTDOWN_GRACE_SECS`) and the pool closes. Liveness stays SERVING throughout.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            config,
            grpc_listener,
            metrics_listener,
            database,
            store,
            metrics,
            jetstream,
            outbox_written,
            live,
            ..
        } = self;
        let purge = tokio::spawn(purge_idempotency_keys(database.clone()));
        // The backlog gauge has its own task: a relay stuck on an unreachable broker must not
        // freeze it.
        let backlog = tokio::spawn(relay::watch_backlog(
            database.clone(),
            metrics.clone(),
            Duration::from_secs(1),
        ));
        let live_feed = jetstream.clone().map(|js| {
            tokio::spawn(live::follow_jetstream(
                js,
                live.clone(),
                stream_replicas(&config),
            ))
        });
        let relay = jetstream.map(|js| {
            tokio::spawn(relay::run(
                database.clone(),
                js,
                metrics.clone(),
                RelaySettings {
                    stream_replicas: stream_replicas(&config),
                    ..RelaySettings::default()
                },
                outbox_written,
            ))
        });
        let (stop_tx, stop_rx) = watch::channel(false);
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });

        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status(health::LIVENESS, ServingStatus::Serving)
            .await;
        health::set_readiness(&health, ServingStatus::NotServing).await;
        let probe = tokio::spawn(health::probe_database(
            store.clone(),
            health.clone(),
            Duration::from_millis(config.health_probe_interval_ms),
            config.readiness_failure_threshold,
            metrics.clone(),
        ));

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(meshgate_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building the reflection service")?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(meshgate_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .context("building the reflection service")?;
        // One implementation serves both versions (proto/README.md, "API versioning").
        let api = Arc::new(
            UserApi::new(store, live.clone(), metrics.clone())
                .with_idempotency_ttl(Duration::from_secs(config.idempotency_ttl_secs)),
        );
        let users = UserServiceServer::from_arc(api.clone())
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes);
        let users_v2 = UserServiceV2Server::from_arc(api)
            .max_decoding_message_size(config.max_message_bytes)
            .max_encoding_message_size(config.max_message_bytes);

        let (drained_tx, drained_rx) = watch::channel(false);
        let metrics_server =
            spawn_metrics_server(metrics_listener, &metrics, &database, drained_rx.clone());

        // Small request/response frames: never wait for Nagle.
        let incoming = TcpListenerStream::new(grpc_listener).map(|connection| {
            connection.inspect(|stream| {
                let _ = stream.set_nodelay(true);
            })
        });
        let drain_delay = Duration::from_millis(config.drain_delay_ms);
        let server = tonic::transport::Server::builder()
            // Browsers' gRPC-web calls may come over HTTP/1.1.
            .accept_http1(config.grpc_web)
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .layer(tower::util::option_layer(grpc_web_layer(&config)))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(users)
            .add_service(users_v2)
            .serve_with_incoming_shutdown(incoming, {
                let health = health.clone();
                let stop = stopped(stop_rx);
                async move {
                    stop.await;
                    // The probe must not turn readiness back on once the drain has begun.
                    probe.abort();
                    let _ = probe.await;
                    health::set_readiness(&health, ServingStatus::NotServing).await;
                    metrics.ready.set(0);
                    tracing::info!(
                        ?drain_delay,
                        "draining: readiness NOT_SERVING, still serving until the delay ends"
                    );
                    tokio::time::sleep(drain_delay).await;
                    tracing::info!("shutting down: no new calls, finishing in-flight ones");
                    // Watch streams never finish by themselves: end them (UNAVAILABLE, so
                    // their clients watch again elsewhere).
                    live.stop();
                    let _ = drained_tx.send(true);
                }
            });
        let grace = Duration::from_secs(config.shutdown_grace_secs);
        let deadline = async move {
            stopped(drained_rx).await;
            tokio::time::sleep(grace).await;
        };
        let outcome = tokio::select! {
            served = server => served.context("gRPC server failed"),
            () = deadline => {
                tracing::warn!(?grace, "in-flight calls outlived the shutdown grace period");
                Ok(())
            }
        };
        let _ = metrics_server.await;
        backlog.abort();
        let _ = backlog.await;
        for task in relay.into_iter().chain(live_feed) {
            task.abort();
            let _ = task.await;
        }
        purge.abort();
        let _ = purge.await;
        database.close().await;
        tracing::info!("shutdown complete");
        outcome
    }
}

/// Deletes expired idempotency keys now and then (any replica may; the deletes are idempotent).
async fn purge_idempotency_keys(database: Database) {
    loop {
        tokio::time::sleep(Duration::from_secs(300)).await;
        if let Ok(purged) = database.purge_expired_idempotency_keys().await
            && purged > 0
        {
            tracing::info!(purged, "expired idempotency keys purged");
        }
    }
}

/// The read-through cache over `database` (Redis when REDIS_URL is set, else in-process).
fn open_cached_store(
    config: &Config,
    database: &Database,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<CachedStore<Database>> {
    let cache = match &config.redis_url {
        Some(url) => CacheBackend::redis(url, Duration::from_millis(config.cache_timeout_ms))
            .context("configuring the Redis cache")?,
        None => CacheBackend::local(
            config.local_cache_capacity,
            Duration::from_secs(config.cache_ttl_secs),
        ),
    };
    Ok(CachedStore::new(
        database.clone(),
        cache,
        config.cache_settings(),
        metrics.clone(),
    ))
}

/// `NATS_STREAM_REPLICAS` (validated to 1..=5 by clap).
fn stream_replicas(config: &Config) -> usize {
    usize::try_from(config.nats_stream_replicas).unwrap_or(1)
}

async fn connect_jetstream(
    config: &Config,
) -> anyhow::Result<Option<async_nats::jetstream::Context>> {
    match &config.nats_url {
        Some(url) => Ok(Some(async_nats::jetstream::new(relay::connect(url).await?))),
        None => Ok(None),
    }
}

/// `user-service worker`: consumes `USERS` (audit trail, cache warming) and serves `/metrics`
/// until `shutdown` completes. Needs NATS_URL; the cache is warmed usefully only when it is
/// shared (REDIS_URL).
pub async fn run_worker(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.validate()?;
    if config.nats_url.is_none() {
        return Err(crate::ConfigError {
            setting: "NATS_URL (--nats-url)",
            problem: "the worker needs a broker: set it to the NATS JetStream URL".to_owned(),
        }
        .into());
    }
    let metrics = Arc::new(Metrics::new());
    // /livez and /metrics answer from the start: a slow migration or an unreachable broker is
    // visible on /metrics and in the logs, and is no reason for the kubelet to restart the pod.
    let database = open_database(&config, metrics.clone())?;
    let metrics_listener = TcpListener::bind(config.metrics_addr)
        .await
        .with_context(|| format!("binding METRICS_ADDR {}", config.metrics_addr))?;
    tracing::info!(metrics_addr = %metrics_listener.local_addr()?, "user-service worker started");
    let (stop_tx, stop_rx) = watch::channel(false);
    let metrics_server = spawn_metrics_server(metrics_listener, &metrics, &database, stop_rx);
    migrate_if_configured(&config, &database).await?;
    let cache = config
        .redis_url
        .is_some()
        .then(|| open_cached_store(&config, &database, &metrics))
        .transpose()?
        .map(Arc::new);
    let js = connect_jetstream(&config)
        .await?
        .expect("NATS_URL checked above");
    let settings = WorkerSettings {
        stream_replicas: stream_replicas(&config),
        ..WorkerSettings::default()
    };
    let work = async {
        let mut backoff = relay::Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            match worker::run(
                database.clone(),
                cache.clone(),
                js.clone(),
                metrics.clone(),
                settings.clone(),
            )
            .await
            {
                Ok(()) => tracing::warn!("worker: message stream ended; resubscribing"),
                Err(error) => tracing::warn!(error = format!("{error:#}"), "worker: restarting"),
            }
            tokio::time::sleep(backoff.failed()).await;
        }
    };
    tokio::select! {
        _ = work => {}
        () = shutdown => tracing::info!("worker stopping"),
    }
    let _ = stop_tx.send(true);
    let _ = metrics_server.await;
    database.close().await;
    Ok(())
}

/// gRPC-web (tonic-web) behind CORS for the configured origins, when `GRPC_WEB` is on. Native
/// gRPC passes both untouched.
fn grpc_web_layer(config: &Config) -> Option<Stack<GrpcWebLayer, CorsLayer>> {
    use http::{HeaderName, HeaderValue, Method};
    use tower_http::cors::{AllowHeaders, AllowOrigin};

    if !config.grpc_web {
        return None;
    }
    let origins = &config.grpc_web_allowed_origins;
    let allow_origin = if origins.iter().any(|origin| origin == "*") {
        AllowOrigin::any()
    } else {
        // Validated as header values by `Config::validate`.
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        )
    };
    let cors = CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::POST])
        // Echoing the requested headers lets custom metadata through (as the edge does).
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers([
            HeaderName::from_static("grpc-status"),
            HeaderName::from_static("grpc-message"),
            HeaderName::from_static("grpc-status-details-bin"),
        ])
        .max_age(Duration::from_secs(24 * 60 * 60));
    Some(Stack::new(GrpcWebLayer::new(), cors))
}

/// Resolves once the flag is raised.
/// The `/metrics` server (with the database pool's gauges) until `stop` turns true.
fn spawn_metrics_server(
    listener: TcpListener,
    metrics: &Arc<Metrics>,
    database: &Database,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let database = database.clone();
    tokio::spawn(metrics::serve(
        listener,
        metrics.clone(),
        move || database.pool_stats(),
        stopped(stop),
    ))
}

async fn stopped(mut flag: watch::Receiver<bool>) {
    // An error means the sender is gone, which only happens after it signalled (or the server
    // failed before draining; then nothing is left to wait for).
    let _ = flag.wait_for(|raised| *raised).await;
}
