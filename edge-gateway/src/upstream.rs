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

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::{Buf, BufMut, Bytes};
use pingora::{server::ShutdownWatch, services::background::BackgroundService};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::MetadataMap,
    transport::Channel,
};
use tower::retry::budget::{Budget, TpsBudget};

use crate::{
    balance::{self, ActiveHealth, Candidate, HealthThresholds, Outlier, OutlierSettings},
    config::{DnsSettings, GatewayConfig},
    discovery::{self, Lookup, Membership, UpstreamTarget},
    dns::Resolver,
    error::GatewayError,
    metrics,
};

/// Passes encoded messages through untouched.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

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

#[derive(Debug)]
struct EndpointState {
    health: ActiveHealth,
    outlier: Outlier,
}

/// One upstream address.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `http://host:port` for resolved names: the `:authority` the calls carry.
    origin: Option<http::Uri>,
    connect_timeout: Duration,
    /// Channels are created on first use because tonic spawns the connection's task on the
    /// current runtime: traffic on pingora's proxy runtime, checks on the background one.
    traffic: OnceLock<Channel>,
    checks: OnceLock<Channel>,
    state: Mutex<EndpointState>,
}

impl Endpoint {
    fn new(
        addr: SocketAddr,
        origin: Option<http::Uri>,
        connect_timeout: Duration,
        health: ActiveHealth,
    ) -> Self {
        Self {
            addr,
            origin,
            connect_timeout,
            traffic: OnceLock::new(),
            checks: OnceLock::new(),
            state: Mutex::new(EndpointState {
                health,
                outlier: Outlier::default(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, EndpointState> {
        // A poisoned lock only means a panic mid-update; the state is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn channel(&self, cell: &OnceLock<Channel>) -> Channel {
        cell.get_or_init(|| {
            let mut endpoint =
                tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
                    .expect("a socket address is a valid URI authority")
                    .connect_timeout(self.connect_timeout)
                    .tcp_nodelay(true)
                    .http2_adaptive_window(true);
            if let Some(origin) = &self.origin {
                endpoint = endpoint.origin(origin.clone());
            }
            endpoint.connect_lazy()
        })
        .clone()
    }

    /// The traffic channel; must be called from within a tokio runtime.
    pub fn traffic_channel(&self) -> Channel {
        self.channel(&self.traffic)
    }

    fn candidate(&self, now: Instant, tried: &[SocketAddr]) -> Candidate {
        let state = self.state();
        Candidate {
            pending: state.health.is_pending(),
            available: state.health.is_healthy() && !state.outlier.is_ejected(now),
            tried: tried.contains(&self.addr),
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.state().health.is_healthy()
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

/// The endpoint set and how to pick from it; shared by the proxy and the background service.
pub struct UpstreamPool {
    targets: Vec<UpstreamTarget>,
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    membership: Mutex<Membership>,
    next: AtomicUsize,
    connect_timeout: Duration,
    panic_threshold_percent: u8,
    outlier: OutlierSettings,
    health_thresholds: HealthThresholds,
}

impl UpstreamPool {
    pub fn new(settings: &UpstreamSettings) -> Self {
        let pool = Self {
            targets: settings.targets.clone(),
            endpoints: ArcSwap::from_pointee(Vec::new()),
            membership: Mutex::new(Membership::new(settings.targets.len())),
            next: AtomicUsize::new(0),
            connect_timeout: settings.connect_timeout,
            panic_threshold_percent: settings.panic_threshold_percent,
            outlier: settings.outlier,
            health_thresholds: settings.health_thresholds,
        };
        for (index, target) in settings.targets.iter().enumerate() {
            if let UpstreamTarget::Address(addr) = target {
                pool.apply(index, BTreeSet::from([*addr]));
            }
        }
        pool
    }

    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.load_full()
    }

    /// An endpoint this request has not tried yet ([`balance::pick`]).
    pub fn pick(&self, tried: &[SocketAddr]) -> Option<Arc<Endpoint>> {
        let endpoints = self.endpoints.load();
        if endpoints.is_empty() {
            return None;
        }
        let now = Instant::now();
        let candidates: Vec<Candidate> = endpoints
            .iter()
            .map(|endpoint| endpoint.candidate(now, tried))
            .collect();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % endpoints.len();
        let pick = balance::pick(&candidates, start, self.panic_threshold_percent)?;
        if pick.panic {
            metrics::PANIC_ROUTED.inc();
        }
        Some(endpoints[pick.index].clone())
    }

    /// True when a pick for a request that tried `tried` would find an endpoint.
    pub fn has_untried(&self, tried: &[SocketAddr]) -> bool {
        let endpoints = self.endpoints.load();
        let now = Instant::now();
        let candidates: Vec<Candidate> = endpoints
            .iter()
            .map(|endpoint| endpoint.candidate(now, tried))
            .collect();
        balance::pick(&candidates, 0, self.panic_threshold_percent).is_some()
    }

    /// The endpoint at `addr`, if it is still a member.
    pub fn endpoint(&self, addr: SocketAddr) -> Option<Arc<Endpoint>> {
        self.endpoints
            .load()
            .iter()
            .find(|endpoint| endpoint.addr == addr)
            .cloned()
    }

    /// Passive health: consecutive transport failures eject the endpoint for a while, unless
    /// that would leave fewer available than the panic threshold.
    pub fn report(&self, endpoint: &Endpoint, outcome: Outcome) {
        if outcome == Outcome::Answered {
            endpoint.state().outlier.record_success();
            return;
        }
        let now = Instant::now();
        let (mut available, mut counted) = (0, 0);
        for other in self.endpoints.load().iter() {
            let candidate = other.candidate(now, &[]);
            counted += usize::from(!candidate.pending);
            available += usize::from(!candidate.pending && candidate.available);
        }
        let may_eject = balance::may_eject(available, counted, self.panic_threshold_percent);
        let ejected = endpoint
            .state()
            .outlier
            .record_failure(now, &self.outlier, may_eject);
        if let Some(period) = ejected {
            metrics::OUTLIER_EJECTIONS
                .with_label_values(&[&endpoint.addr.to_string()])
                .inc();
            tracing::warn!(
                upstream = %endpoint.addr,
                ejected_for_ms = period.as_millis() as u64,
                "upstream ejected after consecutive connect failures or resets"
            );
        }
    }

    /// Endpoints that pass their checks.
    pub fn healthy_count(&self) -> usize {
        self.endpoints
            .load()
            .iter()
            .filter(|endpoint| endpoint.is_healthy())
            .count()
    }

    /// Known endpoints, healthy or not.
    pub fn len(&self) -> usize {
        self.endpoints.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes `addresses` target `index`'s endpoints; returns the endpoints added. New
    /// endpoints start pending (their first check decides), except when nothing was known
    /// before (start-up: serve at once, like a static list).
    fn apply(&self, index: usize, addresses: BTreeSet<SocketAddr>) -> Vec<Arc<Endpoint>> {
        let mut membership = self.membership.lock().unwrap_or_else(|e| e.into_inner());
        let change = membership.set(index, addresses);
        if change.is_empty() {
            return Vec::new();
        }
        let current = self.endpoints.load_full();
        let initial = current.is_empty();
        let origin = match &self.targets[index] {
            UpstreamTarget::Name { host, port } => format!("http://{host}:{port}").parse().ok(),
            UpstreamTarget::Address(_) => None,
        };
        let added: Vec<Arc<Endpoint>> = change
            .added
            .iter()
            .map(|addr| {
                let health = if initial {
                    ActiveHealth::assumed_healthy()
                } else {
                    ActiveHealth::pending()
                };
                Arc::new(Endpoint::new(
                    *addr,
                    origin.clone(),
                    self.connect_timeout,
                    health,
                ))
            })
            .collect();
        let next: Vec<Arc<Endpoint>> = current
            .iter()
            .filter(|endpoint| !change.removed.contains(&endpoint.addr))
            .cloned()
            .chain(added.iter().cloned())
            .collect();
        self.endpoints.store(Arc::new(next));
        drop(membership);
        metrics::UPSTREAM_ENDPOINTS.set(i64::try_from(self.len()).unwrap_or(i64::MAX));
        for endpoint in &added {
            let healthy = endpoint.is_healthy();
            metrics::UPSTREAM_HEALTHY
                .with_label_values(&[&endpoint.addr.to_string()])
                .set(i64::from(healthy));
        }
        for addr in &change.removed {
            let _ = metrics::UPSTREAM_HEALTHY.remove_label_values(&[&addr.to_string()]);
        }
        tracing::info!(
            target = %self.targets[index].label(),
            added = ?change.added,
            removed = ?change.removed,
            "upstream endpoints changed (removed ones drain: calls under way finish)"
        );
        added
    }

    fn observe_check(&self, endpoint: &Endpoint, passed: bool, error: Option<&str>) {
        let flipped = endpoint
            .state()
            .health
            .observe(passed, self.health_thresholds);
        if let Some(healthy) = flipped {
            tracing::info!(upstream = %endpoint.addr, healthy, error, "upstream health changed");
            metrics::UPSTREAM_HEALTHY
                .with_label_values(&[&endpoint.addr.to_string()])
                .set(i64::from(healthy));
        }
    }
}

/// Whether a failed call provably never reached the upstream: the connection could not be
/// established (refused, timed out, unreachable), so no byte of the request was sent.
pub fn sent_nothing(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::ConnectError>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// Calls upstream methods over the pool.
pub struct Upstreams {
    pool: Arc<UpstreamPool>,
    budget: TpsBudget,
    max_attempts: u32,
}

impl Upstreams {
    pub fn new(settings: &UpstreamSettings, pool: Arc<UpstreamPool>) -> Self {
        Self {
            pool,
            budget: TpsBudget::new(
                settings.retry_budget_window,
                settings.retry_min_per_second,
                settings.retry_budget_ratio,
            ),
            max_attempts: settings.retry_max_attempts,
        }
    }

    pub fn pool(&self) -> &UpstreamPool {
        &self.pool
    }

    /// Calls `path` with one request message; the response may stream. An attempt that sent
    /// nothing moves to another endpoint for free; UNAVAILABLE is retried on another endpoint
    /// when `retryable` (GET routes), up to `max_attempts`, within the budget.
    pub async fn call(
        &self,
        path: &str,
        message: Bytes,
        metadata: &MetadataMap,
        timeout: Duration,
        retryable: bool,
    ) -> Result<(SocketAddr, StreamingResponse), GatewayError> {
        let path: http::uri::PathAndQuery = path
            .parse()
            .map_err(|_| GatewayError::Internal(format!("invalid gRPC path {path}")))?;
        self.budget.deposit();
        let deadline = tokio::time::Instant::now() + timeout;
        let mut tried = Vec::new();
        let mut attempts = 0u32;
        let mut last_error = None;
        loop {
            let Some(endpoint) = self.pool.pick(&tried) else {
                return Err(last_error.unwrap_or(if tried.is_empty() {
                    GatewayError::NoHealthyUpstream
                } else {
                    GatewayError::UpstreamUnavailable
                }));
            };
            tried.push(endpoint.addr);
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            if remaining.is_zero() {
                return Err(GatewayError::UpstreamTimeout);
            }
            let mut request = tonic::Request::new(message.clone());
            *request.metadata_mut() = metadata.clone();
            request.set_timeout(remaining);
            let mut grpc = tonic::client::Grpc::new(endpoint.traffic_channel());
            let attempt = async {
                grpc.ready()
                    .await
                    .map_err(|e| Status::from_error(e.into()))?;
                grpc.server_streaming(request, path.clone(), RawCodec).await
            };
            let status = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(response)) => {
                    self.pool.report(&endpoint, Outcome::Answered);
                    return Ok((endpoint.addr, response));
                }
                Ok(Err(status)) => status,
                Err(_) => return Err(GatewayError::UpstreamTimeout),
            };
            let from_transport = std::error::Error::source(&status).is_some();
            self.pool.report(
                &endpoint,
                if from_transport {
                    Outcome::TransportFailure
                } else {
                    Outcome::Answered
                },
            );
            if sent_nothing(&status) {
                // Nothing reached the upstream: another endpoint is safe for any method, and
                // this failover is no retry (it must not starve on the budget).
                metrics::RETRIES
                    .with_label_values(&["connect_failover"])
                    .inc();
                tracing::debug!(upstream = %endpoint.addr, error = %status, "connect failed; trying another upstream");
                last_error = Some(GatewayError::UpstreamUnavailable);
                continue;
            }
            // The upstream enforces the same grpc-timeout and may answer first (tonic says
            // CANCELLED); either way the deadline passed.
            let error = if matches!(
                status.code(),
                tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
            ) && deadline.saturating_duration_since(tokio::time::Instant::now())
                <= Duration::from_millis(20)
            {
                GatewayError::UpstreamTimeout
            } else {
                GatewayError::from_upstream(status)
            };
            attempts += 1;
            let may_retry = retryable
                && error.is_unavailable()
                && attempts < self.max_attempts
                && self.pool.has_untried(&tried);
            if !may_retry {
                return Err(error);
            }
            if !self.budget.withdraw() {
                metrics::RETRIES
                    .with_label_values(&["budget_exhausted"])
                    .inc();
                return Err(error);
            }
            metrics::RETRIES.with_label_values(&["retried"]).inc();
            tracing::debug!(upstream = %endpoint.addr, %error, "retrying on another upstream");
            last_error = Some(error);
        }
    }
}

/// The background work: DNS refreshes per name and active health checks, as a pingora
/// background service (stops with the server).
pub struct UpstreamMaintenance {
    pool: Arc<UpstreamPool>,
    resolver: Option<Resolver>,
    settings: UpstreamSettings,
}

impl UpstreamMaintenance {
    /// The resolver is built only when some upstream is a name.
    pub fn new(
        pool: Arc<UpstreamPool>,
        settings: UpstreamSettings,
    ) -> Result<Self, crate::dns::ResolverError> {
        let needs_dns = settings
            .targets
            .iter()
            .any(|target| matches!(target, UpstreamTarget::Name { .. }));
        let resolver = if needs_dns {
            Some(Resolver::new(&settings.dns)?)
        } else {
            None
        };
        Ok(Self {
            pool,
            resolver,
            settings,
        })
    }
}

#[async_trait]
impl BackgroundService for UpstreamMaintenance {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tasks = tokio::task::JoinSet::new();
        let checker = Arc::new(HealthChecker {
            pool: self.pool.clone(),
            service: self.settings.health_service.clone(),
            timeout: self.settings.health_timeout,
        });
        if let Some(resolver) = &self.resolver {
            for (index, target) in self.settings.targets.iter().enumerate() {
                if let UpstreamTarget::Name { host, port } = target {
                    tasks.spawn(refresh_name(NameRefresh {
                        pool: self.pool.clone(),
                        resolver: resolver.clone(),
                        checker: checker.clone(),
                        index,
                        host: host.clone(),
                        port: *port,
                        label: target.label(),
                        min_refresh: self.settings.dns.min_refresh,
                        max_refresh: self.settings.dns.max_refresh,
                    }));
                }
            }
        }
        let interval = self.settings.health_interval;
        tasks.spawn(async move {
            loop {
                checker.check_all().await;
                tokio::time::sleep(interval).await;
            }
        });
        while !*shutdown.borrow() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        tasks.abort_all();
    }
}

struct HealthChecker {
    pool: Arc<UpstreamPool>,
    service: String,
    timeout: Duration,
}

impl HealthChecker {
    async fn check_all(&self) {
        let endpoints = self.pool.endpoints();
        futures::future::join_all(endpoints.iter().map(|endpoint| self.check(endpoint))).await;
    }

    /// `grpc.health.v1.Health/Check`, on the endpoint's own check channel.
    async fn check(&self, endpoint: &Endpoint) {
        use tonic_health::pb::{
            HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
        };
        let mut client = HealthClient::new(endpoint.channel(&endpoint.checks));
        let request = HealthCheckRequest {
            service: self.service.clone(),
        };
        let error = match tokio::time::timeout(self.timeout, client.check(request)).await {
            Ok(Ok(response)) if response.get_ref().status == ServingStatus::Serving as i32 => None,
            Ok(Ok(response)) => Some(format!("status {}", response.get_ref().status)),
            Ok(Err(status)) => Some(status.message().to_owned()),
            Err(_) => Some("health check timed out".to_owned()),
        };
        self.pool
            .observe_check(endpoint, error.is_none(), error.as_deref());
    }
}

struct NameRefresh {
    pool: Arc<UpstreamPool>,
    resolver: Resolver,
    checker: Arc<HealthChecker>,
    index: usize,
    host: String,
    port: u16,
    label: String,
    min_refresh: Duration,
    max_refresh: Duration,
}

/// Resolves one name for as long as the gateway runs: again when the answer's TTL runs out
/// (within the floor and ceiling); a failed lookup keeps the last good set, is counted and
/// logged, and is retried with back-off.
async fn refresh_name(refresh: NameRefresh) {
    let mut failures = 0u32;
    loop {
        let lookup = refresh.resolver.lookup(&refresh.host).await;
        let delay = match (&lookup, discovery::accept_lookup(&lookup, refresh.port)) {
            (Lookup::Resolved { ttl, .. }, Some(addresses)) => {
                failures = 0;
                metrics::DNS_LOOKUPS
                    .with_label_values(&[&refresh.label, "resolved"])
                    .inc();
                let added = refresh.pool.apply(refresh.index, addresses);
                // New endpoints are checked now rather than at the next round.
                for endpoint in added {
                    let checker = refresh.checker.clone();
                    tokio::spawn(async move { checker.check(&endpoint).await });
                }
                discovery::refresh_delay(*ttl, refresh.min_refresh, refresh.max_refresh)
            }
            (_, _) => {
                failures = failures.saturating_add(1);
                metrics::DNS_LOOKUPS
                    .with_label_values(&[&refresh.label, "failed"])
                    .inc();
                let reason = match &lookup {
                    Lookup::Failed(reason) => reason.as_str(),
                    Lookup::Resolved { .. } => "no addresses",
                };
                tracing::warn!(
                    target = %refresh.label,
                    error = reason,
                    failures,
                    keeping = refresh.pool.len(),
                    "upstream name lookup failed; keeping the last good endpoints"
                );
                discovery::retry_delay(failures, refresh.min_refresh, refresh.max_refresh)
            }
        };
        tokio::time::sleep(delay).await;
    }
}
