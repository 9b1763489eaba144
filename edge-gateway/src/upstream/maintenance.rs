//! The background work: DNS refreshes per name (again as each answer's TTL runs out) and the
//! active `grpc.health.v1` checks, as a pingora background service.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use pingora::{server::ShutdownWatch, services::background::BackgroundService};

use super::{Endpoint, UpstreamPool, UpstreamSettings};
use crate::{
    discovery::{self, Lookup, UpstreamTarget},
    dns::Resolver,
};

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
        let mut client = HealthClient::new(endpoint.check_channel());
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
                refresh
                    .pool
                    .metrics
                    .dns_lookups
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
                refresh
                    .pool
                    .metrics
                    .dns_lookups
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
