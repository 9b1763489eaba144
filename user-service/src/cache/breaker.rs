//! The circuit breaker in front of Redis, as a pure state machine (time is passed in).
//!
//! Closed: every call goes to Redis; `failure_threshold` consecutive failures open it. Open:
//! calls skip the cache (the database answers) until `cooldown` has passed. Then one call is
//! let through as a probe (half-open): its success closes the breaker, its failure opens it for
//! another cool-down. A probe that never reports (its request was cancelled) lets the next call
//! probe instead, so the breaker cannot stay half-open.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub const ALL: [Self; 3] = [Self::Closed, Self::Open, Self::HalfOpen];

    pub fn name(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// What the breaker lets one call do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go to Redis (breaker closed).
    Call,
    /// Go to Redis as the one probe of a half-open breaker.
    Probe,
    /// Skip the cache.
    Skip,
}

/// How an admitted call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// The call was dropped before it finished (its request went away).
    Abandoned,
}

#[derive(Debug)]
pub struct Breaker {
    failure_threshold: u32,
    cooldown: Duration,
    state: State,
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { consecutive_failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

impl Breaker {
    pub fn new(failure_threshold: u32, cooldown: Duration) -> Self {
        Self {
            failure_threshold: failure_threshold.max(1),
            cooldown,
            state: State::Closed {
                consecutive_failures: 0,
            },
        }
    }

    pub fn state(&self) -> BreakerState {
        match self.state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Decides one call. May move an expired open breaker to half-open (the returned state
    /// change is `Some`).
    pub fn admit(&mut self, now: Instant) -> (Admission, Option<BreakerState>) {
        match self.state {
            State::Closed { .. } => (Admission::Call, None),
            State::Open { until } if now < until => (Admission::Skip, None),
            State::Open { .. } => {
                self.state = State::HalfOpen { probing: true };
                (Admission::Probe, Some(BreakerState::HalfOpen))
            }
            State::HalfOpen { probing: true } => (Admission::Skip, None),
            State::HalfOpen { probing: false } => {
                self.state = State::HalfOpen { probing: true };
                (Admission::Probe, None)
            }
        }
    }

    /// Records how an admitted call ended; answers the new state when it changed.
    pub fn record(
        &mut self,
        admission: Admission,
        outcome: Outcome,
        now: Instant,
    ) -> Option<BreakerState> {
        let before = self.state();
        match (admission, self.state, outcome) {
            (Admission::Skip, ..) => {}
            (Admission::Call, State::Closed { .. }, Outcome::Success) => {
                self.state = State::Closed {
                    consecutive_failures: 0,
                };
            }
            (
                Admission::Call,
                State::Closed {
                    consecutive_failures,
                },
                Outcome::Failure,
            ) => {
                let failures = consecutive_failures + 1;
                self.state = if failures >= self.failure_threshold {
                    State::Open {
                        until: now + self.cooldown,
                    }
                } else {
                    State::Closed {
                        consecutive_failures: failures,
                    }
                };
            }
            // Calls admitted before the breaker opened say nothing new; only the probe decides.
            (Admission::Call, ..) => {}
            (Admission::Probe, State::HalfOpen { .. }, Outcome::Success) => {
                self.state = State::Closed {
                    consecutive_failures: 0,
                };
            }
            (Admission::Probe, State::HalfOpen { .. }, Outcome::Failure) => {
                self.state = State::Open {
                    until: now + self.cooldown,
                };
            }
            (Admission::Probe, State::HalfOpen { .. }, Outcome::Abandoned) => {
                self.state = State::HalfOpen { probing: false };
            }
            (Admission::Probe, ..) => {}
        }
        let after = self.state();
        (after != before).then_some(after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOLDOWN: Duration = Duration::from_secs(1);

    fn call(breaker: &mut Breaker, outcome: Outcome, now: Instant) -> Admission {
        let (admission, _) = breaker.admit(now);
        if admission != Admission::Skip {
            breaker.record(admission, outcome, now);
        }
        admission
    }

    #[test]
    fn opens_after_the_threshold_of_consecutive_failures_only() {
        let now = Instant::now();
        let mut breaker = Breaker::new(3, COOLDOWN);
        call(&mut breaker, Outcome::Failure, now);
        call(&mut breaker, Outcome::Failure, now);
        call(&mut breaker, Outcome::Success, now);
        call(&mut breaker, Outcome::Failure, now);
        call(&mut breaker, Outcome::Failure, now);
        assert_eq!(
            breaker.state(),
            BreakerState::Closed,
            "a success resets the count"
        );
        let (admission, _) = breaker.admit(now);
        assert_eq!(
            breaker.record(admission, Outcome::Failure, now),
            Some(BreakerState::Open)
        );
        assert_eq!(breaker.admit(now).0, Admission::Skip);
        assert_eq!(breaker.admit(now + COOLDOWN / 2).0, Admission::Skip);
    }

    #[test]
    fn one_probe_after_the_cooldown_closes_on_success() {
        let now = Instant::now();
        let mut breaker = Breaker::new(1, COOLDOWN);
        call(&mut breaker, Outcome::Failure, now);
        let later = now + COOLDOWN;
        assert_eq!(
            breaker.admit(later),
            (Admission::Probe, Some(BreakerState::HalfOpen))
        );
        assert_eq!(
            breaker.admit(later).0,
            Admission::Skip,
            "only one probe at a time"
        );
        assert_eq!(
            breaker.record(Admission::Probe, Outcome::Success, later),
            Some(BreakerState::Closed)
        );
        assert_eq!(breaker.admit(later).0, Admission::Call);
    }

    #[test]
    fn a_failed_probe_opens_for_another_cooldown() {
        let now = Instant::now();
        let mut breaker = Breaker::new(1, COOLDOWN);
        call(&mut breaker, Outcome::Failure, now);
        let probe_at = now + COOLDOWN;
        assert_eq!(
            call(&mut breaker, Outcome::Failure, probe_at),
            Admission::Probe
        );
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.admit(probe_at + COOLDOWN / 2).0, Admission::Skip);
        assert_eq!(breaker.admit(probe_at + COOLDOWN).0, Admission::Probe);
    }

    #[test]
    fn an_abandoned_probe_hands_the_probe_to_the_next_call() {
        let now = Instant::now() + COOLDOWN;
        let mut breaker = Breaker::new(1, COOLDOWN);
        call(&mut breaker, Outcome::Failure, now - COOLDOWN);
        assert_eq!(breaker.admit(now).0, Admission::Probe);
        assert_eq!(
            breaker.record(Admission::Probe, Outcome::Abandoned, now),
            None
        );
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert_eq!(breaker.admit(now).0, Admission::Probe);
    }

    #[test]
    fn late_results_of_calls_admitted_while_closed_change_nothing() {
        let now = Instant::now();
        let mut breaker = Breaker::new(2, COOLDOWN);
        let (first, _) = breaker.admit(now);
        let (second, _) = breaker.admit(now);
        let (third, _) = breaker.admit(now);
        breaker.record(first, Outcome::Failure, now);
        breaker.record(second, Outcome::Failure, now);
        assert_eq!(breaker.state(), BreakerState::Open);
        // The third call was in flight when it opened; its success does not close it.
        assert_eq!(breaker.record(third, Outcome::Success, now), None);
        assert_eq!(breaker.state(), BreakerState::Open);
        // A skipped call reports nothing.
        assert_eq!(breaker.record(Admission::Skip, Outcome::Failure, now), None);
    }
}
