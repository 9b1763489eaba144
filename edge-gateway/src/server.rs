//! Wiring: the pingora `Server` with the proxy (REST, gRPC-web and h2c gRPC on one port) behind
//! the connection gate, the metrics service and the upstream discovery and health-check
//! background service. The proxy is `server.threads` workers ([`crate::workers`]): pingora
//! services of one thread each, sharing the listening socket, so a connection and the upstream
//! connections its requests use stay on one thread. (One service of several threads moved a
//! connection's HTTP/2 streams and their upstream I/O between threads: futex wake-ups and
//! context switches on every request, `BENCHMARKS.md`.)

use std::{
    collections::HashMap,
    net::TcpListener,
    os::fd::{BorrowedFd, IntoRawFd, OwnedFd, RawFd},
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use pingora::{
    apps::HttpServerOptions,
    protocols::http::ServerSession,
    proxy::http_proxy,
    server::{
        Fds, ListenFds, RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch,
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
    /// Binds each configured address the caller did not bind (port 0: any free port), so a
    /// port that cannot be had fails the start, before any worker runs. A port in use is waited
    /// for up to [`BIND_ATTEMPTS`] seconds, as pingora's own bind waits (an old process may
    /// still be closing it).
    fn bind_configured(&mut self, config: &GatewayConfig) -> Result<(), StartError> {
        bind_unless_bound(&mut self.main, config.listen)?;
        if let Some((addr, ..)) = &config.tls {
            bind_unless_bound(&mut self.tls, *addr)?;
        }
        if let Some(addr) = config.metrics_listen {
            bind_unless_bound(&mut self.metrics, addr)?;
        }
        Ok(())
    }

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

/// Seconds a port in use is waited for at start.
const BIND_ATTEMPTS: u32 = 30;

fn bind_unless_bound(
    socket: &mut Option<TcpListener>,
    addr: std::net::SocketAddr,
) -> Result<(), StartError> {
    let mut attempt = 1;
    while socket.is_none() {
        match TcpListener::bind(addr) {
            Ok(bound) => *socket = Some(bound),
            Err(error)
                if error.kind() == std::io::ErrorKind::AddrInUse && attempt < BIND_ATTEMPTS =>
            {
                tracing::warn!(%addr, attempt, "address in use; trying again in 1 s");
                std::thread::sleep(std::time::Duration::from_secs(1));
                attempt += 1;
            }
            Err(source) => return Err(StartError::Listen { addr, source }),
        }
    }
    Ok(())
}

/// The listening sockets of one set of worker services, shared by them. Each address's socket
/// (bound by [`build_server_on`], or, in a graceful upgrade, found in pingora's table of
/// listening sockets where the old process's are put) is taken by the first worker to start,
/// recorded in that table (what a later upgrade hands over) and duplicated for every further
/// worker: all workers accept from the one socket's queue, and the kernel gives each new
/// connection to one of them. Worker 0 listens on the recorded socket itself, so the address
/// stops accepting once every worker has stopped.
struct SharedSockets {
    workers: usize,
    /// Sockets the caller bound, by address.
    pre_bound: Mutex<HashMap<String, TcpListener>>,
    /// Per address, each worker's socket until that worker takes it.
    unclaimed: Mutex<HashMap<String, Vec<Option<RawFd>>>>,
}

impl SharedSockets {
    fn new(workers: usize, pre_bound: Vec<(String, TcpListener)>) -> Self {
        Self {
            workers,
            pre_bound: Mutex::new(pre_bound.into_iter().collect()),
            unclaimed: Mutex::new(HashMap::new()),
        }
    }

    /// Worker `worker`'s socket for `addr` (`None`: it could not be bound; the worker's pingora
    /// listener then binds, and fails, by itself).
    fn claim(&self, table: &ListenFds, addr: &str, worker: usize) -> Option<RawFd> {
        let mut unclaimed = self.unclaimed.lock().unwrap_or_else(|e| e.into_inner());
        if !unclaimed.contains_key(addr) {
            match self.share(table, addr) {
                Ok(sockets) => {
                    unclaimed.insert(addr.to_owned(), sockets);
                }
                Err(error) => {
                    tracing::error!(%addr, %error, "cannot listen");
                    return None;
                }
            }
        }
        unclaimed.get_mut(addr)?.get_mut(worker)?.take()
    }

    /// `addr`'s socket, recorded in pingora's table, and a duplicate of it per further worker.
    fn share(&self, table: &ListenFds, addr: &str) -> std::io::Result<Vec<Option<RawFd>>> {
        let mut table = table.lock();
        let socket = match table.get(addr) {
            Some(socket) => *socket,
            None => {
                let pre_bound = self
                    .pre_bound
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(addr);
                let listener = match pre_bound {
                    Some(listener) => listener,
                    // An address a graceful upgrade did not hand over (a new one in the config).
                    None => TcpListener::bind(addr)?,
                };
                // pingora's accept loop is async: the socket must not block.
                listener.set_nonblocking(true)?;
                let socket = listener.into_raw_fd();
                table.add(addr.to_owned(), socket);
                socket
            }
        };
        let mut sockets = vec![Some(socket)];
        for _ in 1..self.workers {
            sockets.push(Some(duplicate(socket)?.into_raw_fd()));
        }
        Ok(sockets)
    }
}

/// A new descriptor (close-on-exec) of the listening socket `socket`.
#[allow(unsafe_code)]
fn duplicate(socket: RawFd) -> std::io::Result<OwnedFd> {
    // SAFETY: `socket` is a listening socket in pingora's table that nothing has taken yet:
    // [`SharedSockets::share`] duplicates it before handing it to worker 0's listener, the only
    // owner that ever closes it, so it is open for the whole borrow.
    let socket = unsafe { BorrowedFd::borrow_raw(socket) };
    socket.try_clone_to_owned()
}

/// One worker: a pingora service run on a runtime of one thread, accepting on its
/// [`SharedSockets`], its thread marked as upstream slot `upstream_slot` ([`crate::workers`]).
struct Worker<S> {
    inner: S,
    index: usize,
    upstream_slot: usize,
    sockets: Arc<SharedSockets>,
}

#[async_trait]
impl<S: PingoraService> PingoraService for Worker<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        crate::workers::enter(self.upstream_slot);
        // The worker's own table: its socket under each address, where its listener looks.
        let own = fds.map(|table| {
            let own: ListenFds = Arc::new(parking_lot::Mutex::new(Fds::new()));
            for addr in self.inner.listen_addresses().unwrap_or_default() {
                if let Some(socket) = self.sockets.claim(&table, &addr, self.index) {
                    own.lock().add(addr, socket);
                }
            }
            own
        });
        self.inner
            .start_service(own, shutdown, listeners_per_fd)
            .await;
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        Some(1)
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
/// Every configured address is bound here, unless `opt` asks for a graceful upgrade (the old
/// process hands its sockets over).
pub fn build_server(
    config: GatewayConfig,
    opt: Option<Opt>,
    filters: FilterChain,
) -> Result<(Server, Arc<GatewayState>), StartError> {
    build_server_on(config, opt, filters, Listeners::default())
}

/// [`build_server`] on sockets bound by the caller (the rest are bound here as there).
pub fn build_server_on(
    mut config: GatewayConfig,
    opt: Option<Opt>,
    filters: FilterChain,
    mut listeners: Listeners,
) -> Result<(Server, Arc<GatewayState>), StartError> {
    let upgrade = opt.as_ref().is_some_and(|opt| opt.upgrade);
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
    // One proxy service of one thread per worker: see `workers`.
    let workers = server.configuration.threads.max(1);
    let endpoints = Arc::new(UpstreamPool::new(
        &config.upstream,
        metrics.clone(),
        workers,
    ));
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
    if !upgrade {
        listeners.bind_configured(&config)?;
    }
    // Port 0 became a port: the config (and so `state.config`) names the one bound.
    listeners.apply_to(&mut config)?;
    let state = GatewayState::new(
        config.clone(),
        pool,
        upstreams,
        filters,
        tracker.clone(),
        metrics.clone(),
    )?;

    let mut options = HttpServerOptions::default();
    // gRPC clients speak h2c with prior knowledge on the same port as HTTP/1.1.
    options.h2c = true;
    options.h2_idle_timeout = Some(config.connections.idle_timeout);
    #[cfg(not(feature = "rustls"))]
    if config.tls.is_some() {
        return Err(StartError::Tls(
            "gateway.tls: this edge-gateway was built without TLS (cargo feature `rustls`)".into(),
        ));
    }
    let mut pre_bound = Vec::new();
    if let Some(socket) = listeners.main {
        pre_bound.push((config.listen.to_string(), socket));
    }
    if let (Some(socket), Some((addr, ..))) = (listeners.tls, &config.tls) {
        pre_bound.push((addr.to_string(), socket));
    }
    let sockets = Arc::new(SharedSockets::new(workers, pre_bound));
    for index in 0..workers {
        // Each worker its own app: pingora's upstream connection pool (the native gRPC
        // pass-through's) is the app's, so the worker's connections stay on its thread.
        let mut app = http_proxy(
            &server.configuration,
            GatewayProxy {
                state: state.clone(),
            },
        );
        app.server_options = Some(options.clone());
        let gate = ConnectionGate {
            inner: Arc::new(app),
            tracker: tracker.clone(),
            metrics: metrics.clone(),
        };
        // The service's name is its thread's: short enough for the kernel's 15 bytes, so
        // `top -H` and `perf` tell the workers apart.
        let mut proxy = Service::new(format!("edge worker {}", index + 1), gate);
        proxy.add_tcp(&config.listen.to_string());
        // The same proxy (REST, gRPC-web, gRPC) over TLS; ALPN picks h2 or HTTP/1.1.
        #[cfg(feature = "rustls")]
        if let Some((addr, cert, key)) = &config.tls {
            // Each worker's listener its own settings (they are not `Clone`).
            let settings = crate::tls::listener_settings(cert, key)
                .map_err(|e| StartError::Tls(e.to_string()))?;
            proxy.add_tls_with_settings(&addr.to_string(), None, settings);
        }
        server.add_service(Worker {
            inner: proxy,
            index,
            upstream_slot: index + 1,
            sockets: sockets.clone(),
        });
    }
    server.add_service(background);
    if let Some(auth) = &state.auth {
        server.add_service(background_service(
            "JWKS refresh",
            crate::auth::JwksRefresh(auth.clone()),
        ));
    }
    if let Some(addr) = config.metrics_listen {
        let mut metrics_service = Service::new("metrics".to_owned(), MetricsApp { metrics });
        metrics_service.add_tcp(&addr.to_string());
        let pre_bound = listeners
            .metrics
            .map(|socket| (addr.to_string(), socket))
            .into_iter()
            .collect();
        server.add_service(Worker {
            inner: metrics_service,
            index: 0,
            // Not a proxy worker: it calls no upstream.
            upstream_slot: 0,
            sockets: Arc::new(SharedSockets::new(1, pre_bound)),
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The socket behind a descriptor of this process, as the kernel names it.
    fn socket_of(fd: RawFd) -> std::path::PathBuf {
        std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap()
    }

    fn table() -> ListenFds {
        Arc::new(parking_lot::Mutex::new(Fds::new()))
    }

    #[test]
    fn each_worker_gets_its_own_descriptor_of_the_one_socket() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let sockets = SharedSockets::new(3, vec![(addr.clone(), listener)]);
        let table = table();
        let claimed: Vec<RawFd> = [2, 0, 1]
            .into_iter()
            .map(|worker| sockets.claim(&table, &addr, worker).unwrap())
            .collect();
        let mut distinct = claimed.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 3, "one descriptor per worker: {claimed:?}");
        let socket = socket_of(claimed[0]);
        assert!(
            socket.to_string_lossy().starts_with("socket:"),
            "{socket:?}"
        );
        assert!(claimed.iter().all(|fd| socket_of(*fd) == socket));
        // Worker 0's is the one recorded for a later upgrade.
        assert_eq!(table.lock().get(&addr), Some(&claimed[1]));
        // Each is handed out once.
        assert_eq!(sockets.claim(&table, &addr, 1), None);
    }

    /// After a graceful upgrade the socket is the old process's, already in pingora's table:
    /// shared as it is, whatever the old process's worker count was.
    #[test]
    fn an_inherited_socket_is_shared_not_bound_again() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let inherited = listener.into_raw_fd();
        let table = table();
        table.lock().add(addr.clone(), inherited);
        let sockets = SharedSockets::new(2, Vec::new());
        assert_eq!(sockets.claim(&table, &addr, 0), Some(inherited));
        let second = sockets.claim(&table, &addr, 1).unwrap();
        assert_ne!(second, inherited);
        assert_eq!(socket_of(second), socket_of(inherited));
    }

    #[test]
    fn an_address_that_cannot_be_bound_is_left_to_the_listener() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let sockets = SharedSockets::new(2, Vec::new());
        assert_eq!(sockets.claim(&table(), &addr, 0), None);
    }
}
