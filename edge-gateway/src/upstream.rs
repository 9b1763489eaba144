//! The upstream side: one lazily connected tonic `Channel` (HTTP/2, h2c, multiplexed, reconnecting)
//! per user-service instance, round-robin over the instances that pass `grpc.health.v1` checks
//! (pingora-load-balancing runs the checks as a background service), a raw-bytes codec so any
//! method can be called without generated code, and retries within a budget.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::Duration,
};

use bytes::{Buf, BufMut, Bytes};
use pingora::lb::{Backend, LoadBalancer, health_check::HealthCheck, selection::RoundRobin};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::MetadataMap,
    transport::{Channel, Endpoint},
};

use crate::error::GatewayError;
use crate::metrics;
use crate::retry::RetryBudget;

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

pub struct Upstreams {
    balancer: Arc<LoadBalancer<RoundRobin>>,
    channels: UpstreamChannels,
    budget: RetryBudget,
    max_attempts: u32,
}

#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub addresses: Vec<SocketAddr>,
    pub connect_timeout: Duration,
    pub health_interval: Duration,
    pub health_timeout: Duration,
    pub health_service: String,
    pub healthy_threshold: usize,
    pub unhealthy_threshold: usize,
    pub retry_max_attempts: u32,
    pub retry_budget_ratio: f64,
    pub retry_min_per_second: u32,
}

/// One lazily created channel per upstream. Creation is deferred to first use because tonic
/// spawns the connection's worker task on the current tokio runtime: traffic channels must live
/// on pingora's proxy runtime, health-check channels on the health-check runtime.
#[derive(Debug)]
pub struct UpstreamChannels {
    channels: HashMap<SocketAddr, OnceLock<Channel>>,
    connect_timeout: Duration,
}

impl UpstreamChannels {
    pub fn new(addresses: &[SocketAddr], connect_timeout: Duration) -> Self {
        Self {
            channels: addresses
                .iter()
                .map(|addr| (*addr, OnceLock::new()))
                .collect(),
            connect_timeout,
        }
    }

    pub fn len(&self) -> usize {
        self.channels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }

    /// Must be called from within a tokio runtime.
    pub fn get(&self, addr: &SocketAddr) -> Option<Channel> {
        let cell = self.channels.get(addr)?;
        Some(
            cell.get_or_init(|| {
                Endpoint::from_shared(format!("http://{addr}"))
                    .expect("a socket address is a valid URI authority")
                    .connect_timeout(self.connect_timeout)
                    .tcp_nodelay(true)
                    .http2_adaptive_window(true)
                    .connect_lazy()
            })
            .clone(),
        )
    }
}

/// Builds the load balancer (to be run as a pingora background service) with its gRPC health check.
pub fn load_balancer(settings: &UpstreamSettings) -> std::io::Result<LoadBalancer<RoundRobin>> {
    let mut balancer = LoadBalancer::<RoundRobin>::try_from_iter(
        settings.addresses.iter().map(|a| a.to_string()),
    )?;
    balancer.set_health_check(Box::new(GrpcHealthCheck {
        channels: UpstreamChannels::new(&settings.addresses, settings.connect_timeout),
        service: settings.health_service.clone(),
        timeout: settings.health_timeout,
        healthy_threshold: settings.healthy_threshold,
        unhealthy_threshold: settings.unhealthy_threshold,
    }));
    balancer.health_check_frequency = Some(settings.health_interval);
    balancer.parallel_health_check = true;
    for addr in &settings.addresses {
        metrics::UPSTREAM_HEALTHY
            .with_label_values(&[&addr.to_string()])
            .set(1);
    }
    Ok(balancer)
}

fn inet(backend: &Backend) -> Option<SocketAddr> {
    backend.addr.as_inet().copied()
}

impl Upstreams {
    pub fn new(settings: &UpstreamSettings, balancer: Arc<LoadBalancer<RoundRobin>>) -> Self {
        Self {
            balancer,
            channels: UpstreamChannels::new(&settings.addresses, settings.connect_timeout),
            budget: RetryBudget::new(settings.retry_budget_ratio, settings.retry_min_per_second),
            max_attempts: settings.retry_max_attempts,
        }
    }

    /// A healthy upstream not tried yet by this request.
    pub fn pick(&self, tried: &[SocketAddr]) -> Option<SocketAddr> {
        let count = self.channels.len().max(1) * 2;
        self.balancer
            .select_with(b"", count, |backend, healthy| {
                healthy && inet(backend).is_some_and(|addr| !tried.contains(&addr))
            })
            .and_then(|backend| inet(&backend))
    }

    pub fn healthy_count(&self) -> usize {
        let backends = self.balancer.backends();
        backends
            .get_backend()
            .iter()
            .filter(|b| backends.ready(b))
            .count()
    }

    /// Calls `path` with one request message; the response may stream. UNAVAILABLE is retried
    /// on another upstream when `retryable` (GET routes) and the budget allows.
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
        let mut tried = Vec::new();
        loop {
            let Some(addr) = self.pick(&tried) else {
                return Err(if tried.is_empty() {
                    GatewayError::NoHealthyUpstream
                } else {
                    GatewayError::UpstreamUnavailable
                });
            };
            tried.push(addr);
            let channel = self
                .channels
                .get(&addr)
                .ok_or(GatewayError::NoHealthyUpstream)?;
            let mut request = tonic::Request::new(message.clone());
            *request.metadata_mut() = metadata.clone();
            request.set_timeout(timeout);
            let mut grpc = tonic::client::Grpc::new(channel);
            let attempt = async {
                grpc.ready()
                    .await
                    .map_err(|e| Status::from_error(e.into()))?;
                grpc.server_streaming(request, path.clone(), RawCodec).await
            };
            let started = tokio::time::Instant::now();
            let result = match tokio::time::timeout(timeout, attempt).await {
                Ok(Ok(response)) => return Ok((addr, response)),
                // The upstream enforces the same grpc-timeout and may answer first (tonic says
                // CANCELLED); either way the deadline passed.
                Ok(Err(status))
                    if matches!(
                        status.code(),
                        tonic::Code::Cancelled | tonic::Code::DeadlineExceeded
                    ) && started.elapsed() + Duration::from_millis(20) >= timeout =>
                {
                    GatewayError::UpstreamTimeout
                }
                Ok(Err(status)) => GatewayError::from_upstream(status),
                Err(_) => GatewayError::UpstreamTimeout,
            };
            let may_retry = retryable
                && result.is_unavailable()
                && tried.len() < self.max_attempts as usize
                && self.pick(&tried).is_some();
            if !may_retry {
                return Err(result);
            }
            if !self.budget.try_withdraw() {
                metrics::RETRIES
                    .with_label_values(&["budget_exhausted"])
                    .inc();
                return Err(result);
            }
            metrics::RETRIES.with_label_values(&["retried"]).inc();
            tracing::debug!(upstream = %addr, error = %result, "retrying on another upstream");
        }
    }
}

/// `grpc.health.v1.Health/Check` over the same channels the traffic uses.
struct GrpcHealthCheck {
    channels: UpstreamChannels,
    service: String,
    timeout: Duration,
    healthy_threshold: usize,
    unhealthy_threshold: usize,
}

#[async_trait::async_trait]
impl HealthCheck for GrpcHealthCheck {
    async fn check(&self, target: &Backend) -> pingora::Result<()> {
        use pingora::{Error, ErrorType};
        use tonic_health::pb::{
            HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
        };
        let channel = inet(target)
            .and_then(|addr| self.channels.get(&addr))
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "unknown backend"))?;
        let request = HealthCheckRequest {
            service: self.service.clone(),
        };
        let mut client = HealthClient::new(channel);
        match tokio::time::timeout(self.timeout, client.check(request)).await {
            Ok(Ok(response)) if response.get_ref().status == ServingStatus::Serving as i32 => {
                Ok(())
            }
            Ok(Ok(response)) => Error::e_explain(
                ErrorType::Custom("not serving"),
                format!("status {}", response.get_ref().status),
            ),
            Ok(Err(status)) => {
                Error::e_explain(ErrorType::ConnectError, status.message().to_owned())
            }
            Err(_) => Error::e_explain(ErrorType::ConnectTimedout, "health check timed out"),
        }
    }

    async fn health_status_change(&self, target: &Backend, healthy: bool) {
        tracing::info!(upstream = %target.addr, healthy, "upstream health changed");
        metrics::UPSTREAM_HEALTHY
            .with_label_values(&[&target.addr.to_string()])
            .set(i64::from(healthy));
    }

    fn health_threshold(&self, success: bool) -> usize {
        if success {
            self.healthy_threshold
        } else {
            self.unhealthy_threshold
        }
    }
}
