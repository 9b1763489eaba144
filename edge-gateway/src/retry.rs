//! A retry budget: retries may add at most `ratio` extra load on top of a small floor, so a
//! failing upstream is not hammered by retry storms (the approach of Finagle and linkerd).

use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    floor_per_second: f64,
    /// Cap on saved-up tokens: ten seconds of floor plus the ratio of 100 requests.
    capacity: f64,
    state: Mutex<BudgetState>,
}

#[derive(Debug)]
struct BudgetState {
    tokens: f64,
    last_refill: Instant,
}

impl RetryBudget {
    pub fn new(ratio: f64, floor_per_second: u32) -> Self {
        let floor = f64::from(floor_per_second);
        let capacity = floor * 10.0 + ratio * 100.0;
        Self {
            ratio,
            floor_per_second: floor,
            capacity,
            state: Mutex::new(BudgetState {
                tokens: capacity,
                last_refill: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BudgetState> {
        // A poisoned lock only means another request panicked mid-update; the number is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every original request earns `ratio` of a retry.
    pub fn deposit(&self) {
        let mut state = self.lock();
        state.tokens = (state.tokens + self.ratio).min(self.capacity);
    }

    /// Takes one retry from the budget if there is one.
    pub fn try_withdraw(&self) -> bool {
        self.try_withdraw_at(Instant::now())
    }

    fn try_withdraw_at(&self, now: Instant) -> bool {
        let mut state = self.lock();
        let elapsed = now
            .saturating_duration_since(state.last_refill)
            .as_secs_f64();
        state.tokens = (state.tokens + elapsed * self.floor_per_second).min(self.capacity);
        state.last_refill = now;
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn budget_runs_out_and_refills() {
        let budget = RetryBudget::new(0.5, 1);
        let start = Instant::now();
        let mut granted = 0;
        while budget.try_withdraw_at(start) {
            granted += 1;
        }
        // 10 s of floor (10) + 0.5 × 100 (50).
        assert_eq!(granted, 60);
        budget.deposit();
        budget.deposit();
        assert!(budget.try_withdraw_at(start));
        assert!(!budget.try_withdraw_at(start));
        assert!(budget.try_withdraw_at(start + Duration::from_secs(1)));
    }

    #[test]
    fn zero_budget_never_retries() {
        let budget = RetryBudget::new(0.0, 0);
        budget.deposit();
        assert!(!budget.try_withdraw());
    }
}
