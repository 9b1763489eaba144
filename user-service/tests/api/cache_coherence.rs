//! Cache coherence under concurrency, on PostgreSQL + Redis and on SQLite + the in-process
//! cache. Each race is forced through the harness's holds (`hooks.rs`), then the cache is
//! compared with the database; a contended randomized run is the backstop.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use user_service::cache::{CacheEntry, CachedStore};
use user_service::domain::{PageRequest, StoreError, User, UserId, UserStore};

use crate::helpers::Backend;
use crate::hooks::{After, Harness, Held, HookedStore, new_user, rename};
use crate::on_both_backends;
use crate::proxy::TcpProxy;

on_both_backends!(
    a_fill_that_read_before_a_write_cannot_overwrite_it,
    cache_updates_landing_out_of_commit_order_keep_the_newest,
    a_fill_cannot_bring_back_a_deleted_user,
    concurrent_misses_share_one_database_read,
    contended_updates_and_reads_leave_the_cache_equal_to_the_database,
);

/// Starts a `get` of `id` and waits until it holds the row it read from the database (its
/// fill comes next, once released).
async fn get_held_after_reading(
    store: &Arc<CachedStore<HookedStore>>,
    id: UserId,
) -> (tokio::task::JoinHandle<Result<User, StoreError>>, Held) {
    let mut held = store.inner().hold(After::Get);
    let reader = tokio::spawn({
        let store = store.clone();
        async move { store.get(id).await }
    });
    held.reached().await;
    (reader, held)
}

/// The cache entry of `id` must be what the database holds (or absent).
async fn assert_coherent(store: &CachedStore<HookedStore>, id: UserId) {
    let cached = store.peek(id).await.expect("the cache answers");
    match (store.inner().database().get(id).await, cached) {
        (_, None) => {}
        (Ok(stored), Some(CacheEntry::User(cached))) => assert_eq!(cached, stored),
        (Err(StoreError::NotFound), Some(CacheEntry::Deleted(_))) => {}
        (stored, cached) => panic!("cache {cached:?} vs database {stored:?}"),
    }
}

async fn a_fill_that_read_before_a_write_cannot_overwrite_it(backend: Backend) {
    let harness = Harness::new(backend).await;
    let store = harness.store();
    // Created behind the cache's back, so the first read misses and fills.
    let user = store
        .inner()
        .database()
        .create(new_user("Before"))
        .await
        .unwrap();

    let (reader, held) = get_held_after_reading(&store, user.id).await;
    let updated = store.update(user.id, rename("After")).await.unwrap();
    assert!(updated.version > user.version);
    held.release();

    let read = reader.await.unwrap().unwrap();
    assert_eq!(
        read, updated,
        "the fill lost to the write and answered the winner"
    );
    assert_eq!(
        store.peek(user.id).await.unwrap(),
        Some(CacheEntry::User(updated.clone()))
    );
    assert_eq!(store.get(user.id).await.unwrap(), updated);
    assert_coherent(&store, user.id).await;
    harness.teardown().await;
}

async fn cache_updates_landing_out_of_commit_order_keep_the_newest(backend: Backend) {
    let harness = Harness::new(backend).await;
    let store = harness.store();
    let user = store.create(new_user("Start")).await.unwrap();

    let mut held = store.inner().hold(After::Write);
    let first = tokio::spawn({
        let store = store.clone();
        async move { store.update(user.id, rename("First")).await }
    });
    held.reached().await; // committed, its cache update not sent yet
    let second = store.update(user.id, rename("Second")).await.unwrap();
    held.release();
    let first = first.await.unwrap().unwrap();
    assert!(first.version < second.version, "{first:?} {second:?}");

    assert_eq!(
        store.peek(user.id).await.unwrap(),
        Some(CacheEntry::User(second.clone()))
    );
    assert_eq!(store.get(user.id).await.unwrap().name.as_str(), "Second");
    assert_coherent(&store, user.id).await;
    assert_eq!(store.pending_repairs(), 0);
    harness.teardown().await;
}

async fn a_fill_cannot_bring_back_a_deleted_user(backend: Backend) {
    let harness = Harness::new(backend).await;
    let store = harness.store();
    let user = store
        .inner()
        .database()
        .create(new_user("Doomed"))
        .await
        .unwrap();

    let (reader, held) = get_held_after_reading(&store, user.id).await;
    let deleted = store.delete(user.id).await.unwrap();
    held.release();
    // The reader ran concurrently with the delete: either answer is linearizable, but the
    // cache must end up with the tombstone.
    let _ = reader.await.unwrap();

    assert_eq!(
        store.peek(user.id).await.unwrap(),
        Some(CacheEntry::Deleted(deleted))
    );
    assert!(matches!(
        store.get(user.id).await,
        Err(StoreError::NotFound)
    ));
    assert_coherent(&store, user.id).await;
    harness.teardown().await;
}

async fn concurrent_misses_share_one_database_read(backend: Backend) {
    let harness = Harness::new(backend).await;
    let store = harness.store();
    for n in 0..3 {
        store
            .create(new_user(&format!("Listed {n}")))
            .await
            .unwrap();
    }
    let user = store
        .inner()
        .database()
        .create(new_user("Cold"))
        .await
        .unwrap();
    let shared = |cache: &str| {
        harness
            .metrics
            .cache_shared_fills
            .with_label_values(&[cache])
            .get()
    };

    // Lists: the first miss holds its database read while nine more arrive.
    let mut held = store.inner().hold(After::List);
    let page = PageRequest::new(1, 10);
    let lists: Vec<_> = (0..10)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.list(page).await })
        })
        .collect();
    held.reached().await;
    wait_for(|| shared("list") == 9).await;
    held.release();
    for list in lists {
        assert_eq!(list.await.unwrap().unwrap().total, 4);
    }
    assert_eq!(
        store.inner().lists.load(Ordering::SeqCst),
        1,
        "one database read"
    );

    // The same for one user.
    let mut held = store.inner().hold(After::Get);
    let gets: Vec<_> = (0..10)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.get(user.id).await })
        })
        .collect();
    held.reached().await;
    wait_for(|| shared("user") == 9).await;
    held.release();
    for get in gets {
        assert_eq!(get.await.unwrap().unwrap(), user);
    }
    assert_eq!(
        store.inner().gets.load(Ordering::SeqCst),
        1,
        "one database read"
    );
    harness.teardown().await;
}

/// Polls a cheap in-process condition (a metric) until it holds.
async fn wait_for(mut condition: impl FnMut() -> bool) {
    for _ in 0..3000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached within 30 s");
}

/// The backstop: rounds of concurrent updates and reads of one user. On Redis through two
/// decorators (two instances sharing the cache); the in-process cache is one instance's own
/// (the embedded mode runs one instance), so there both handles are the same decorator.
async fn contended_updates_and_reads_leave_the_cache_equal_to_the_database(backend: Backend) {
    const ROUNDS: usize = 40;
    const WRITERS: usize = 4;
    const READERS: usize = 6;
    let harness = Harness::new(backend).await;
    let first = harness.store();
    let stores = match backend {
        Backend::Postgres => [first, harness.store()],
        Backend::Sqlite => [first.clone(), first],
    };
    let user = stores[0].create(new_user("Contended")).await.unwrap();
    let mut seed = 0x9e37_79b9_u32;
    let mut next = move || {
        // xorshift: a different interleaving pressure per round, reproducible.
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed as usize
    };
    let mut mismatches = Vec::new();
    for round in 0..ROUNDS {
        let mut tasks = Vec::new();
        for writer in 0..WRITERS {
            let store = stores[next() % 2].clone();
            let name = format!("Round {round} writer {writer}");
            tasks.push(tokio::spawn(async move {
                store.update(user.id, rename(&name)).await.map(drop)
            }));
        }
        for _ in 0..READERS {
            let store = stores[next() % 2].clone();
            tasks.push(tokio::spawn(
                async move { store.get(user.id).await.map(drop) },
            ));
        }
        for task in tasks {
            task.await.unwrap().expect("every call succeeds");
        }
        let stored = stores[0].inner().database().get(user.id).await.unwrap();
        for store in &stores {
            match store.peek(user.id).await.unwrap() {
                Some(CacheEntry::User(cached)) if cached != stored => {
                    mismatches.push((round, cached.version, stored.version));
                }
                _ => {}
            }
            assert_eq!(store.get(user.id).await.unwrap(), stored, "round {round}");
        }
    }
    assert!(
        mismatches.is_empty(),
        "stale entries (round, cached, stored): {mismatches:?}"
    );
    harness.teardown().await;
}

/// Redis stalls exactly when a write's cache update is sent: the update times out, the
/// writer's instance stops trusting the cache for that user, and the update is retried until
/// it lands once Redis answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_cache_update_is_retried_until_it_lands() {
    let harness = Harness::new(Backend::Postgres).await;
    let redis = harness.redis_url.clone().unwrap();
    let redis_addr = redis.trim_start_matches("redis://").to_owned();
    let proxy = TcpProxy::start(redis_addr).await;
    let mut settings = harness.settings();
    settings.timeout = Duration::from_millis(200);
    let store = harness.store_with(settings, Some(format!("redis://{}", proxy.addr())));
    let direct = harness.store(); // the same Redis keys, not through the proxy
    let user = store.create(new_user("Before")).await.unwrap();
    assert_eq!(
        direct.peek(user.id).await.unwrap(),
        Some(CacheEntry::User(user.clone()))
    );

    proxy.pause();
    let updated = store.update(user.id, rename("After")).await.unwrap();
    assert_eq!(
        store.pending_repairs(),
        2,
        "the user and the list generation are owed"
    );
    // Redis still holds the old entry, but the writer's instance does not serve it.
    assert_eq!(
        direct.peek(user.id).await.unwrap(),
        Some(CacheEntry::User(user.clone()))
    );
    assert_eq!(store.get(user.id).await.unwrap(), updated);

    proxy.restore();
    wait_for(|| store.pending_repairs() == 0).await;
    assert_eq!(
        direct.peek(user.id).await.unwrap(),
        Some(CacheEntry::User(updated.clone()))
    );
    assert_eq!(direct.get(user.id).await.unwrap(), updated);
    let repairs = harness
        .metrics
        .cache_repairs
        .with_label_values(&["done"])
        .get();
    assert!(repairs >= 1, "{repairs}");
    drop(store);
    harness.teardown().await;
}

/// The same on the list generation: while a bump is owed, this instance lists from the
/// database, so a page cached before the write is not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owed_generation_bump_bypasses_cached_pages() {
    let harness = Harness::new(Backend::Postgres).await;
    let redis = harness.redis_url.clone().unwrap();
    let proxy = TcpProxy::start(redis.trim_start_matches("redis://").to_owned()).await;
    let mut settings = harness.settings();
    settings.timeout = Duration::from_millis(200);
    let store = harness.store_with(settings, Some(format!("redis://{}", proxy.addr())));
    let page = PageRequest::new(1, 10);
    store.create(new_user("One")).await.unwrap();
    assert_eq!(store.list(page).await.unwrap().total, 1); // cached under this generation

    proxy.pause();
    store.create(new_user("Two")).await.unwrap();
    assert_eq!(
        store.list(page).await.unwrap().total,
        2,
        "the stale page is not served"
    );
    proxy.restore();
    wait_for(|| store.pending_repairs() == 0).await;
    assert_eq!(store.list(page).await.unwrap().total, 2);
    let other = harness.store();
    assert_eq!(
        other.list(page).await.unwrap().total,
        2,
        "the generation moved"
    );
    drop((store, other));
    harness.teardown().await;
}
