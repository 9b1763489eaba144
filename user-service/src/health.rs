//! gRPC health (`grpc.health.v1`), two questions kept apart:
//!
//! - [`LIVENESS`]: is the process serving? SERVING from start until exit, whatever the
//!   dependencies do (also while draining), so a database failover restarts no pod.
//! - [`READINESS`] (and `""`, `user.UserService` and `user.v2.UserService`, which say the same,
//!   for clients that ask about the server or a service): can this instance answer calls? NOT_SERVING until the
//!   first database ping succeeds, then NOT_SERVING only after `threshold` consecutive failed
//!   pings ([`ReadinessGate`]), SERVING again after one success, and NOT_SERVING for good once
//!   shutdown starts (the drain).

use std::sync::Arc;
use std::time::Duration;

use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::domain::UserStore;
use crate::metrics::Metrics;

pub const LIVENESS: &str = "liveness";
pub const READINESS: &str = "readiness";
/// Every health service name that reports readiness.
pub const READINESS_NAMES: [&str; 4] = [
    READINESS,
    "",
    meshgate_proto::USER_SERVICE,
    meshgate_proto::USER_SERVICE_V2,
];

/// The K-consecutive rule, pure: one failed ping is noise, `threshold` in a row is an outage.
#[derive(Debug)]
pub struct ReadinessGate {
    threshold: u32,
    consecutive_failures: u32,
    ready: bool,
}

impl ReadinessGate {
    /// Not ready until the first successful ping.
    pub fn new(threshold: u32) -> Self {
        Self {
            threshold: threshold.max(1),
            consecutive_failures: 0,
            ready: false,
        }
    }

    pub fn ready(&self) -> bool {
        self.ready
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Records one ping; answers the new readiness when it changed.
    pub fn record(&mut self, answered: bool) -> Option<bool> {
        let was = self.ready;
        if answered {
            self.consecutive_failures = 0;
            self.ready = true;
        } else {
            self.consecutive_failures = self.consecutive_failures.saturating_add(1);
            if self.consecutive_failures >= self.threshold {
                self.ready = false;
            }
        }
        (self.ready != was).then_some(self.ready)
    }
}

pub async fn set_readiness(health: &HealthReporter, status: ServingStatus) {
    for name in READINESS_NAMES {
        health.set_service_status(name, status).await;
    }
}

/// Pings the database every `interval` (each ping bounded by the same interval) and publishes
/// readiness through the gate. Runs until aborted (the drain withdraws readiness itself).
pub async fn probe_database<S: UserStore>(
    store: Arc<S>,
    health: HealthReporter,
    interval: Duration,
    threshold: u32,
    metrics: Arc<Metrics>,
) {
    let mut gate = ReadinessGate::new(threshold);
    loop {
        let answered = matches!(
            tokio::time::timeout(interval, store.ping()).await,
            Ok(Ok(()))
        );
        let changed = gate.record(answered);
        metrics
            .db_ping_consecutive_failures
            .set(i64::from(gate.consecutive_failures()));
        if !answered {
            tracing::debug!(
                consecutive_failures = gate.consecutive_failures(),
                threshold,
                "database ping failed"
            );
        }
        match changed {
            Some(true) => {
                tracing::info!("database answers: readiness SERVING");
                metrics.ready.set(1);
                set_readiness(&health, ServingStatus::Serving).await;
            }
            Some(false) => {
                tracing::warn!(
                    consecutive_failures = gate.consecutive_failures(),
                    "database does not answer: readiness NOT_SERVING (liveness stays SERVING)"
                );
                metrics.ready.set(0);
                set_readiness(&health, ServingStatus::NotServing).await;
            }
            None => {}
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_until_the_first_answer() {
        let mut gate = ReadinessGate::new(3);
        assert!(!gate.ready());
        assert_eq!(gate.record(false), None);
        assert_eq!(gate.record(true), Some(true));
    }

    #[test]
    fn only_threshold_consecutive_failures_withdraw_readiness() {
        let mut gate = ReadinessGate::new(3);
        gate.record(true);
        assert_eq!(gate.record(false), None);
        assert_eq!(gate.record(false), None);
        assert_eq!(gate.record(true), None, "a success resets the count");
        assert_eq!(gate.consecutive_failures(), 0);
        assert_eq!(gate.record(false), None);
        assert_eq!(gate.record(false), None);
        assert_eq!(gate.record(false), Some(false));
        assert_eq!(gate.consecutive_failures(), 3);
        assert_eq!(gate.record(false), None, "stays down");
        assert_eq!(gate.record(true), Some(true), "one success brings it back");
    }

    #[test]
    fn a_threshold_of_one_follows_every_ping() {
        let mut gate = ReadinessGate::new(1);
        gate.record(true);
        assert_eq!(gate.record(false), Some(false));
        assert_eq!(gate.record(true), Some(true));
    }
}
