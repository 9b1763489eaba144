//! The read-through cache decorator: any [`UserStore`] wrapped with Valkey/Redis (when
//! `REDIS_URL` is set) or an in-process map.
//!
//! Keys (all under the configured prefix):
//! - `user:{id}`: one user, read-through on `GetUser`, written after every successful write.
//! - `users:list:generation`: a counter bumped after every write.
//! - `users:list:{generation}:{page}:{limit}`: one `ListUsers` page. Bumping the generation makes
//!   every cached page unreachable at once (no key scans); old pages expire by TTL. A reader
//!   reads the generation *before* querying the database, so a page it computed concurrently
//!   with a write lands under the old generation and is never served.
//!
//! The cache is best effort: every cache operation is bounded by a timeout, and on any failure
//! the request is served from the database while `user_cache_errors_total` and a log line
//! (at most one per second) say so.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::domain::{
    Age, Email, Name, NewUser, PageRequest, StoreError, User, UserChanges, UserId, UserPage,
    UserStore,
};
use crate::metrics::Metrics;

/// Cache settings from the config.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub key_prefix: String,
    pub ttl: Duration,
    /// Upper bound on any single cache round trip.
    pub timeout: Duration,
    /// Entries kept by the in-process cache before it starts over.
    pub local_capacity: usize,
}

/// Where cached bytes live.
pub enum CacheBackend {
    Redis(ConnectionManager),
    Local(LocalCache),
}

impl CacheBackend {
    /// A Redis connection manager that connects lazily and reconnects by itself, so a Redis
    /// that is down at start (or later) never blocks the service.
    pub fn redis(url: &str, timeout: Duration) -> redis::RedisResult<Self> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(2));
        Ok(Self::Redis(client.get_connection_manager_lazy(config)?))
    }

    pub fn local(capacity: usize) -> Self {
        Self::Local(LocalCache::new(capacity))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Redis(_) => "redis",
            Self::Local(_) => "local",
        }
    }
}

/// Errors of the cache; never shown to clients.
#[derive(Debug, thiserror::Error)]
enum CacheError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// A [`UserStore`] decorated with the cache.
pub struct CachedStore<S> {
    inner: S,
    backend: CacheBackend,
    settings: CacheSettings,
    metrics: Arc<Metrics>,
    error_log: RateLimitedLog,
}

impl<S> CachedStore<S> {
    pub fn new(
        inner: S,
        backend: CacheBackend,
        settings: CacheSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner,
            backend,
            settings,
            metrics,
            error_log: RateLimitedLog::default(),
        }
    }

    pub fn inner(&self) -> &S {
        &self.inner
    }

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

    /// Runs one cache operation under the timeout; a failure is counted, logged and `None`.
    async fn attempt<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, CacheError>>,
    ) -> Option<T> {
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
            Ok(value) => Some(value),
            Err(error) => {
                self.metrics
                    .cache_errors
                    .with_label_values(&[operation])
                    .inc();
                self.error_log.warn(operation, &error);
                None
            }
        }
    }

    async fn fetch(&self, key: &str) -> Result<Option<Vec<u8>>, CacheError> {
        match &self.backend {
            CacheBackend::Redis(connection) => Ok(redis::cmd("GET")
                .arg(key)
                .query_async(&mut connection.clone())
                .await?),
            CacheBackend::Local(local) => Ok(local.get(key)),
        }
    }

    async fn store(&self, key: &str, value: Vec<u8>) -> Result<(), CacheError> {
        match &self.backend {
            CacheBackend::Redis(connection) => Ok(redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(ttl_millis(self.settings.ttl))
                .query_async(&mut connection.clone())
                .await?),
            CacheBackend::Local(local) => {
                local.set(key, value, self.settings.ttl);
                Ok(())
            }
        }
    }

    async fn generation(&self) -> Result<i64, CacheError> {
        let key = self.generation_key();
        match &self.backend {
            CacheBackend::Redis(connection) => {
                let value: Option<i64> = redis::cmd("GET")
                    .arg(&key)
                    .query_async(&mut connection.clone())
                    .await?;
                Ok(value.unwrap_or(0))
            }
            CacheBackend::Local(local) => Ok(local.counter(&key)),
        }
    }

    /// After a committed write: put (or drop) the user entry and bump the list generation,
    /// in one round trip.
    async fn after_write(&self, id: UserId, user: Option<&User>) -> Result<(), CacheError> {
        let user_key = self.user_key(id);
        let generation_key = self.generation_key();
        match &self.backend {
            CacheBackend::Redis(connection) => {
                let mut pipe = redis::pipe();
                match user {
                    Some(user) => pipe
                        .cmd("SET")
                        .arg(&user_key)
                        .arg(encode_user(user))
                        .arg("PX")
                        .arg(ttl_millis(self.settings.ttl))
                        .ignore(),
                    None => pipe.cmd("DEL").arg(&user_key).ignore(),
                };
                pipe.cmd("INCR").arg(&generation_key).ignore();
                Ok(pipe.query_async(&mut connection.clone()).await?)
            }
            CacheBackend::Local(local) => {
                match user {
                    Some(user) => local.set(&user_key, encode_user(user), self.settings.ttl),
                    None => local.remove(&user_key),
                }
                local.increment(&generation_key);
                Ok(())
            }
        }
    }

    fn count(&self, cache: &'static str, result: &'static str) {
        self.metrics
            .cache_requests
            .with_label_values(&[cache, result])
            .inc();
    }
}

fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl<S: UserStore> UserStore for CachedStore<S> {
    async fn create(&self, user: NewUser) -> Result<User, StoreError> {
        let created = self.inner.create(user).await?;
        self.attempt("after_write", self.after_write(created.id, Some(&created)))
            .await;
        Ok(created)
    }

    async fn get(&self, id: UserId) -> Result<User, StoreError> {
        let key = self.user_key(id);
        match self.attempt("get", self.fetch(&key)).await {
            Some(Some(bytes)) => {
                if let Some(user) = decode_user(&bytes) {
                    self.count("user", "hit");
                    return Ok(user);
                }
                // An entry this version cannot read counts as a miss and gets overwritten.
                self.count("user", "miss");
            }
            Some(None) => self.count("user", "miss"),
            None => self.count("user", "error"),
        }
        let user = self.inner.get(id).await?;
        self.attempt("set", self.store(&key, encode_user(&user)))
            .await;
        Ok(user)
    }

    async fn update(&self, id: UserId, changes: UserChanges) -> Result<User, StoreError> {
        let updated = self.inner.update(id, changes).await?;
        self.attempt("after_write", self.after_write(id, Some(&updated)))
            .await;
        Ok(updated)
    }

    async fn delete(&self, id: UserId) -> Result<(), StoreError> {
        let outcome = self.inner.delete(id).await;
        if outcome.is_ok() {
            self.attempt("after_write", self.after_write(id, None))
                .await;
        }
        outcome
    }

    async fn list(&self, page: PageRequest) -> Result<UserPage, StoreError> {
        // Without the generation the page cannot be keyed safely: go to the database.
        let Some(generation) = self.attempt("generation", self.generation()).await else {
            self.count("list", "error");
            return self.inner.list(page).await;
        };
        let key = self.page_key(generation, page);
        match self.attempt("get", self.fetch(&key)).await {
            Some(Some(bytes)) => {
                if let Some(page) = decode_page(&bytes) {
                    self.count("list", "hit");
                    return Ok(page);
                }
                self.count("list", "miss");
            }
            Some(None) => self.count("list", "miss"),
            None => self.count("list", "error"),
        }
        let fresh = self.inner.list(page).await?;
        self.attempt("set", self.store(&key, encode_page(&fresh)))
            .await;
        Ok(fresh)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

// === cached representation ===

/// The cached form of a user: JSON with short keys, independent of the wire contract.
#[derive(Serialize, Deserialize)]
struct CachedUser {
    i: uuid::Uuid,
    n: String,
    e: String,
    a: i32,
    c: i64,
    u: i64,
}

#[derive(Serialize, Deserialize)]
struct CachedPage {
    users: Vec<CachedUser>,
    total: i64,
}

fn to_cached(user: &User) -> CachedUser {
    CachedUser {
        i: user.id.as_uuid(),
        n: user.name.as_str().to_owned(),
        e: user.email.as_str().to_owned(),
        a: user.age.get(),
        c: user.created_at,
        u: user.updated_at,
    }
}

fn from_cached(cached: CachedUser) -> User {
    User {
        id: UserId::from(cached.i),
        name: Name::from_trusted(cached.n),
        email: Email::from_trusted(cached.e),
        age: Age::from_trusted(cached.a),
        created_at: cached.c,
        updated_at: cached.u,
    }
}

fn encode_user(user: &User) -> Vec<u8> {
    serde_json::to_vec(&to_cached(user)).expect("plain struct serialises")
}

fn decode_user(bytes: &[u8]) -> Option<User> {
    serde_json::from_slice(bytes).ok().map(from_cached)
}

fn encode_page(page: &UserPage) -> Vec<u8> {
    let cached = CachedPage {
        users: page.users.iter().map(to_cached).collect(),
        total: page.total,
    };
    serde_json::to_vec(&cached).expect("plain struct serialises")
}

fn decode_page(bytes: &[u8]) -> Option<UserPage> {
    let cached: CachedPage = serde_json::from_slice(bytes).ok()?;
    Some(UserPage {
        users: cached.users.into_iter().map(from_cached).collect(),
        total: cached.total,
    })
}

// === in-process cache ===

/// The embedded default: a bounded map with expiry. When full it drops expired entries, and if
/// that is not enough, everything (a cache may forget; it must not grow without bound).
pub struct LocalCache {
    capacity: usize,
    entries: Mutex<HashMap<String, Entry>>,
    counters: Mutex<HashMap<String, i64>>,
}

/// A cached value and when it stops being served.
struct Entry {
    value: Vec<u8>,
    expires: Instant,
}

impl LocalCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: Mutex::default(),
            counters: Mutex::default(),
        }
    }

    fn get(&self, key: &str) -> Option<Vec<u8>> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries
            .get(key)
            .filter(|entry| entry.expires > Instant::now())
            .map(|entry| entry.value.clone())
    }

    fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        if entries.len() >= self.capacity && !entries.contains_key(key) {
            entries.retain(|_, entry| entry.expires > now);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(
            key.to_owned(),
            Entry {
                value,
                expires: now + ttl,
            },
        );
    }

    fn remove(&self, key: &str) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.remove(key);
    }

    fn counter(&self, key: &str) -> i64 {
        let counters = self
            .counters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        counters.get(key).copied().unwrap_or(0)
    }

    fn increment(&self, key: &str) {
        let mut counters = self
            .counters
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *counters.entry(key.to_owned()).or_insert(0) += 1;
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

    fn sample_user() -> User {
        User {
            id: UserId::new_random(),
            name: Name::parse("Ada").unwrap(),
            email: Email::parse("ada@example.com").unwrap(),
            age: Age::parse(36).unwrap(),
            created_at: 1,
            updated_at: 2,
        }
    }

    #[test]
    fn cached_user_round_trips() {
        let user = sample_user();
        assert_eq!(decode_user(&encode_user(&user)), Some(user.clone()));
        let page = UserPage {
            users: vec![user],
            total: 7,
        };
        assert_eq!(decode_page(&encode_page(&page)), Some(page));
        assert_eq!(decode_user(b"not json"), None);
    }

    #[test]
    fn local_cache_expires_and_stays_bounded() {
        let cache = LocalCache::new(2);
        cache.set("a", b"1".to_vec(), Duration::from_secs(60));
        cache.set("gone", b"2".to_vec(), Duration::ZERO);
        assert_eq!(cache.get("a"), Some(b"1".to_vec()));
        assert_eq!(cache.get("gone"), None, "expired entries are not served");
        cache.set("b", b"3".to_vec(), Duration::from_secs(60));
        cache.set("c", b"4".to_vec(), Duration::from_secs(60));
        assert!(cache.entries.lock().unwrap().len() <= 2);
        cache.increment("g");
        cache.increment("g");
        assert_eq!(cache.counter("g"), 2);
    }
}
