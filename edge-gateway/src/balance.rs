//! Load-balancing policy, host-independent (no clock, no I/O: callers pass `now`):
//! - [`ActiveHealth`]: an endpoint leaves the rotation after `unhealthy` consecutive failed
//!   active checks and returns after `healthy` consecutive passes; an endpoint discovered while
//!   others already serve is *pending* until its first check;
//! - [`Outlier`]: passive ejection (Envoy's outlier detection) after consecutive connect
//!   failures / resets, for a period that grows with each ejection and shrinks again while the
//!   endpoint behaves;
//! - [`pick`]: round robin over available endpoints, or over every endpoint when fewer than the
//!   panic threshold are available (Envoy's panic routing), so the edge never turns a partial
//!   outage into a full one by itself.

use std::time::{Duration, Instant};

/// Consecutive check results that flip an endpoint's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthThresholds {
    pub unhealthy: u32,
    pub healthy: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HealthState {
    /// Discovered, not checked yet: neither counted nor chosen while checked endpoints exist.
    Pending,
    Healthy,
    Unhealthy,
}

/// An endpoint's active-health state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveHealth {
    state: HealthState,
    /// Consecutive results against the current state.
    streak: u32,
}

impl ActiveHealth {
    /// For the endpoints known at start: serve right away, like a static upstream list.
    pub fn assumed_healthy() -> Self {
        Self {
            state: HealthState::Healthy,
            streak: 0,
        }
    }

    /// For endpoints discovered later: their first check decides.
    pub fn pending() -> Self {
        Self {
            state: HealthState::Pending,
            streak: 0,
        }
    }

    pub fn is_healthy(&self) -> bool {
        self.state == HealthState::Healthy
    }

    pub fn is_pending(&self) -> bool {
        self.state == HealthState::Pending
    }

    /// Records one check; returns the new health when it flipped.
    pub fn observe(&mut self, passed: bool, thresholds: HealthThresholds) -> Option<bool> {
        let (threshold, flipped_to) = match (self.state, passed) {
            (HealthState::Pending, _) => {
                self.state = if passed {
                    HealthState::Healthy
                } else {
                    HealthState::Unhealthy
                };
                self.streak = 0;
                return Some(passed);
            }
            (HealthState::Healthy, true) | (HealthState::Unhealthy, false) => {
                self.streak = 0;
                return None;
            }
            (HealthState::Healthy, false) => (thresholds.unhealthy, HealthState::Unhealthy),
            (HealthState::Unhealthy, true) => (thresholds.healthy, HealthState::Healthy),
        };
        self.streak += 1;
        if self.streak >= threshold.max(1) {
            self.state = flipped_to;
            self.streak = 0;
            Some(passed)
        } else {
            None
        }
    }
}

/// Passive ejection settings; `consecutive_failures == 0` turns it off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierSettings {
    pub consecutive_failures: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
}

/// An endpoint's passive-health state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outlier {
    consecutive_failures: u32,
    /// Ejections not yet forgiven: the next one lasts `base × (ejections + 1)`.
    ejections: u32,
    ejected_until: Option<Instant>,
    /// Since when the endpoint has been back without a new ejection (forgiveness clock).
    back_since: Option<Instant>,
}

impl Outlier {
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }

    /// A request reached the endpoint and got an answer.
    pub fn record_success(&mut self) {
        self.consecutive_failures = 0;
    }

    /// A connect failure or reset. `may_eject` is false when ejecting this endpoint would leave
    /// fewer available than the panic threshold. Returns the ejection period when it ejects.
    pub fn record_failure(
        &mut self,
        now: Instant,
        settings: &OutlierSettings,
        may_eject: bool,
    ) -> Option<Duration> {
        if settings.consecutive_failures == 0 || self.is_ejected(now) {
            return None;
        }
        self.forgive(now, settings);
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.consecutive_failures < settings.consecutive_failures || !may_eject {
            return None;
        }
        self.ejections = self.ejections.saturating_add(1);
        let period = settings
            .base_ejection
            .saturating_mul(self.ejections)
            .min(settings.max_ejection);
        self.ejected_until = Some(now + period);
        self.back_since = Some(now + period);
        self.consecutive_failures = 0;
        Some(period)
    }

    /// Each base period spent back in rotation without an ejection forgives one ejection.
    fn forgive(&mut self, now: Instant, settings: &OutlierSettings) {
        let (Some(since), false) = (self.back_since, settings.base_ejection.is_zero()) else {
            return;
        };
        let good = now.saturating_duration_since(since);
        let periods = good.as_nanos() / settings.base_ejection.as_nanos();
        let forgiven = u32::try_from(periods)
            .unwrap_or(u32::MAX)
            .min(self.ejections);
        self.ejections -= forgiven;
        self.back_since = Some(since + settings.base_ejection.saturating_mul(forgiven));
    }
}

/// True when fewer than `threshold_percent` of the `counted` endpoints are available.
pub fn in_panic(available: usize, counted: usize, threshold_percent: u8) -> bool {
    counted > 0 && available * 100 < counted * usize::from(threshold_percent)
}

/// Whether one more of the `available` endpoints may be ejected: never the last one, never
/// below the panic threshold.
pub fn may_eject(available: usize, counted: usize, threshold_percent: u8) -> bool {
    available > 1 && !in_panic(available - 1, counted, threshold_percent)
}

/// What the balancer knows of one endpoint when it picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Not yet checked (see [`ActiveHealth::pending`]).
    pub pending: bool,
    /// Healthy and not ejected.
    pub available: bool,
    /// This request already tried it.
    pub tried: bool,
}

/// The chosen endpoint's index, and whether panic routing chose it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub index: usize,
    pub panic: bool,
}

/// Round robin from `start` over the candidates this request has not tried: the available
/// ones, or all checked ones in panic. Pending endpoints are only used when nothing has been
/// checked yet.
pub fn pick(candidates: &[Candidate], start: usize, threshold_percent: u8) -> Option<Pick> {
    let counted = candidates.iter().filter(|c| !c.pending).count();
    let available = candidates
        .iter()
        .filter(|c| !c.pending && c.available)
        .count();
    let panic = in_panic(available, counted, threshold_percent);
    let eligible = |c: &Candidate| {
        if counted == 0 {
            true
        } else {
            !c.pending && (c.available || panic)
        }
    };
    let len = candidates.len();
    (0..len)
        .map(|offset| (start + offset) % len)
        .find(|&index| !candidates[index].tried && eligible(&candidates[index]))
        .map(|index| Pick {
            index,
            panic: panic && !candidates[index].available,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: HealthThresholds = HealthThresholds {
        unhealthy: 3,
        healthy: 2,
    };

    #[test]
    fn health_flips_only_after_consecutive_results() {
        let mut health = ActiveHealth::assumed_healthy();
        assert_eq!(health.observe(false, T), None);
        assert_eq!(health.observe(false, T), None);
        // A pass in between restarts the count.
        assert_eq!(health.observe(true, T), None);
        assert_eq!(health.observe(false, T), None);
        assert_eq!(health.observe(false, T), None);
        assert!(health.is_healthy());
        assert_eq!(health.observe(false, T), Some(false));
        assert!(!health.is_healthy());
        assert_eq!(health.observe(true, T), None);
        assert_eq!(health.observe(false, T), None);
        assert_eq!(health.observe(true, T), None);
        assert_eq!(health.observe(true, T), Some(true));
        assert!(health.is_healthy());
    }

    #[test]
    fn pending_endpoints_are_decided_by_their_first_check() {
        let mut health = ActiveHealth::pending();
        assert!(health.is_pending() && !health.is_healthy());
        assert_eq!(health.observe(true, T), Some(true));
        assert!(health.is_healthy());
        let mut health = ActiveHealth::pending();
        assert_eq!(health.observe(false, T), Some(false));
        assert!(!health.is_pending() && !health.is_healthy());
    }

    const O: OutlierSettings = OutlierSettings {
        consecutive_failures: 3,
        base_ejection: Duration::from_secs(10),
        max_ejection: Duration::from_secs(25),
    };

    #[test]
    fn consecutive_failures_eject_for_a_growing_period() {
        let start = Instant::now();
        let mut outlier = Outlier::default();
        assert_eq!(outlier.record_failure(start, &O, true), None);
        assert_eq!(outlier.record_failure(start, &O, true), None);
        assert_eq!(
            outlier.record_failure(start, &O, true),
            Some(Duration::from_secs(10))
        );
        assert!(outlier.is_ejected(start + Duration::from_secs(9)));
        assert!(!outlier.is_ejected(start + Duration::from_secs(10)));
        // Failures while ejected (requests already under way) do not extend it.
        assert_eq!(outlier.record_failure(start, &O, true), None);
        let back = start + Duration::from_secs(10);
        for _ in 0..2 {
            assert_eq!(outlier.record_failure(back, &O, true), None);
        }
        // Second ejection right after returning: twice as long.
        assert_eq!(
            outlier.record_failure(back, &O, true),
            Some(Duration::from_secs(20))
        );
        let back = back + Duration::from_secs(20);
        for _ in 0..2 {
            outlier.record_failure(back, &O, true);
        }
        // Third: capped at the maximum.
        assert_eq!(
            outlier.record_failure(back, &O, true),
            Some(Duration::from_secs(25))
        );
    }

    #[test]
    fn a_success_resets_the_count_and_good_time_forgives_ejections() {
        let start = Instant::now();
        let mut outlier = Outlier::default();
        outlier.record_failure(start, &O, true);
        outlier.record_failure(start, &O, true);
        outlier.record_success();
        outlier.record_failure(start, &O, true);
        outlier.record_failure(start, &O, true);
        assert!(!outlier.is_ejected(start));
        assert!(outlier.record_failure(start, &O, true).is_some());
        // Back at +10 s, then 30 s without trouble: the ejection is forgiven, the next is short.
        let later = start + Duration::from_secs(40);
        outlier.record_failure(later, &O, true);
        outlier.record_failure(later, &O, true);
        assert_eq!(
            outlier.record_failure(later, &O, true),
            Some(Duration::from_secs(10))
        );
    }

    #[test]
    fn no_ejection_below_the_panic_threshold_or_when_off() {
        let now = Instant::now();
        let mut outlier = Outlier::default();
        for _ in 0..10 {
            assert_eq!(outlier.record_failure(now, &O, false), None);
        }
        // Once allowed, the next failure ejects at once (the count was kept).
        assert!(outlier.record_failure(now, &O, true).is_some());
        let off = OutlierSettings {
            consecutive_failures: 0,
            ..O
        };
        let mut outlier = Outlier::default();
        for _ in 0..10 {
            assert_eq!(outlier.record_failure(now, &off, true), None);
        }
        assert!(may_eject(2, 2, 50));
        assert!(!may_eject(1, 2, 50), "never below half with threshold 50");
        assert!(!may_eject(1, 1, 0), "never the last endpoint");
        assert!(may_eject(2, 4, 25) && !may_eject(1, 4, 25));
    }

    fn candidates(spec: &str) -> Vec<Candidate> {
        // a = available, u = unhealthy/ejected, p = pending; uppercase = already tried.
        spec.chars()
            .map(|c| Candidate {
                pending: c.eq_ignore_ascii_case(&'p'),
                available: c.eq_ignore_ascii_case(&'a'),
                tried: c.is_ascii_uppercase(),
            })
            .collect()
    }

    fn index(spec: &str, start: usize, threshold: u8) -> Option<(usize, bool)> {
        pick(&candidates(spec), start, threshold).map(|p| (p.index, p.panic))
    }

    #[test]
    fn round_robin_over_available_endpoints() {
        assert_eq!(index("aua", 0, 50), Some((0, false)));
        assert_eq!(index("aua", 1, 50), Some((2, false)));
        assert_eq!(index("aua", 2, 50), Some((2, false)));
        assert_eq!(index("Aua", 0, 50), Some((2, false)));
        assert_eq!(index("AuA", 0, 50), None, "no untried available endpoint");
        assert_eq!(index("", 0, 50), None);
    }

    #[test]
    fn panic_routes_to_every_endpoint_when_too_few_are_available() {
        // 1 of 3 available < 50 %: everything is a candidate.
        assert_eq!(index("auu", 1, 50), Some((1, true)));
        assert_eq!(index("uuu", 0, 50), Some((0, true)));
        assert_eq!(index("UUu", 0, 50), Some((2, true)));
        // 2 of 4 = 50 %: not in panic.
        assert_eq!(index("auau", 1, 50), Some((2, false)));
        // Threshold 0: never.
        assert_eq!(index("uuu", 0, 0), None);
    }

    #[test]
    fn pending_endpoints_wait_for_their_first_check() {
        assert_eq!(index("pa", 0, 50), Some((1, false)));
        assert_eq!(index("pA", 0, 50), None);
        // They do not count towards the panic computation either.
        assert_eq!(index("ppau", 0, 50), Some((2, false)));
        // With nothing checked yet, they are all there is.
        assert_eq!(index("pp", 1, 50), Some((1, false)));
    }
}
