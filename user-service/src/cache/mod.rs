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
//! background until it lands (`repair`); until then this instance reads that user (or, for a
//! missed generation bump, every list page) from the database. Concurrent misses of one key
//! share one database read (single flight), so a cold cache after an outage does not stampede
//! the database; the shared read's fill goes through the same compare-and-set and every waiter
//! gets the winning entry.

//!
//! Modules: [`entry`] and [`breaker`] (pure), [`backend`] (Redis or moka), `guard` (every call
//! through the breaker and the timeout), `repair` (write-backs and their retries),
//! `single_flight` (shared misses); this module wires them into the [`UserStore`] decorator.

pub mod backend;
pub mod breaker;
pub mod entry;
mod guard;
mod repair;
mod single_flight;

use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use backend::{CacheBackend, CacheError};
use breaker::{Breaker, BreakerState};
pub use entry::CacheEntry;
use guard::{RateLimitedLog, Reply};
use repair::Repairs;
use single_flight::SingleFlight;

use crate::domain::{
    CursorPage, CursorPages, ListPosition, NewUser, PageRequest, PageSize, StoreError, User,
    UserChanges, UserId, UserPage, UserStore, Version,
};
use crate::metrics::Metrics;

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

/// Not cached: cursor pages (user.v2 ListUsers) are read from the database; v1's offset pages
/// are the cached ones.
impl<S: CursorPages> CursorPages for CachedStore<S> {
    async fn list_after(
        &self,
        after: Option<ListPosition>,
        size: PageSize,
    ) -> Result<CursorPage, StoreError> {
        self.inner.list_after(after, size).await
    }

    async fn page_token_key(&self) -> Result<Vec<u8>, StoreError> {
        self.inner.page_token_key().await
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
