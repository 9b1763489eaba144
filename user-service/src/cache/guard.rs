//! Every cache call goes through here: admitted by the circuit breaker, bounded by the
//! timeout, its outcome recorded (also when the caller goes away mid-call), failures counted
//! and logged at most once a second. The caller falls back to the database.

use std::future::Future;
use std::sync::MutexGuard;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tracing::Instrument;

use super::{
    Cache, CacheError,
    breaker::{Admission, Breaker, BreakerState, Outcome},
};

/// How one cache call went.
pub(super) enum Reply<T> {
    Done(T),
    Failed,
    /// Not attempted: the breaker is open.
    Skipped,
}

impl Cache {
    pub(super) fn lock_breaker(&self) -> MutexGuard<'_, Breaker> {
        self.breaker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs one cache operation through the breaker and under the timeout. Failures are
    /// counted and logged (rate-limited); the caller falls back to the database.
    pub(super) async fn call<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, CacheError>>,
    ) -> Reply<T> {
        let (admission, changed) = self.lock_breaker().admit(Instant::now());
        if let Some(state) = changed {
            self.breaker_changed(state);
        }
        if admission == Admission::Skip {
            self.metrics
                .cache_skipped
                .with_label_values(&[operation])
                .inc();
            return Reply::Skipped;
        }
        let mut verdict = Verdict {
            cache: self,
            admission,
            outcome: Outcome::Abandoned,
        };
        let span = tracing::info_span!(
            "cache",
            cache.backend = self.backend.kind(),
            cache.operation = operation
        );
        let outcome = tokio::time::timeout(self.settings.timeout, call)
            .instrument(span)
            .await
            .unwrap_or(Err(CacheError::Timeout(self.settings.timeout)));
        match outcome {
            Ok(value) => {
                verdict.outcome = Outcome::Success;
                Reply::Done(value)
            }
            Err(error) => {
                verdict.outcome = Outcome::Failure;
                self.metrics
                    .cache_errors
                    .with_label_values(&[operation])
                    .inc();
                self.error_log.warn(operation, &error);
                Reply::Failed
            }
        }
    }

    fn record(&self, admission: Admission, outcome: Outcome) {
        let changed = self
            .lock_breaker()
            .record(admission, outcome, Instant::now());
        if let Some(state) = changed {
            self.breaker_changed(state);
        }
    }

    fn breaker_changed(&self, state: BreakerState) {
        match state {
            BreakerState::Open => tracing::warn!(
                breaker = state.name(),
                cooldown = ?self.settings.breaker_cooldown,
                "cache circuit breaker open: skipping the cache, serving from the database"
            ),
            BreakerState::HalfOpen => {
                tracing::info!(breaker = state.name(), "cache circuit breaker probing");
            }
            BreakerState::Closed => {
                tracing::info!(breaker = state.name(), "cache circuit breaker closed");
            }
        }
        self.metrics
            .cache_breaker_transitions
            .with_label_values(&[state.name()])
            .inc();
        self.publish_breaker_state(state);
    }

    pub(super) fn publish_breaker_state(&self, current: BreakerState) {
        for state in BreakerState::ALL {
            self.metrics
                .cache_breaker_state
                .with_label_values(&[state.name()])
                .set(i64::from(state == current));
        }
    }

    /// The value of a call the read path can use; a failed or skipped call is counted as the
    /// lookup's `error` or `bypass` (the caller then reads the database).
    pub(super) fn usable<T>(&self, cache: &'static str, reply: Reply<T>) -> Option<T> {
        match reply {
            Reply::Done(value) => Some(value),
            Reply::Failed => {
                self.count(cache, "error");
                None
            }
            Reply::Skipped => {
                self.count(cache, "bypass");
                None
            }
        }
    }

    pub(super) fn count_shared_fill(&self, cache: &'static str) {
        self.metrics
            .cache_shared_fills
            .with_label_values(&[cache])
            .inc();
    }

    pub(super) fn count(&self, cache: &'static str, result: &'static str) {
        self.metrics
            .cache_requests
            .with_label_values(&[cache, result])
            .inc();
    }
}

/// Records how an admitted cache call ended when dropped, also when the request went away
/// mid-call (then `Abandoned`), so a cancelled probe cannot wedge the breaker.
struct Verdict<'a> {
    cache: &'a Cache,
    admission: Admission,
    outcome: Outcome,
}

impl Drop for Verdict<'_> {
    fn drop(&mut self) {
        self.cache.record(self.admission, self.outcome);
    }
}

/// Logs cache failures at most once per second, with how many were suppressed, so a dead Redis
/// under load does not flood the logs (the metric counts every one).
#[derive(Default)]
pub(super) struct RateLimitedLog {
    last_second: AtomicU64,
    suppressed: AtomicU64,
}

impl RateLimitedLog {
    fn warn(&self, operation: &str, error: &dyn std::fmt::Display) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_second.load(Ordering::Relaxed);
        if now > last
            && self
                .last_second
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
            tracing::warn!(
                operation,
                %error,
                suppressed,
                "cache unavailable; serving from the database"
            );
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }
}
