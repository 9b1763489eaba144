//! The read-through cache decorator: any [`UserStore`] wrapped with Valkey/Redis (when
//! `REDIS_URL` is set) or an in-process cache.
//!
//! Keys (all under the configured prefix):
//! - `user:{id}`: one user as a versioned entry ([`entry`]), or a tombstone after a delete.
//!   Read-through on `GetUser`; written after every successful write. Every write goes through
//!   one compare-and-set: an entry replaces the stored one only if its version is newer, so a
//!   fill that read the database before a concurrent write, or two writers whose cache calls
//!   land out of commit order, can never leave an older user in the cache, and a fill cannot
//!   bring back a deleted user (its version is older than the tombstone's).
//! - `users:list:generation`: a counter bumped after every write (in the same atomic step).
//! - `users:list:{generation}:{page}:{limit}`: one `ListUsers` page. Bumping the generation makes
//!   every cached page unreachable at once (no key scans); old pages expire by TTL. A reader
//!   reads the generation *before* querying the database, so a page it computed concurrently
//!   with a write lands under the old generation and is never served.
//!
//! The cache is best effort: every cache operation is bounded by a timeout and goes through a
//! circuit breaker ([`breaker`]); on a failure or while the breaker is open the request is
//! served from the database. A write whose cache update failed is remembered and retried in the
//! background until it lands ([`Repairs`]); until then this instance reads that user (or, for a
//! missed generation bump, every list page) from the database. Concurrent misses of one key
//! share one database read (single flight), so a cold cache after an outage does not stampede
//! the database; the shared read's fill goes through the same compare-and-set and every waiter
//! gets the winning entry.

pub mod backend;
pub mod breaker;
pub mod entry;
mod single_flight;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tracing::Instrument;

pub use backend::{CacheBackend, CacheError};
use breaker::{Admission, Breaker, BreakerState, Outcome};
pub use entry::CacheEntry;
use single_flight::SingleFlight;

use crate::domain::{
    NewUser, PageRequest, StoreError, User, UserChanges, UserId, UserPage, UserStore, Version,
};
use crate::metrics::Metrics;

/// Cache settings from the config.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub key_prefix: String,
    pub ttl: Duration,
    /// Upper bound on any single cache round trip.
    pub timeout: Duration,
    /// Entries kept by the in-process cache.
    pub local_capacity: usize,
    /// Consecutive failed cache calls that open the breaker.
    pub breaker_failures: u32,
    /// How long an open breaker skips the cache before one probe call.
    pub breaker_cooldown: Duration,
}

/// Writes whose cache update failed, kept at most this many users (the rest are counted and
/// left to the TTL).
const MAX_PENDING_REPAIRS: usize = 100_000;

/// A [`UserStore`] decorated with the cache.
pub struct CachedStore<S> {
    inner: S,
    cache: Arc<Cache>,
    user_fills: SingleFlight<Result<Option<User>, SharedError>>,
    page_fills: SingleFlight<Result<UserPage, SharedError>>,
    repair_task: tokio::task::JoinHandle<()>,
}

/// The cache itself, shared with the background repair task.
struct Cache {
    backend: CacheBackend,
    settings: CacheSettings,
    metrics: Arc<Metrics>,
    breaker: Mutex<Breaker>,
    error_log: RateLimitedLog,
    repairs: Repairs,
}

/// How one cache call went.
enum Reply<T> {
    Done(T),
    Failed,
    /// Not attempted: the breaker is open.
    Skipped,
}

impl<S> CachedStore<S> {
    /// Must be called inside a Tokio runtime: it starts the background repair task.
    pub fn new(
        inner: S,
        backend: CacheBackend,
        settings: CacheSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let breaker = Breaker::new(settings.breaker_failures, settings.breaker_cooldown);
        let cache = Arc::new(Cache {
            backend,
            settings,
            metrics,
            breaker: Mutex::new(breaker),
            error_log: RateLimitedLog::default(),
            repairs: Repairs::default(),
        });
        cache.publish_breaker_state(BreakerState::Closed);
        let repair_task = tokio::spawn(cache.clone().repair_loop());
        Self {
            inner,
            cache,
            user_fills: SingleFlight::default(),
            page_fills: SingleFlight::default(),
            repair_task,
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// The cached entry of one user, read directly (no breaker, no fill): for diagnostics and
    /// the tests that check what the cache holds.
    pub async fn peek(&self, id: UserId) -> Result<Option<CacheEntry>, CacheError> {
        let bytes = self.cache.backend.get(&self.cache.user_key(id)).await?;
        Ok(bytes.and_then(|bytes| CacheEntry::decode(&bytes)))
    }

    /// Stores `entry` for `id` unless the cache holds a newer one (the worker warms the cache
    /// from events with it; same compare-and-set and repair as after a write here).
    pub async fn warm(&self, id: UserId, entry: CacheEntry) {
        self.cache.after_write(id, entry).await;
    }

    /// Users (and list generation bumps) whose cache update failed and is still being retried.
    pub fn pending_repairs(&self) -> usize {
        let generation = usize::from(self.cache.repairs.generation_dirty());
        self.cache.repairs.lock().len() + generation
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.cache.lock_breaker().state()
    }
}

impl<S> Drop for CachedStore<S> {
    fn drop(&mut self) {
        self.repair_task.abort();
    }
}

impl Cache {
    fn user_key(&self, id: UserId) -> String {
        format!("{}user:{id}", self.settings.key_prefix)
    }

    fn generation_key(&self) -> String {
        format!("{}users:list:generation", self.settings.key_prefix)
    }

    fn page_key(&self, generation: i64, page: PageRequest) -> String {
        format!(
            "{}users:list:{generation}:{}:{}",
            self.settings.key_prefix,
            page.page(),
            page.limit()
        )
    }

    fn lock_breaker(&self) -> MutexGuard<'_, Breaker> {
        self.breaker
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs one cache operation through the breaker and under the timeout. Failures are
    /// counted and logged (rate-limited); the caller falls back to the database.
    async fn call<T>(
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

    fn publish_breaker_state(&self, current: BreakerState) {
        for state in BreakerState::ALL {
            self.metrics
                .cache_breaker_state
                .with_label_values(&[state.name()])
                .set(i64::from(state == current));
        }
    }

    /// The value of a call the read path can use; a failed or skipped call is counted as the
    /// lookup's `error` or `bypass` (the caller then reads the database).
    fn usable<T>(&self, cache: &'static str, reply: Reply<T>) -> Option<T> {
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

    fn count_shared_fill(&self, cache: &'static str) {
        self.metrics
            .cache_shared_fills
            .with_label_values(&[cache])
            .inc();
    }

    fn count(&self, cache: &'static str, result: &'static str) {
        self.metrics
            .cache_requests
            .with_label_values(&[cache, result])
            .inc();
    }

    /// After a committed write: store the user's new entry (or tombstone) unless a newer one is
    /// there, and bump the list generation, in one atomic step. On failure the write is
    /// remembered for the repair task.
    async fn after_write(&self, id: UserId, entry: CacheEntry) {
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
    async fn repair_loop(self: Arc<Self>) {
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

/// Writes whose cache update failed: the newest entry per user, and whether a list generation
/// bump is owed. `generation_epoch` counts owed bumps, `clean_epoch` the last one known landed:
/// a bump that *started* after a failure was marked covers it.
#[derive(Default)]
struct Repairs {
    users: Mutex<HashMap<UserId, CacheEntry>>,
    dirty_epoch: AtomicU64,
    clean_epoch: AtomicU64,
    wake: Notify,
}

impl Repairs {
    fn lock(&self) -> MutexGuard<'_, HashMap<UserId, CacheEntry>> {
        self.users
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty() && !self.generation_dirty()
    }

    fn is_pending(&self, id: UserId) -> bool {
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

    fn generation_epoch(&self) -> u64 {
        self.dirty_epoch.load(Ordering::Acquire)
    }

    fn generation_dirty(&self) -> bool {
        self.dirty_epoch.load(Ordering::Acquire) > self.clean_epoch.load(Ordering::Acquire)
    }

    /// A bump issued when the epoch was `epoch` landed.
    fn generation_bumped(&self, epoch: u64) {
        self.clean_epoch.fetch_max(epoch, Ordering::AcqRel);
    }
}

/// A failed shared read, as every caller of the flight gets it (`StoreError` holds its cause
/// boxed, so it cannot be cloned; the kind and the message are what callers use).
#[derive(Debug, Clone)]
enum SharedError {
    NotFound,
    EmailTaken,
    Unavailable(String),
    Internal(String),
}

impl From<StoreError> for SharedError {
    fn from(error: StoreError) -> Self {
        let cause = |error: &crate::domain::BoxError| error.to_string();
        match &error {
            StoreError::NotFound => Self::NotFound,
            StoreError::EmailTaken => Self::EmailTaken,
            StoreError::Unavailable(source) => Self::Unavailable(cause(source)),
            StoreError::Internal(source) => Self::Internal(cause(source)),
        }
    }
}

impl From<SharedError> for StoreError {
    fn from(error: SharedError) -> Self {
        match error {
            SharedError::NotFound => Self::NotFound,
            SharedError::EmailTaken => Self::EmailTaken,
            SharedError::Unavailable(cause) => Self::Unavailable(cause.into()),
            SharedError::Internal(cause) => Self::Internal(cause.into()),
        }
    }
}

impl<S: UserStore> UserStore for CachedStore<S> {
    async fn create(&self, user: NewUser) -> Result<User, StoreError> {
        let created = self.inner.create(user).await?;
        self.cache
            .after_write(created.id, CacheEntry::User(created.clone()))
            .await;
        Ok(created)
    }

    async fn get(&self, id: UserId) -> Result<User, StoreError> {
        let cache = &self.cache;
        if cache.repairs.is_pending(id) {
            // This instance wrote the user and could not update the cache: it may be stale.
            cache.count("user", "bypass");
            return self.inner.get(id).await;
        }
        let key = cache.user_key(id);
        let Some(found) = cache.usable("user", cache.call("get", cache.backend.get(&key)).await)
        else {
            return self.inner.get(id).await;
        };
        match found.as_deref().map(CacheEntry::decode) {
            Some(Some(CacheEntry::User(user))) => {
                cache.count("user", "hit");
                return Ok(user);
            }
            Some(Some(CacheEntry::Deleted(_))) => {
                cache.count("user", "hit");
                return Err(StoreError::NotFound);
            }
            // Absent, or an entry this release cannot read (it gets replaced).
            _ => cache.count("user", "miss"),
        }
        let fill = async {
            let user = match self.inner.get(id).await {
                Ok(user) => user,
                Err(StoreError::NotFound) => return Ok(None),
                Err(error) => return Err(SharedError::from(error)),
            };
            let entry = CacheEntry::User(user.clone());
            let stored = cache
                .call(
                    "set",
                    cache
                        .backend
                        .put_newer(&key, &entry, cache.settings.ttl, None),
                )
                .await;
            // A newer entry won: a write committed while we read. Answer with it.
            Ok(match stored {
                Reply::Done(Some(winner)) => match CacheEntry::decode(&winner) {
                    Some(CacheEntry::User(newer)) => Some(newer),
                    Some(CacheEntry::Deleted(_)) => None,
                    None => Some(user),
                },
                _ => Some(user),
            })
        };
        let joined = || cache.count_shared_fill("user");
        self.user_fills
            .run(&key, joined, fill)
            .await?
            .ok_or(StoreError::NotFound)
    }

    async fn update(&self, id: UserId, changes: UserChanges) -> Result<User, StoreError> {
        let updated = self.inner.update(id, changes).await?;
        self.cache
            .after_write(id, CacheEntry::User(updated.clone()))
            .await;
        Ok(updated)
    }

    async fn delete(&self, id: UserId) -> Result<Version, StoreError> {
        let version = self.inner.delete(id).await?;
        self.cache
            .after_write(id, CacheEntry::Deleted(version))
            .await;
        Ok(version)
    }

    async fn list(&self, page: PageRequest) -> Result<UserPage, StoreError> {
        let cache = &self.cache;
        if cache.repairs.generation_dirty() {
            // A write's generation bump has not landed: cached pages may be stale.
            cache.count("list", "bypass");
            return self.inner.list(page).await;
        }
        // Without the generation the page cannot be keyed safely: go to the database.
        let generation = cache
            .call(
                "generation",
                cache.backend.generation(&cache.generation_key()),
            )
            .await;
        let Some(generation) = cache.usable("list", generation) else {
            return self.inner.list(page).await;
        };
        let key = cache.page_key(generation, page);
        let Some(found) = cache.usable("list", cache.call("get", cache.backend.get(&key)).await)
        else {
            return self.inner.list(page).await;
        };
        if let Some(page) = found.as_deref().and_then(entry::decode_page) {
            cache.count("list", "hit");
            return Ok(page);
        }
        cache.count("list", "miss");
        let fill = async {
            let fresh = self.inner.list(page).await.map_err(SharedError::from)?;
            cache
                .call(
                    "set",
                    cache
                        .backend
                        .set(&key, entry::encode_page(&fresh), cache.settings.ttl),
                )
                .await;
            Ok(fresh)
        };
        let joined = || cache.count_shared_fill("list");
        Ok(self.page_fills.run(&key, joined, fill).await?)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

/// Logs cache failures at most once per second, with how many were suppressed, so a dead Redis
/// under load does not flood the logs (the metric counts every one).
#[derive(Default)]
struct RateLimitedLog {
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

#[cfg(test)]
mod tests {
    use super::*;

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
