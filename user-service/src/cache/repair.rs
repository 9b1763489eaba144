//! After a committed write the cache gets the new entry (or tombstone) through the
//! compare-and-set; a write whose update failed is remembered ([`Repairs`]) and retried in the
//! background until it (or something newer) lands. Meanwhile this instance bypasses the cache
//! for that user, or for every list page while a generation bump is owed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::{Cache, CacheEntry, entry, guard::Reply};
use crate::domain::{UserId, Version};

/// Writes whose cache update failed, kept at most this many users (the rest are counted and
/// left to the TTL).
const MAX_PENDING_REPAIRS: usize = 100_000;

impl Cache {
    /// After a committed write: store the user's new entry (or tombstone) unless a newer one is
    /// there, and bump the list generation, in one atomic step. On failure the write is
    /// remembered for the repair task.
    pub(super) async fn after_write(&self, id: UserId, entry: CacheEntry) {
        let key = self.user_key(id);
        let generation_key = self.generation_key();
        let epoch = self.repairs.generation_epoch();
        let stored = self
            .call(
                "after_write",
                self.backend
                    .put_newer(&key, &entry, self.settings.ttl, Some(&generation_key)),
            )
            .await;
        match stored {
            Reply::Done(winner) => {
                let landed = winner_version(winner.as_deref()).max(entry.version());
                self.repairs.landed(id, landed);
                self.repairs.generation_bumped(epoch);
            }
            Reply::Failed | Reply::Skipped => self.remember(id, entry),
        }
        self.metrics
            .cache_repairs_pending
            .set(i64::try_from(self.repairs.lock().len()).unwrap_or(i64::MAX));
    }

    fn remember(&self, id: UserId, entry: CacheEntry) {
        if self.repairs.remember(id, entry) {
            self.repairs.wake.notify_one();
        } else {
            self.metrics
                .cache_repairs
                .with_label_values(&["dropped"])
                .inc();
        }
    }

    /// Retries remembered writes until they land. Runs until the store is dropped.
    pub(super) async fn repair_loop(self: Arc<Self>) {
        loop {
            if self.repairs.is_empty() {
                self.repairs.wake.notified().await;
            } else {
                self.repair_once().await;
                if !self.repairs.is_empty() {
                    // Not everything landed: the cache is failing. Try again after a cool-down
                    // (the breaker skips calls until then anyway) or when a new write fails.
                    tokio::select! {
                        () = tokio::time::sleep(self.settings.breaker_cooldown) => {}
                        () = self.repairs.wake.notified() => {}
                    }
                }
            }
        }
    }

    async fn repair_once(&self) {
        let snapshot: Vec<(UserId, CacheEntry)> = self
            .repairs
            .lock()
            .iter()
            .map(|(id, entry)| (*id, entry.clone()))
            .collect();
        for (id, entry) in snapshot {
            let key = self.user_key(id);
            let stored = self
                .call(
                    "repair",
                    self.backend
                        .put_newer(&key, &entry, self.settings.ttl, None),
                )
                .await;
            let Reply::Done(winner) = stored else {
                return;
            };
            let landed = winner_version(winner.as_deref()).max(entry.version());
            self.repairs.landed(id, landed);
            self.metrics
                .cache_repairs
                .with_label_values(&["done"])
                .inc();
        }
        if self.repairs.generation_dirty() {
            let epoch = self.repairs.generation_epoch();
            let bumped = self
                .call(
                    "repair",
                    self.backend.bump_generation(&self.generation_key()),
                )
                .await;
            if let Reply::Done(()) = bumped {
                self.repairs.generation_bumped(epoch);
                self.metrics
                    .cache_repairs
                    .with_label_values(&["done"])
                    .inc();
            }
        }
        self.metrics
            .cache_repairs_pending
            .set(i64::try_from(self.repairs.lock().len()).unwrap_or(i64::MAX));
    }
}

fn winner_version(winner: Option<&[u8]>) -> Version {
    winner
        .and_then(entry::version_of)
        .unwrap_or(Version::new(0))
}

/// Writes whose cache update failed: the newest entry per user, and whether a list generation
/// bump is owed. `generation_epoch` counts owed bumps, `clean_epoch` the last one known landed:
/// a bump that *started* after a failure was marked covers it.
#[derive(Default)]
pub(super) struct Repairs {
    users: Mutex<HashMap<UserId, CacheEntry>>,
    dirty_epoch: AtomicU64,
    clean_epoch: AtomicU64,
    pub(super) wake: Notify,
}

impl Repairs {
    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<UserId, CacheEntry>> {
        self.users
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn is_empty(&self) -> bool {
        self.lock().is_empty() && !self.generation_dirty()
    }

    pub(super) fn is_pending(&self, id: UserId) -> bool {
        self.lock().contains_key(&id)
    }

    /// Remembers `entry` (unless a newer one is remembered) and owes a generation bump.
    /// `false` when the map is full and the entry was dropped.
    fn remember(&self, id: UserId, entry: CacheEntry) -> bool {
        self.dirty_epoch.fetch_add(1, Ordering::AcqRel);
        let mut users = self.lock();
        if let Some(remembered) = users.get_mut(&id) {
            if entry::supersedes(entry.version(), Some(remembered.version())) {
                *remembered = entry;
            }
            return true;
        }
        if users.len() >= MAX_PENDING_REPAIRS {
            return false;
        }
        users.insert(id, entry);
        true
    }

    /// The cache now holds `version` or newer for `id`: a remembered entry not newer is done.
    fn landed(&self, id: UserId, version: Version) {
        let mut users = self.lock();
        if users
            .get(&id)
            .is_some_and(|remembered| remembered.version() <= version)
        {
            users.remove(&id);
        }
    }

    pub(super) fn generation_epoch(&self) -> u64 {
        self.dirty_epoch.load(Ordering::Acquire)
    }

    pub(super) fn generation_dirty(&self) -> bool {
        self.dirty_epoch.load(Ordering::Acquire) > self.clean_epoch.load(Ordering::Acquire)
    }

    /// A bump issued when the epoch was `epoch` landed.
    fn generation_bumped(&self, epoch: u64) {
        self.clean_epoch.fetch_max(epoch, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::User;

    fn entry(id: UserId, version: i64) -> CacheEntry {
        CacheEntry::User(User {
            id,
            ..entry::sample_user(version)
        })
    }

    #[test]
    fn repairs_keep_the_newest_write_until_it_or_newer_lands() {
        let repairs = Repairs::default();
        let id = UserId::new_random();
        assert!(repairs.remember(id, entry(id, 3)));
        assert!(
            repairs.remember(id, entry(id, 2)),
            "an older write is absorbed"
        );
        repairs.landed(id, Version::new(2));
        assert!(repairs.is_pending(id), "v3 has not landed yet");
        repairs.landed(id, Version::new(4));
        assert!(!repairs.is_pending(id), "something newer landed");
    }

    #[test]
    fn a_generation_bump_only_covers_failures_marked_before_it_started() {
        let repairs = Repairs::default();
        let id = UserId::new_random();
        repairs.remember(id, entry(id, 1));
        let before_bump = repairs.generation_epoch();
        // Another write fails while the bump is in flight: its commit may be after the bump.
        repairs.remember(id, entry(id, 2));
        repairs.generation_bumped(before_bump);
        assert!(repairs.generation_dirty());
        repairs.generation_bumped(repairs.generation_epoch());
        assert!(!repairs.generation_dirty());
    }
}
