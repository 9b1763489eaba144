//! A call over the pool: pick an endpoint, send, and on failure move on — for free when the
//! attempt provably sent nothing, within tower's `TpsBudget` when the route may be retried —
//! all within the request's deadline.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::HeaderMap;
use meshgate_wire::grpc::message_frame;
use tonic::Status;
use tower::retry::budget::{Budget, TpsBudget};

use super::{Outcome, UpstreamPool, UpstreamResponse, UpstreamSettings, client::ConnectError};
use crate::error::GatewayError;

/// Whether a failed call provably never reached the upstream: the connection could not be
/// established (refused, timed out, unreachable), so no byte of the request was sent.
pub fn sent_nothing(status: &Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<ConnectError>() {
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

    /// Calls `path` with one request message and `metadata` (request headers); the response
    /// may stream. An attempt that sent nothing moves to another endpoint for free; UNAVAILABLE
    /// is retried on another endpoint when `retryable` (GET routes), up to `max_attempts`,
    /// within the budget.
    pub async fn call(
        &self,
        path: &str,
        message: &[u8],
        metadata: &HeaderMap,
        timeout: Duration,
        retryable: bool,
    ) -> Result<(SocketAddr, UpstreamResponse), GatewayError> {
        let path: http::uri::PathAndQuery = path
            .parse()
            .map_err(|_| GatewayError::Internal(format!("invalid gRPC path {path}")))?;
        // The body of every attempt: framed once, shared.
        let frame = Bytes::from(message_frame(message));
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
            let attempt = endpoint.call(&path, frame.clone(), metadata, remaining);
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
                self.pool
                    .metrics
                    .retries
                    .with_label_values(&["connect_failover"])
                    .inc();
                tracing::debug!(upstream = %endpoint.addr, error = %status, "connect failed; trying another upstream");
                last_error = Some(GatewayError::UpstreamUnavailable);
                continue;
            }
            // The upstream enforces the same grpc-timeout and may answer first (a tonic server
            // says CANCELLED); either way the deadline passed.
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
                self.pool
                    .metrics
                    .retries
                    .with_label_values(&["budget_exhausted"])
                    .inc();
                return Err(error);
            }
            self.pool
                .metrics
                .retries
                .with_label_values(&["retried"])
                .inc();
            tracing::debug!(upstream = %endpoint.addr, %error, "retrying on another upstream");
            last_error = Some(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::GatewayConfig, metrics::Metrics};

    /// Two distinct addresses nothing listens on (bound together, then released).
    fn closed_ports() -> (SocketAddr, SocketAddr) {
        let bind = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (first, second) = (bind(), bind());
        (first.local_addr().unwrap(), second.local_addr().unwrap())
    }

    #[tokio::test]
    async fn refused_connects_fail_over_for_free_even_when_the_call_may_not_be_retried() {
        let (first, second) = closed_ports();
        let listen = "127.0.0.1:0".parse().unwrap();
        let config = GatewayConfig::for_upstreams(listen, vec![first, second]);
        let metrics = Arc::new(Metrics::default());
        let pool = Arc::new(UpstreamPool::new(&config.upstream, metrics.clone(), 1));
        assert_eq!(pool.healthy_count(), 2);
        let upstreams = Upstreams::new(&config.upstream, pool.clone());
        let result = upstreams
            .call(
                "/meshgate.users.v1.UserService/CreateUser",
                b"",
                &HeaderMap::new(),
                Duration::from_secs(5),
                false,
            )
            .await;
        assert!(
            matches!(result, Err(GatewayError::UpstreamUnavailable)),
            "{:?}",
            result.map(|(addr, _)| addr)
        );
        // Both endpoints were tried although the call is not retryable: the new client's
        // connect error is recognised as "nothing sent".
        let counted = |outcome: &str| metrics.retries.with_label_values(&[outcome]).get();
        assert_eq!(counted("connect_failover"), 2);
        assert_eq!(counted("retried"), 0);
    }
}
