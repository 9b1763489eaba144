//! Wiring: the pingora `Server` with the proxy service (REST, gRPC-web and h2c gRPC on one
//! port) behind the connection gate, the metrics service and the upstream discovery and
//! health-check background service.

use std::{net::TcpListener, os::fd::IntoRawFd, sync::Arc};

use async_trait::async_trait;
use pingora::{
    apps::HttpServerOptions,
    protocols::http::ServerSession,
    proxy::http_proxy,
    server::{
        ListenFds, RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch,
        configuration::{Opt, ServerConf},
    },
    services::{Service as PingoraService, background::background_service, listening::Service},
};

use crate::{
    config::GatewayConfig,
    conn_limits::effective_max,
    hooks::FilterChain,
    listener::{ConnectionGate, ConnectionTracker},
    metrics::Metrics,
    proxy::GatewayProxy,
    state::{GatewayState, StartError, load_pool},
    upstream::{UpstreamMaintenance, UpstreamPool, Upstreams},
};

/// Raises the soft open-file limit to the hard one and returns it (`None`: unknown/unlimited).
fn open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum
        && setrlimit(
            Resource::Nofile,
            Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            },
        )
        .is_ok()
    {
        return limit.maximum;
    }
    limit.current
}

/// Serves `/metrics` on the metrics port.
struct MetricsApp {
    metrics: Arc<Metrics>,
}

#[async_trait]
impl pingora::apps::http_app::ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let (status, body) = if session.req_header().uri.path() == "/metrics" {
            (200, self.metrics.render().into_bytes())
        } else {
            (404, b"not found\n".to_vec())
        };
        http::Response::builder()
            .status(status)
            .header("content-type", "text/plain; version=0.0.4")
            .header("content-length", body.len())
            .body(body)
            .expect("static response parts are valid")
    }
}

/// Sockets bound before the server is built (tests, embedding). A service given one listens
/// on it instead of binding its configured address, so no other process or test can take the
/// port in between; the config's address becomes the socket's.
#[derive(Debug, Default)]
pub struct Listeners {
    /// `gateway.listen`.
    pub main: Option<TcpListener>,
    /// `gateway.tls.listen`.
    pub tls: Option<TcpListener>,
    /// `gateway.metrics_listen`.
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Points the config's addresses at the given sockets.
    fn apply_to(&self, config: &mut GatewayConfig) -> Result<(), StartError> {
        let bound = |listener: &TcpListener| {
            listener
                .local_addr()
                .map_err(|e| StartError::Server(format!("pre-bound listener: {e}")))
        };
        if let Some(listener) = &self.main {
            config.listen = bound(listener)?;
        }
        if let (Some(listener), Some(tls)) = (&self.tls, &mut config.tls) {
            tls.0 = bound(listener)?;
        }
        if let Some(listener) = &self.metrics {
            config.metrics_listen = Some(bound(listener)?);
        }
        Ok(())
    }
}

/// A pingora service whose sockets the caller bound. They go into pingora's table of
/// inherited listening sockets (the one a graceful upgrade fills from the old process), keyed
/// by address as pingora keys them, so the service takes them from there instead of binding.
struct PreBound<S> {
    inner: S,
    sockets: Vec<(String, TcpListener)>,
}

impl<S> PreBound<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            sockets: Vec::new(),
        }
    }

    fn add(&mut self, addr: &std::net::SocketAddr, socket: Option<TcpListener>) {
        if let Some(socket) = socket {
            self.sockets.push((addr.to_string(), socket));
        }
    }
}

#[async_trait]
impl<S: PingoraService> PingoraService for PreBound<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        if let Some(fds) = &fds {
            let mut table = fds.lock();
            for (addr, socket) in self.sockets.drain(..) {
                // pingora's accept loop is async: the socket must not block.
                match socket.set_nonblocking(true) {
                    Ok(()) => table.add(addr, socket.into_raw_fd()),
                    Err(error) => tracing::warn!(%addr, %error, "pre-bound socket not used"),
                }
            }
        }
        self.inner
            .start_service(fds, shutdown, listeners_per_fd)
            .await;
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }

    fn runtime_opts_override(
        &self,
        global: &pingora::server::RuntimeOpts,
    ) -> Option<pingora::server::RuntimeOpts> {
        self.inner.runtime_opts_override(global)
    }

    fn listen_addresses(&self) -> Option<Vec<String>> {
        self.inner.listen_addresses()
    }
}

/// Builds the pingora server for `config`. `opt` carries pingora's own flags (upgrade, daemon).
pub fn build_server(
    config: GatewayConfig,
    opt: Option<Opt>,
    filters: FilterChain,
) -> Result<(Server, Arc<GatewayState>), StartError> {
    build_server_on(config, opt, filters, Listeners::default())
}

/// [`build_server`] on sockets bound by the caller.
pub fn build_server_on(
    mut config: GatewayConfig,
    opt: Option<Opt>,
    filters: FilterChain,
    listeners: Listeners,
) -> Result<(Server, Arc<GatewayState>), StartError> {
    listeners.apply_to(&mut config)?;
    let server_conf = match &config.server {
        Some(text) => ServerConf::from_yaml(text).map_err(|e| StartError::Server(e.to_string()))?,
        None => {
            let mut conf =
                ServerConf::new().ok_or_else(|| StartError::Server("default config".into()))?;
            conf.threads = 2;
            conf.grace_period_seconds = Some(0);
            conf.graceful_shutdown_timeout_seconds = Some(1);
            conf
        }
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf);

    let pool = load_pool(&config)?;
    let names: Vec<String> = config
        .upstream
        .targets
        .iter()
        .filter(|target| matches!(target, crate::discovery::UpstreamTarget::Name { .. }))
        .map(crate::discovery::UpstreamTarget::label)
        .collect();
    let metrics = Arc::new(Metrics::new(&names));
    for collector in filters.metrics() {
        metrics.register(collector);
    }
    let endpoints = Arc::new(UpstreamPool::new(&config.upstream, metrics.clone()));
    let maintenance = UpstreamMaintenance::new(endpoints.clone(), config.upstream.clone())
        .map_err(|e| StartError::Upstreams(e.to_string()))?;
    let background = background_service("upstream discovery and health", maintenance);
    let upstreams = Upstreams::new(&config.upstream, endpoints);
    let max_connections = effective_max(config.connections.max, open_file_limit());
    if max_connections < config.connections.max {
        tracing::warn!(
            configured = config.connections.max,
            effective = max_connections,
            "gateway.connections.max lowered to stay below the open-file limit"
        );
    }
    tracing::info!(
        max_connections,
        max_per_client_ip = config.connections.max_per_client_ip,
        "downstream connection caps"
    );
    let tracker = Arc::new(ConnectionTracker::new(config.connections, max_connections));
    let state = GatewayState::new(
        config.clone(),
        pool,
        upstreams,
        filters,
        tracker.clone(),
        metrics.clone(),
    )?;

    let mut app = http_proxy(
        &server.configuration,
        GatewayProxy {
            state: state.clone(),
        },
    );
    let mut options = HttpServerOptions::default();
    // gRPC clients speak h2c with prior knowledge on the same port as HTTP/1.1.
    options.h2c = true;
    options.h2_idle_timeout = Some(config.connections.idle_timeout);
    app.server_options = Some(options);
    let gate = ConnectionGate {
        inner: Arc::new(app),
        tracker,
        metrics: metrics.clone(),
    };
    let mut proxy = PreBound::new(Service::new("edge gateway".to_owned(), gate));
    proxy.inner.add_tcp(&config.listen.to_string());
    proxy.add(&config.listen, listeners.main);
    // The same proxy (REST, gRPC-web, gRPC) over TLS; ALPN picks h2 or HTTP/1.1.
    #[cfg(feature = "rustls")]
    if let Some((addr, cert, key)) = &config.tls {
        let tls =
            crate::tls::listener_settings(cert, key).map_err(|e| StartError::Tls(e.to_string()))?;
        proxy
            .inner
            .add_tls_with_settings(&addr.to_string(), None, tls);
        proxy.add(addr, listeners.tls);
    }
    #[cfg(not(feature = "rustls"))]
    if config.tls.is_some() {
        return Err(StartError::Tls(
            "gateway.tls: this edge-gateway was built without TLS (cargo feature `rustls`)".into(),
        ));
    }
    server.add_service(proxy);
    server.add_service(background);
    if let Some(auth) = &state.auth {
        server.add_service(background_service(
            "JWKS refresh",
            crate::auth::JwksRefresh(auth.clone()),
        ));
    }
    if let Some(addr) = config.metrics_listen {
        let mut metrics_service =
            PreBound::new(Service::new("metrics".to_owned(), MetricsApp { metrics }));
        metrics_service.inner.add_tcp(&addr.to_string());
        metrics_service.add(&addr, listeners.metrics);
        server.add_service(metrics_service);
    }
    Ok((server, state))
}

/// Shutdown trigger for an embedded gateway.
struct NotifyShutdown(Arc<tokio::sync::Notify>);

#[async_trait]
impl ShutdownSignalWatch for NotifyShutdown {
    async fn recv(&self) -> ShutdownSignal {
        self.0.notified().await;
        ShutdownSignal::FastShutdown
    }
}

/// A gateway running on its own threads (tests, benchmarks, embedding).
pub struct RunningGateway {
    pub addr: std::net::SocketAddr,
    pub state: Arc<GatewayState>,
    shutdown: Arc<tokio::sync::Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningGateway {
    pub fn start(config: GatewayConfig, filters: FilterChain) -> Result<Self, StartError> {
        Self::start_on(config, filters, Listeners::default())
    }

    /// On sockets bound by the caller (see [`Listeners`]).
    pub fn start_on(
        config: GatewayConfig,
        filters: FilterChain,
        listeners: Listeners,
    ) -> Result<Self, StartError> {
        let (mut server, state) = build_server_on(config, None, filters, listeners)?;
        let addr = state.config.listen;
        server.bootstrap();
        let shutdown = Arc::new(tokio::sync::Notify::new());
        let signal = NotifyShutdown(shutdown.clone());
        let running_state = state.clone();
        let thread = std::thread::spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(signal),
            });
            // Every request has finished: export the spans still queued.
            running_state.flush_spans();
        });
        Ok(Self {
            addr,
            state,
            shutdown,
            thread: Some(thread),
        })
    }

    pub fn stop(&mut self) {
        self.shutdown.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        self.shutdown.notify_one();
    }
}
