//! Token-bucket arithmetic and its fixed-size encoding in shared data.
//!
//! Tokens are kept in millionths so a slow refill (say 1 per hour) still accrues between two
//! requests; time is wall-clock nanoseconds from the host (a clock that steps back refills
//! nothing rather than underflowing).

const MICRO: u64 = 1_000_000;
const NANOS_PER_SEC: u64 = 1_000_000_000;

/// The limit of one rule: `burst` tokens, refilled at `requests` per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BucketSpec {
    pub burst: u64,
    pub requests: u64,
    pub period_nanos: u64,
}

/// The state of one bucket; `fingerprint` identifies the key that owns the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BucketState {
    pub fingerprint: u64,
    pub micro_tokens: u64,
    pub updated_nanos: u64,
}

/// The verdict for one request against one bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Whole tokens left after this request.
    pub remaining: u64,
    /// Seconds until the next token (0 when one is available).
    pub retry_after_secs: u64,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
}

impl BucketState {
    pub const ENCODED_LEN: usize = 24;

    pub fn encode(&self, out: &mut [u8]) {
        if out.len() >= Self::ENCODED_LEN {
            out[0..8].copy_from_slice(&self.fingerprint.to_le_bytes());
            out[8..16].copy_from_slice(&self.micro_tokens.to_le_bytes());
            out[16..24].copy_from_slice(&self.updated_nanos.to_le_bytes());
        }
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let word = |i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(bytes.get(i..i + 8)?.try_into().ok()?))
        };
        Some(Self {
            fingerprint: word(0)?,
            micro_tokens: word(8)?,
            updated_nanos: word(16)?,
        })
    }

    /// An unused slot (no key has fingerprint 0: see `fingerprint`).
    pub fn is_empty(&self) -> bool {
        self.fingerprint == 0
    }
}

impl BucketSpec {
    fn capacity(&self) -> u64 {
        self.burst.saturating_mul(MICRO)
    }

    /// A full bucket for a key seen for the first time.
    pub fn fresh(&self, fingerprint: u64, now: u64) -> BucketState {
        BucketState {
            fingerprint,
            micro_tokens: self.capacity(),
            updated_nanos: now,
        }
    }

    /// Adds the tokens earned since the last update.
    pub fn refill(&self, state: BucketState, now: u64) -> BucketState {
        let elapsed = now.saturating_sub(state.updated_nanos);
        let earned = u128::from(elapsed) * u128::from(self.requests) * u128::from(MICRO)
            / u128::from(self.period_nanos.max(1));
        let tokens = (u128::from(state.micro_tokens) + earned).min(u128::from(self.capacity()));
        BucketState {
            fingerprint: state.fingerprint,
            micro_tokens: u64::try_from(tokens).unwrap_or(u64::MAX),
            updated_nanos: now.max(state.updated_nanos),
        }
    }

    /// Refills, then takes one token if there is one.
    pub fn take(&self, state: BucketState, now: u64) -> (BucketState, Verdict) {
        let mut next = self.refill(state, now);
        let allowed = next.micro_tokens >= MICRO;
        if allowed {
            next.micro_tokens -= MICRO;
        }
        let verdict = Verdict {
            allowed,
            remaining: next.micro_tokens / MICRO,
            retry_after_secs: if next.micro_tokens >= MICRO {
                0
            } else {
                self.secs_to_earn(MICRO - next.micro_tokens)
            },
            reset_secs: self.secs_to_earn(self.capacity() - next.micro_tokens.min(self.capacity())),
        };
        (next, verdict)
    }

    /// Whole seconds (rounded up) to earn `micro` millionths of a token.
    fn secs_to_earn(&self, micro: u64) -> u64 {
        let per_sec = u128::from(self.requests) * u128::from(MICRO) * u128::from(NANOS_PER_SEC);
        let needed = u128::from(micro) * u128::from(self.period_nanos) * u128::from(NANOS_PER_SEC);
        let nanos = needed.div_ceil(per_sec.max(1));
        u64::try_from(nanos.div_ceil(u128::from(NANOS_PER_SEC))).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = NANOS_PER_SEC;

    fn spec(burst: u64, requests: u64, period_secs: u64) -> BucketSpec {
        BucketSpec {
            burst,
            requests,
            period_nanos: period_secs * SEC,
        }
    }

    #[test]
    fn takes_until_empty_then_refuses() {
        let spec = spec(3, 3, 60);
        let mut state = spec.fresh(7, 1000);
        let mut allowed = 0;
        for _ in 0..5 {
            let (next, verdict) = spec.take(state, 1000);
            state = next;
            allowed += u32::from(verdict.allowed);
        }
        assert_eq!(allowed, 3);
        let (_, verdict) = spec.take(state, 1000);
        assert!(!verdict.allowed);
        assert_eq!(verdict.remaining, 0);
        assert_eq!(
            verdict.retry_after_secs, 20,
            "3 per minute: one token every 20 s"
        );
        assert_eq!(verdict.reset_secs, 60);
    }

    #[test]
    fn refills_by_elapsed_time_up_to_the_burst() {
        let spec = spec(2, 2, 10);
        let (state, _) = spec.take(spec.fresh(1, 0), 0);
        let (state, _) = spec.take(state, 0);
        assert_eq!(state.micro_tokens, 0);
        let half = spec.refill(state, 2_500_000_000);
        assert_eq!(half.micro_tokens, MICRO / 2);
        let (_, verdict) = spec.take(state, 5 * SEC);
        assert!(verdict.allowed);
        let full = spec.refill(state, 1000 * SEC);
        assert_eq!(full.micro_tokens, 2 * MICRO);
    }

    #[test]
    fn a_clock_stepping_back_refills_nothing() {
        let spec = spec(1, 1, 1);
        let (state, _) = spec.take(spec.fresh(1, 10 * SEC), 10 * SEC);
        let (after, verdict) = spec.take(state, 5 * SEC);
        assert!(!verdict.allowed);
        assert_eq!(after.updated_nanos, 10 * SEC);
    }

    #[test]
    fn encodes_round_trip() {
        let state = BucketState {
            fingerprint: u64::MAX,
            micro_tokens: 12,
            updated_nanos: 99,
        };
        let mut buf = [0u8; BucketState::ENCODED_LEN];
        state.encode(&mut buf);
        assert_eq!(BucketState::decode(&buf), Some(state));
        assert_eq!(BucketState::decode(&buf[..10]), None);
    }
}
