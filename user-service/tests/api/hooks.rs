//! The cache decorator's test harness: a real store (PostgreSQL + Redis, or SQLite + the
//! in-process cache) whose database calls can be held at a point until the test releases them,
//! so a test forces one interleaving of concurrent requests instead of hoping for it.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use user_service::cache::{CacheBackend, CacheSettings, CachedStore};
use user_service::domain::{
    NewUser, PageRequest, StoreError, User, UserChanges, UserId, UserPage, UserStore, Version,
};
use user_service::metrics::Metrics;
use user_service::startup::open_database;
use user_service::store::Database;

use crate::helpers::{Backend, TestDatabase, base_config, ensure_redis, redis_url};

/// Where a database call can be held: after the database answered, before the cache
/// decorator goes on with the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// `get` read the row (a read-through fill is next).
    Get,
    /// `list` read the page (a page fill is next).
    List,
    /// `create`, `update` or `delete` committed (the cache update is next).
    Write,
}

/// One armed hold: the call that reaches `point` reports on `reached`, then waits for
/// `release`.
struct Hold {
    point: After,
    reached: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

/// The test's side of a hold.
pub struct Held {
    reached: oneshot::Receiver<()>,
    release: oneshot::Sender<()>,
}

impl Held {
    /// Waits until a call is held at the point.
    pub async fn reached(&mut self) {
        tokio::time::timeout(Duration::from_secs(30), &mut self.reached)
            .await
            .expect("a call reaches the hold within 30 s")
            .expect("the hold is alive");
    }

    pub fn release(self) {
        let _ = self.release.send(());
    }
}

/// The database with holds; counts the reads that reached it.
pub struct HookedStore {
    inner: Database,
    holds: Mutex<VecDeque<Hold>>,
    pub gets: AtomicUsize,
    pub lists: AtomicUsize,
}

impl HookedStore {
    /// The next call that reaches `point` is held there until the returned handle releases it.
    pub fn hold(&self, point: After) -> Held {
        let (reached_tx, reached_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        self.holds.lock().unwrap().push_back(Hold {
            point,
            reached: reached_tx,
            release: release_rx,
        });
        Held {
            reached: reached_rx,
            release: release_tx,
        }
    }

    async fn at(&self, point: After) {
        let hold = {
            let mut holds = self.holds.lock().unwrap();
            let index = holds.iter().position(|hold| hold.point == point);
            index.and_then(|index| holds.remove(index))
        };
        if let Some(hold) = hold {
            let _ = hold.reached.send(());
            let _ = hold.release.await;
        }
    }

    /// The database itself, past the holds (to set up rows the cache has not seen).
    pub fn database(&self) -> &Database {
        &self.inner
    }
}

impl UserStore for HookedStore {
    async fn create(&self, user: NewUser) -> Result<User, StoreError> {
        let created = self.inner.create(user).await;
        self.at(After::Write).await;
        created
    }

    async fn get(&self, id: UserId) -> Result<User, StoreError> {
        self.gets.fetch_add(1, Ordering::SeqCst);
        let user = self.inner.get(id).await;
        self.at(After::Get).await;
        user
    }

    async fn update(&self, id: UserId, changes: UserChanges) -> Result<User, StoreError> {
        let updated = self.inner.update(id, changes).await;
        self.at(After::Write).await;
        updated
    }

    async fn delete(&self, id: UserId) -> Result<Version, StoreError> {
        let deleted = self.inner.delete(id).await;
        self.at(After::Write).await;
        deleted
    }

    async fn list(&self, page: PageRequest) -> Result<UserPage, StoreError> {
        self.lists.fetch_add(1, Ordering::SeqCst);
        let listed = self.inner.list(page).await;
        self.at(After::List).await;
        listed
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping().await
    }
}

/// A migrated database and the cache the decorator under test uses.
pub struct Harness {
    pub database: Database,
    pub metrics: Arc<Metrics>,
    pub key_prefix: String,
    pub redis_url: Option<String>,
    test_database: Option<TestDatabase>,
    sqlite_dir: Option<PathBuf>,
}

impl Harness {
    pub async fn new(backend: Backend) -> Self {
        let metrics = Arc::new(Metrics::new());
        let key_prefix = format!("test:{}:", uuid::Uuid::new_v4().simple());
        let mut config = base_config();
        let (test_database, sqlite_dir, redis_url) = match backend {
            Backend::Postgres => {
                ensure_redis().await;
                let database = TestDatabase::create().await;
                config.database_url = Some(database.url.clone());
                (Some(database), None, Some(redis_url()))
            }
            Backend::Sqlite => {
                let dir = std::env::temp_dir()
                    .join(format!("user-service-hooks-{}", uuid::Uuid::new_v4()));
                config.sqlite_path = dir.join("users.db");
                (None, Some(dir), None)
            }
        };
        let database = open_database(&config, metrics.clone()).expect("the database opens");
        database.migrate().await.expect("migrations apply");
        Self {
            database,
            metrics,
            key_prefix,
            redis_url,
            test_database,
            sqlite_dir,
        }
    }

    pub fn settings(&self) -> CacheSettings {
        CacheSettings {
            key_prefix: self.key_prefix.clone(),
            ttl: Duration::from_secs(900),
            timeout: Duration::from_secs(2),
            local_capacity: 10_000,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_millis(100),
        }
    }

    /// A cache decorator over the hooked database; several share one Redis key space (like
    /// several instances), each in-process cache is its own.
    pub fn store(&self) -> Arc<CachedStore<HookedStore>> {
        self.store_with(self.settings(), self.redis_url.clone())
    }

    /// The same, with other settings or another Redis address (e.g. through a proxy).
    pub fn store_with(
        &self,
        settings: CacheSettings,
        redis_url: Option<String>,
    ) -> Arc<CachedStore<HookedStore>> {
        let backend = match &redis_url {
            Some(url) => CacheBackend::redis(url, settings.timeout).expect("a valid Redis URL"),
            None => CacheBackend::local(settings.local_capacity, settings.ttl),
        };
        let hooked = HookedStore {
            inner: self.database.clone(),
            holds: Mutex::default(),
            gets: AtomicUsize::new(0),
            lists: AtomicUsize::new(0),
        };
        Arc::new(CachedStore::new(
            hooked,
            backend,
            settings,
            self.metrics.clone(),
        ))
    }

    pub async fn teardown(mut self) {
        self.database.close().await;
        if let Some(database) = self.test_database.take() {
            database.drop_database().await;
        }
        if let Some(dir) = self.sqlite_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

pub fn new_user(name: &str) -> NewUser {
    NewUser::parse(name, &crate::helpers::unique_email(), 30).expect("a valid user")
}

pub fn rename(name: &str) -> UserChanges {
    UserChanges::parse(name, "", 0).expect("a valid change")
}
