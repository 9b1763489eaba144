//! The endpoint set and how to pick from it: an [`Endpoint`] per resolved address with its
//! lazily made connections (traffic, health checks) and health state, membership changes as lookups answer, passive
//! health (outlier ejection) and active check results. The decisions are [`crate::balance`]'s.

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
use bytes::Bytes;
use http::{HeaderMap, uri::PathAndQuery};
use tonic::{Status, transport::Channel};

use super::{
    Outcome, UpstreamResponse, UpstreamSettings,
    client::{Connector, grpc_request},
};
use crate::{
    balance::{self, ActiveHealth, Candidate, HealthThresholds, Outlier, OutlierSettings},
    discovery::{Membership, UpstreamTarget},
    metrics::Metrics,
};

#[derive(Debug)]
struct EndpointState {
    health: ActiveHealth,
    outlier: Outlier,
}

/// One upstream address.
#[derive(Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `http://host:port` for resolved names (the `:authority` the calls carry), else
    /// `http://IP:port`.
    origin: http::Uri,
    connect_timeout: Duration,
    /// The traffic connections ([`Connector`], one per proxy worker) and the health checks'
    /// tonic channel are all made on first use, so each connection's task runs on the thread of
    /// its users: traffic on its worker's, checks on the background service's runtime.
    pub(super) traffic: Connector,
    checks: OnceLock<Channel>,
    state: Mutex<EndpointState>,
}

impl Endpoint {
    fn new(
        addr: SocketAddr,
        origin: Option<http::Uri>,
        connect_timeout: Duration,
        workers: usize,
        health: ActiveHealth,
    ) -> Self {
        let origin = origin.unwrap_or_else(|| {
            format!("http://{addr}")
                .parse()
                .expect("a socket address is a valid URI authority")
        });
        Self {
            addr,
            origin,
            connect_timeout,
            traffic: Connector::new(addr, connect_timeout, workers),
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

    /// Calls `path` on this endpoint's traffic connection with one request message `frame`
    /// (prefix included), carrying the endpoint's `:authority`.
    pub(super) async fn call(
        &self,
        path: &PathAndQuery,
        frame: Bytes,
        metadata: &HeaderMap,
        timeout: Duration,
    ) -> Result<UpstreamResponse, Status> {
        let request = grpc_request(&self.origin, path, metadata, timeout);
        UpstreamResponse::from_http(self.traffic.send(request, frame).await?)
    }

    /// The health-check channel; must be called from within a tokio runtime.
    pub(super) fn check_channel(&self) -> Channel {
        self.checks
            .get_or_init(|| {
                tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
                    .expect("a socket address is a valid URI authority")
                    .connect_timeout(self.connect_timeout)
                    .tcp_nodelay(true)
                    .http2_adaptive_window(true)
                    .origin(self.origin.clone())
                    .connect_lazy()
            })
            .clone()
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

/// The endpoint set and how to pick from it; shared by the proxy and the background service.
pub struct UpstreamPool {
    targets: Vec<UpstreamTarget>,
    endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    membership: Mutex<Membership>,
    next: AtomicUsize,
    connect_timeout: Duration,
    /// Proxy workers, each with its own traffic connection per endpoint.
    workers: usize,
    panic_threshold_percent: u8,
    outlier: OutlierSettings,
    health_thresholds: HealthThresholds,
    pub(super) metrics: Arc<Metrics>,
}

impl UpstreamPool {
    /// The pool of `settings.targets` for `workers` proxy workers ([`crate::workers`]).
    pub fn new(settings: &UpstreamSettings, metrics: Arc<Metrics>, workers: usize) -> Self {
        let pool = Self {
            targets: settings.targets.clone(),
            endpoints: ArcSwap::from_pointee(Vec::new()),
            membership: Mutex::new(Membership::new(settings.targets.len())),
            next: AtomicUsize::new(0),
            connect_timeout: settings.connect_timeout,
            workers,
            panic_threshold_percent: settings.panic_threshold_percent,
            outlier: settings.outlier,
            health_thresholds: settings.health_thresholds,
            metrics,
        };
        // The configured addresses start together: all of them serve at once, as one first
        // membership would (checks may still take them out).
        for (index, target) in settings.targets.iter().enumerate() {
            if let UpstreamTarget::Address(addr) = target {
                pool.change_membership(index, BTreeSet::from([*addr]), true);
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
            self.metrics.panic_routed.inc();
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
            self.metrics
                .outlier_ejections
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
    pub(super) fn apply(
        &self,
        index: usize,
        addresses: BTreeSet<SocketAddr>,
    ) -> Vec<Arc<Endpoint>> {
        self.change_membership(index, addresses, false)
    }

    /// `starting`: part of the gateway's first membership (its static addresses), which is
    /// assumed healthy like the first answer of a lookup; anything joining later waits for its
    /// first check.
    fn change_membership(
        &self,
        index: usize,
        addresses: BTreeSet<SocketAddr>,
        starting: bool,
    ) -> Vec<Arc<Endpoint>> {
        let mut membership = self.membership.lock().unwrap_or_else(|e| e.into_inner());
        let change = membership.set(index, addresses);
        if change.is_empty() {
            return Vec::new();
        }
        let current = self.endpoints.load_full();
        let initial = starting || current.is_empty();
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
                    self.workers,
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
        self.metrics
            .upstream_endpoints
            .set(i64::try_from(self.len()).unwrap_or(i64::MAX));
        for endpoint in &added {
            let healthy = endpoint.is_healthy();
            self.metrics
                .upstream_healthy
                .with_label_values(&[&endpoint.addr.to_string()])
                .set(i64::from(healthy));
        }
        for addr in &change.removed {
            let _ = self
                .metrics
                .upstream_healthy
                .remove_label_values(&[&addr.to_string()]);
        }
        tracing::info!(
            target = %self.targets[index].label(),
            added = ?change.added,
            removed = ?change.removed,
            "upstream endpoints changed (removed ones drain: calls under way finish)"
        );
        added
    }

    pub(super) fn observe_check(&self, endpoint: &Endpoint, passed: bool, error: Option<&str>) {
        let flipped = endpoint
            .state()
            .health
            .observe(passed, self.health_thresholds);
        if let Some(healthy) = flipped {
            tracing::info!(upstream = %endpoint.addr, healthy, error, "upstream health changed");
            self.metrics
                .upstream_healthy
                .with_label_values(&[&endpoint.addr.to_string()])
                .set(i64::from(healthy));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::GatewayConfig;

    #[test]
    fn every_configured_address_serves_from_the_start() {
        let addresses: Vec<SocketAddr> = ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let config = GatewayConfig::for_upstreams("127.0.0.1:0".parse().unwrap(), addresses);
        let pool = UpstreamPool::new(&config.upstream, Arc::new(Metrics::default()), 1);
        assert_eq!(pool.healthy_count(), 3);
        // Every one is picked, not only the first.
        let mut tried = Vec::new();
        while let Some(endpoint) = pool.pick(&tried) {
            tried.push(endpoint.addr);
        }
        assert_eq!(tried.len(), 3, "{tried:?}");
    }
}
