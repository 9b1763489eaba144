//! Token buckets shared by every worker VM, in a bounded table in proxy shared data.
//!
//! The table has a fixed number of slots (`maxKeys`) grouped in pages of [`PAGE_SLOTS`]; each
//! page is one shared-data key, written with compare-and-swap. A key may live in two slots of
//! its page (2-way set associative): it takes its own slot, else an empty one, else evicts the
//! least recently updated of the two. Memory is therefore bounded whatever clients send; an
//! evicted key starts again with a full bucket, which is the price of the bound.
//!
//! Pages are created at configure time (before traffic) because the proxy-wasm ABI cannot
//! create a key atomically: a CAS write to an absent key always lands. A page that disappears
//! anyway is re-created blindly on the request path.

use sha2::{Digest, Sha256};

use crate::host::{Host, SharedWriteError};
use crate::token_bucket::{BucketSpec, BucketState, Verdict};

pub const PAGE_SLOTS: usize = 16;
const PAGE_BYTES: usize = PAGE_SLOTS * BucketState::ENCODED_LEN;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketTable {
    /// Shared-data key prefix, unique per rule and config (a new config starts fresh).
    prefix: String,
    pages: u32,
    max_retries: u32,
}

/// What happened to one take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Decided {
        verdict: Verdict,
        retries: u32,
    },
    /// Retries exhausted or the store refused: the request is let through.
    FailedOpen {
        retries: u32,
    },
}

impl BucketTable {
    pub fn new(prefix: String, max_keys: u32, max_retries: u32) -> Self {
        Self {
            prefix,
            pages: max_keys.div_ceil(PAGE_SLOTS as u32).max(1),
            max_retries,
        }
    }

    fn page_key(&self, page: u32) -> String {
        format!("{}/{page}", self.prefix)
    }

    /// Creates the pages that do not exist yet (configure time).
    pub fn create_pages(&self, host: &mut dyn Host) {
        for page in 0..self.pages {
            let key = self.page_key(page);
            if host.shared_data(&key).value.is_none() {
                let _ = host.set_shared_data(&key, &[0u8; PAGE_BYTES], None);
            }
        }
    }

    /// Takes one token for `key` under `spec`.
    pub fn take(&self, host: &mut dyn Host, spec: &BucketSpec, key: &[u8], now: u64) -> Outcome {
        let fingerprint = fingerprint(key);
        let page = (fingerprint % u64::from(self.pages)) as u32;
        let ways = [
            ((fingerprint >> 32) as usize) % PAGE_SLOTS,
            ((fingerprint >> 40) as usize) % PAGE_SLOTS,
        ];
        let page_key = self.page_key(page);
        let mut retries = 0;
        loop {
            let entry = host.shared_data(&page_key);
            let mut bytes = match entry.value {
                Some(bytes) if bytes.len() == PAGE_BYTES => bytes,
                // Absent or foreign: start the page over (see the module comment).
                _ => vec![0u8; PAGE_BYTES],
            };
            let slot = choose_slot(&bytes, ways, fingerprint);
            let range = slot * BucketState::ENCODED_LEN..(slot + 1) * BucketState::ENCODED_LEN;
            let current = BucketState::decode(&bytes[range.clone()])
                .filter(|s| s.fingerprint == fingerprint)
                .unwrap_or_else(|| spec.fresh(fingerprint, now));
            let (next, verdict) = spec.take(current, now);
            next.encode(&mut bytes[range]);
            match host.set_shared_data(&page_key, &bytes, entry.cas) {
                Ok(()) => return Outcome::Decided { verdict, retries },
                Err(SharedWriteError::CasMismatch) if retries < self.max_retries => retries += 1,
                Err(_) => return Outcome::FailedOpen { retries },
            }
        }
    }
}

/// The slot of `fingerprint` among its two ways: its own, else an empty one, else the least
/// recently updated.
fn choose_slot(page: &[u8], ways: [usize; 2], fingerprint: u64) -> usize {
    let state = |slot: usize| {
        page.get(slot * BucketState::ENCODED_LEN..(slot + 1) * BucketState::ENCODED_LEN)
            .and_then(BucketState::decode)
            .unwrap_or_default()
    };
    let [a, b] = ways.map(|slot| (slot, state(slot)));
    if a.1.fingerprint == fingerprint {
        return a.0;
    }
    if b.1.fingerprint == fingerprint {
        return b.0;
    }
    if a.1.is_empty() {
        return a.0;
    }
    if b.1.is_empty() {
        return b.0;
    }
    if a.1.updated_nanos <= b.1.updated_nanos {
        a.0
    } else {
        b.0
    }
}

/// A non-zero 64-bit digest of the key (zero marks an empty slot).
fn fingerprint(key: &[u8]) -> u64 {
    let digest = Sha256::digest(key);
    let mut word = [0u8; 8];
    word.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(word).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_host::TestHost;

    const SEC: u64 = 1_000_000_000;

    fn spec(burst: u64) -> BucketSpec {
        BucketSpec {
            burst,
            requests: burst,
            period_nanos: 60 * SEC,
        }
    }

    fn allowed(outcome: Outcome) -> bool {
        matches!(outcome, Outcome::Decided { verdict, .. } if verdict.allowed)
    }

    #[test]
    fn keys_get_separate_buckets() {
        let mut host = TestHost::default();
        let table = BucketTable::new("t".into(), 64, 4);
        table.create_pages(&mut host);
        assert_eq!(host.shared.len(), 4);
        let spec = spec(2);
        let a: Vec<bool> = (0..3)
            .map(|_| allowed(table.take(&mut host, &spec, b"a", 0)))
            .collect();
        let b: Vec<bool> = (0..3)
            .map(|_| allowed(table.take(&mut host, &spec, b"b", 0)))
            .collect();
        assert_eq!(a, [true, true, false]);
        assert_eq!(b, [true, true, false]);
    }

    #[test]
    fn the_key_space_stays_bounded_under_a_flood_of_keys() {
        let mut host = TestHost::default();
        let table = BucketTable::new("t".into(), 32, 4);
        table.create_pages(&mut host);
        for i in 0..10_000u32 {
            let _ = table.take(&mut host, &spec(1), &i.to_le_bytes(), u64::from(i));
        }
        assert_eq!(host.shared.len(), 2, "2 pages of 16 slots, no growth");
    }

    #[test]
    fn cas_conflicts_are_retried_then_fail_open() {
        let mut host = TestHost::default();
        let table = BucketTable::new("t".into(), 16, 3);
        table.create_pages(&mut host);
        host.cas_conflicts = 2;
        assert!(matches!(
            table.take(&mut host, &spec(5), b"k", 0),
            Outcome::Decided { retries: 2, .. }
        ));
        host.cas_conflicts = 100;
        assert_eq!(
            table.take(&mut host, &spec(5), b"k", 0),
            Outcome::FailedOpen { retries: 3 }
        );
    }

    #[test]
    fn an_idle_slot_is_evicted_before_a_busy_one() {
        let page = {
            let mut bytes = vec![0u8; PAGE_BYTES];
            BucketState {
                fingerprint: 5,
                micro_tokens: 0,
                updated_nanos: 100,
            }
            .encode(&mut bytes[0..24]);
            BucketState {
                fingerprint: 6,
                micro_tokens: 0,
                updated_nanos: 50,
            }
            .encode(&mut bytes[24..48]);
            bytes
        };
        assert_eq!(choose_slot(&page, [0, 1], 9), 1);
        assert_eq!(choose_slot(&page, [0, 1], 5), 0);
        assert_eq!(choose_slot(&page, [0, 2], 9), 2);
    }
}
