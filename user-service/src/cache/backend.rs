//! Where cached bytes live: Valkey/Redis, or an in-process cache (moka) when `REDIS_URL` is
//! unset. Both offer the same operations with the same compare-and-set rule for user entries
//! ([`entry::supersedes`]): Redis runs it in a Lua script, moka in `and_compute_with`, so a
//! check and its write are one atomic step in either.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use moka::ops::compute::Op;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::entry::{self, CacheEntry};

/// Errors of the cache; never shown to clients.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
}

/// Stores a user entry unless the stored one has the same or a newer version, and bumps the
/// list generation when a second key is given. Answers nil when it stored the entry, else the
/// entry that won. Versions are the decimal prefix before the first `:` (see `entry.rs`).
const PUT_NEWER: &str = r"
local current = redis.call('GET', KEYS[1])
if KEYS[2] then
  redis.call('INCR', KEYS[2])
end
if current then
  local version = string.match(current, '^(%d+):')
  if version and tonumber(version) >= tonumber(ARGV[1]) then
    return current
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return false
";

pub enum CacheBackend {
    Redis {
        connection: ConnectionManager,
        put_newer: redis::Script,
    },
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
        Ok(Self::Redis {
            connection: client.get_connection_manager_lazy(config)?,
            put_newer: redis::Script::new(PUT_NEWER),
        })
    }

    /// The in-process cache: at most `capacity` entries (least useful evicted first), each
    /// for `ttl`.
    pub fn local(capacity: usize, ttl: Duration) -> Self {
        Self::Local(LocalCache::new(capacity, ttl))
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Redis { .. } => "redis",
            Self::Local(_) => "local",
        }
    }

    pub(super) async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
        match self {
            Self::Redis { connection, .. } => {
                let value: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut connection.clone())
                    .await?;
                Ok(value.map(Bytes::from))
            }
            Self::Local(local) => Ok(local.entries.get(key)),
        }
    }

    /// Stores a list page (pages are keyed by generation, so never compared).
    pub(super) async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        match self {
            Self::Redis { connection, .. } => Ok(redis::cmd("SET")
                .arg(key)
                .arg(value)
                .arg("PX")
                .arg(ttl_millis(ttl))
                .query_async(&mut connection.clone())
                .await?),
            Self::Local(local) => {
                local.entries.insert(key.to_owned(), Bytes::from(value));
                Ok(())
            }
        }
    }

    pub(super) async fn generation(&self, key: &str) -> Result<i64, CacheError> {
        match self {
            Self::Redis { connection, .. } => {
                let value: Option<i64> = redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut connection.clone())
                    .await?;
                Ok(value.unwrap_or(0))
            }
            Self::Local(local) => Ok(local.generation.load(Ordering::Acquire)),
        }
    }

    pub(super) async fn bump_generation(&self, key: &str) -> Result<(), CacheError> {
        match self {
            Self::Redis { connection, .. } => Ok(redis::cmd("INCR")
                .arg(key)
                .query_async::<i64>(&mut connection.clone())
                .await
                .map(drop)?),
            Self::Local(local) => {
                local.generation.fetch_add(1, Ordering::AcqRel);
                Ok(())
            }
        }
    }

    /// Stores `entry` under `key` unless the stored entry is as new or newer, in one atomic
    /// step; with `generation_key`, bumps the list generation in the same step. Answers
    /// `None` when `entry` was stored, else the stored entry's bytes (the winner).
    pub(super) async fn put_newer(
        &self,
        key: &str,
        entry: &CacheEntry,
        ttl: Duration,
        generation_key: Option<&str>,
    ) -> Result<Option<Bytes>, CacheError> {
        let bytes = entry.encode();
        match self {
            Self::Redis {
                connection,
                put_newer,
            } => {
                let mut invocation = put_newer.key(key);
                if let Some(generation_key) = generation_key {
                    invocation.key(generation_key);
                }
                let winner: Option<Vec<u8>> = invocation
                    .arg(entry.version().get())
                    .arg(bytes)
                    .arg(ttl_millis(ttl))
                    .invoke_async(&mut connection.clone())
                    .await?;
                Ok(winner.map(Bytes::from))
            }
            Self::Local(local) => {
                let winner = local.put_newer(key, entry, bytes);
                if generation_key.is_some() {
                    local.generation.fetch_add(1, Ordering::AcqRel);
                }
                Ok(winner)
            }
        }
    }
}

fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The embedded default: a bounded moka cache (TinyLFU admission, LRU eviction) whose entries
/// expire after the TTL, and the list generation.
pub struct LocalCache {
    entries: moka::sync::Cache<String, Bytes>,
    generation: AtomicI64,
}

impl LocalCache {
    fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            entries: moka::sync::Cache::builder()
                .max_capacity(u64::try_from(capacity.max(1)).unwrap_or(u64::MAX))
                .time_to_live(ttl)
                .build(),
            generation: AtomicI64::new(0),
        }
    }

    fn put_newer(&self, key: &str, entry: &CacheEntry, bytes: Vec<u8>) -> Option<Bytes> {
        let mut winner = None;
        self.entries
            .entry(key.to_owned())
            .and_compute_with(|current| match current {
                Some(current)
                    if !entry::supersedes(entry.version(), entry::version_of(current.value())) =>
                {
                    winner = Some(current.into_value());
                    Op::Nop
                }
                _ => Op::Put(Bytes::from(bytes)),
            });
        winner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Version;

    fn user(version: i64) -> CacheEntry {
        CacheEntry::User(entry::sample_user(version))
    }

    #[tokio::test]
    async fn local_put_newer_keeps_the_newest_and_answers_the_winner() {
        let cache = CacheBackend::local(10, Duration::from_secs(60));
        let ttl = Duration::from_secs(60);
        let v2 = user(2);
        assert_eq!(cache.put_newer("k", &v2, ttl, None).await.unwrap(), None);
        let winner = cache.put_newer("k", &user(1), ttl, None).await.unwrap();
        assert_eq!(winner.as_deref(), Some(&v2.encode()[..]));
        let tombstone = CacheEntry::Deleted(Version::new(3));
        assert_eq!(
            cache
                .put_newer("k", &tombstone, ttl, Some("g"))
                .await
                .unwrap(),
            None
        );
        assert_eq!(cache.generation("g").await.unwrap(), 1);
        // The last live version read before the delete cannot bring the user back.
        assert!(
            cache
                .put_newer("k", &v2, ttl, None)
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(cache.get("k").await.unwrap().as_deref(), Some(&b"3:"[..]));
    }

    #[tokio::test]
    async fn local_cache_stays_bounded_without_forgetting_everything() {
        let CacheBackend::Local(local) = CacheBackend::local(100, Duration::from_secs(60)) else {
            unreachable!()
        };
        for n in 0..1000 {
            local
                .entries
                .insert(format!("k{n}"), Bytes::from_static(b"x"));
        }
        local.entries.run_pending_tasks();
        let kept = local.entries.entry_count();
        assert!(kept <= 100 && kept > 0, "{kept} entries kept");
    }

    #[tokio::test]
    async fn local_entries_expire() {
        let cache = CacheBackend::local(10, Duration::from_millis(1));
        cache
            .set("k", b"v".to_vec(), Duration::from_millis(1))
            .await
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(cache.get("k").await.unwrap(), None);
    }
}
