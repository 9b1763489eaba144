//! The store both backends share: one pool type, one set of queries. What differs between
//! PostgreSQL and SQLite (a few statements, how a UUID is stored, the clock) is a [`Backend`]
//! impl in `postgres.rs` / `sqlite.rs`; everything else is written once here.
//!
//! The query code is instantiated per backend by a `macro_rules!` template rather than written
//! generically over `sqlx::Database`: sqlx's executor bounds (`for<'c> &'c mut DB::Connection:
//! Executor<'c>` and friends) cannot be bundled into a trait, would repeat on every function,
//! and defeat the `Send` checks on `UserStore`'s futures. Inside the template every type is
//! concrete, so the code reads like the single-backend code it replaces.

use std::sync::Arc;

use sqlx::Pool;
use sqlx::migrate::Migrator;
use tokio::sync::Notify;
use uuid::Uuid;

use super::PoolStats;
use super::migrate::{self, ContractPhase, MigrationTarget};
use crate::domain::{Age, Email, Name, User, UserId, Version};
use crate::events::UserEvent;
use crate::events::live::LiveEvents;
use crate::metrics::Metrics;

/// What differs between the two databases. SQL shared by both uses `$n` placeholders, which
/// sqlx's SQLite driver binds by number too.
pub trait Backend: sqlx::Database {
    /// `db.system` on the query spans (OpenTelemetry's name for the database).
    const SYSTEM: &'static str;
    /// The columns of a user row, timestamps as unix seconds (see `postgres.rs` for its casts).
    const USER_COLUMNS: &'static str;
    /// The current time as stored in timestamp columns (`idempotency_keys.expires_at`).
    const NOW: &'static str;
    /// The number of users, from the trigger-kept count (migration 20261130000110).
    const TOTAL_USERS: &'static str;
    /// The page order of `ListUsers`, newest first.
    const USERS_ORDER: &'static str;
    /// A row's key in [`Self::USERS_ORDER`] as two columns, the parts of a
    /// [`ListPosition`](crate::domain::ListPosition): `created`, then the tie-break.
    const POSITION_COLUMNS: &'static str;
    /// The rows strictly after the position bound as `$2` (created) and `$3` (tie-break) in
    /// [`Self::USERS_ORDER`]: a row comparison the order's index answers.
    const AFTER_POSITION: &'static str;
    /// Whether `UPDATE … RETURNING` shows the row after the `updated_at` trigger ran (SQLite's
    /// shows it before, so the row is read back).
    const RETURNING_SEES_TRIGGERS: bool;
    /// Every user for the repair planner, ordered by email identity, then oldest first.
    const REPAIR_ROWS: &'static str;
    /// When an idempotency key claimed now expires, given its TTL in seconds as `$3`.
    const EXPIRES_AFTER_TTL: &'static str;
    /// Run first in the worker's apply transaction: bounds how long it waits for a row lock
    /// another claim holds and how long it may sit idle, so a stuck peer costs a retry instead
    /// of a pooled connection held forever. `None` where writers never wait on rows (SQLite's
    /// single writer has its busy timeout).
    const BOUND_APPLY_WAITS: Option<&'static str>;
    /// How a UUID column is bound and read: PostgreSQL's `uuid`, SQLite's hyphenated text.
    type Id: From<Uuid> + Into<Uuid>;
    /// The tie-break column of the list order as bound and read (PostgreSQL: the id, SQLite:
    /// `seq`), and its place in a [`ListPosition`](crate::domain::ListPosition).
    type Tiebreak;
    fn tiebreak_into_position(value: Self::Tiebreak) -> u128;
    fn tiebreak_from_position(raw: u128) -> Self::Tiebreak;
    /// The sqlx migrations of this backend (`migrations/<backend>`).
    fn migrator() -> &'static Migrator;
}

/// A user row as the queries return it.
pub(crate) type UserRow<B> = (<B as Backend>::Id, String, String, i32, i64, i64, i64);

pub(crate) fn to_user<B: Backend>(
    (id, name, email, age, created_at, updated_at, version): UserRow<B>,
) -> User {
    let id: Uuid = id.into();
    User {
        id: UserId::from(id),
        name: Name::from_trusted(name),
        email: Email::from_trusted(email),
        age: Age::from_trusted(age),
        created_at,
        updated_at,
        version: Version::new(version),
    }
}

pub(crate) fn query_span<B: Backend>(operation: &'static str) -> tracing::Span {
    tracing::info_span!("db.query", db.system = B::SYSTEM, db.operation = operation)
}

/// A pool on one backend and the metrics its queries report to.
pub struct SqlStore<B: Backend> {
    pub(super) pool: Pool<B>,
    pub(super) metrics: Arc<Metrics>,
    /// Where committed events go for live watchers when there is no broker to feed them.
    pub(super) commit_feed: Option<LiveEvents>,
    /// Woken after every commit that wrote an outbox row: the relay of this process publishes
    /// at once instead of at its next poll.
    pub(super) outbox_written: Option<Arc<Notify>>,
}

// Derived Clone would demand `B: Clone`.
impl<B: Backend> Clone for SqlStore<B> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            metrics: Arc::clone(&self.metrics),
            commit_feed: self.commit_feed.clone(),
            outbox_written: self.outbox_written.clone(),
        }
    }
}

impl<B: Backend> SqlStore<B> {
    pub(super) fn new(pool: Pool<B>, metrics: Arc<Metrics>) -> Self {
        Self {
            pool,
            metrics,
            commit_feed: None,
            outbox_written: None,
        }
    }

    /// Hands every event this store commits to `live` after its transaction (the embedded
    /// default's live updates: no broker carries them).
    pub fn feed_commits_to(&mut self, live: LiveEvents) {
        self.commit_feed = Some(live);
    }

    /// Wakes `relay` after every commit that wrote an outbox row.
    pub fn wake_on_commits(&mut self, relay: Arc<Notify>) {
        self.outbox_written = Some(relay);
    }

    /// Called after the transaction that wrote `event` committed.
    pub(crate) fn committed(&self, event: UserEvent) {
        if let Some(relay) = &self.outbox_written {
            relay.notify_one();
        }
        if let Some(live) = &self.commit_feed {
            live.publish(event);
        }
    }

    pub fn pool_stats(&self) -> PoolStats {
        PoolStats {
            size: self.pool.size(),
            idle: u32::try_from(self.pool.num_idle()).unwrap_or(u32::MAX),
            max: self.pool.options().get_max_connections(),
        }
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) fn pool(&self) -> &Pool<B> {
        &self.pool
    }
}

/// Applies the migrations in one transaction ([`migrate::run`]) and logs the repairs they made.
pub(super) async fn migrate_in_transaction<B: Backend>(
    pool: &Pool<B>,
    phase: ContractPhase,
) -> anyhow::Result<()>
where
    B::Connection: MigrationTarget,
{
    let mut tx = pool.begin().await?;
    let logged = migrate::run(&mut *tx, B::migrator(), phase).await?;
    tx.commit().await?;
    migrate::log_repair_log(&logged);
    Ok(())
}

/// The users table: [`crate::domain::UserStore`] and the migration runner's row access, for one
/// backend (`$db`, a [`Backend`]). Every write commits with its event (the transactional outbox).
macro_rules! users_impl {
    ($db:ty) => {
        impl $crate::store::sql::SqlStore<$db> {
            /// Inserts `user` and its `user.created` event, inside the caller's transaction.
            pub(crate) async fn insert_user(
                conn: &mut <$db as sqlx::Database>::Connection,
                user: &NewUser,
            ) -> sqlx::Result<(User, UserEvent)> {
                let sql = format!(
                    "INSERT INTO users (id, name, email, age) VALUES ($1, $2, $3, $4) \
                     RETURNING {}",
                    <$db as Backend>::USER_COLUMNS
                );
                let row = sqlx::query_as::<_, UserRow<$db>>(sqlx::AssertSqlSafe(sql))
                    .bind(<$db as Backend>::Id::from(user.id.as_uuid()))
                    .bind(user.name.as_str())
                    .bind(user.email.as_str())
                    .bind(user.age.get())
                    .fetch_one(&mut *conn)
                    .await?;
                let created = to_user::<$db>(row);
                let event = UserEvent::created(&created);
                Self::insert_event(conn, &event).await?;
                Ok((created, event))
            }

            /// Every user for the repair planner, planned in order.
            pub(crate) async fn plan_repairs(
                conn: &mut <$db as sqlx::Database>::Connection,
            ) -> anyhow::Result<Vec<Repair>> {
                let mut rows = sqlx::query_as::<_, (<$db as Backend>::Id, String, String)>(
                    <$db as Backend>::REPAIR_ROWS,
                )
                .fetch(&mut *conn);
                let mut planner = Planner::default();
                let mut repairs = Vec::new();
                while let Some((id, name, email)) = rows.try_next().await? {
                    let id: uuid::Uuid = id.into();
                    repairs.extend(planner.row(&StoredRow {
                        id: UserId::from(id),
                        name,
                        email,
                    }));
                }
                Ok(repairs)
            }

            /// Writes one change to `users` (if it has a new value) and its log row.
            pub(crate) async fn apply_repair(
                conn: &mut <$db as sqlx::Database>::Connection,
                repair: &Repair,
            ) -> anyhow::Result<()> {
                let user_id = <$db as Backend>::Id::from(repair.user_id.as_uuid());
                if let Some(value) = &repair.new_value {
                    let column = repair.field.column();
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "UPDATE users SET {column} = $2 WHERE id = $1"
                    )))
                    .bind(&user_id)
                    .bind(value)
                    .execute(&mut *conn)
                    .await?;
                }
                sqlx::query(
                    "INSERT INTO users_repair_log (user_id, field, problem, old_value, new_value) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(&user_id)
                .bind(repair.field.column())
                .bind(&repair.problem)
                .bind(&repair.old_value)
                .bind(repair.new_value.as_deref())
                .execute(&mut *conn)
                .await?;
                Ok(())
            }

            /// The number of users, for a page that has no row to carry it.
            async fn count_users(&self) -> Result<i64, StoreError> {
                let sql = format!("SELECT {}", <$db as Backend>::TOTAL_USERS);
                let count = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                    .fetch_one(&self.pool);
                timed(&self.metrics, "count_users", count)
                    .instrument(query_span::<$db>("SELECT"))
                    .await
            }

            async fn select<'e>(
                executor: impl sqlx::Executor<'e, Database = $db>,
                id: UserId,
            ) -> sqlx::Result<Option<User>> {
                let sql = format!(
                    "SELECT {} FROM users WHERE id = $1",
                    <$db as Backend>::USER_COLUMNS
                );
                let row = sqlx::query_as::<_, UserRow<$db>>(sqlx::AssertSqlSafe(sql))
                    .bind(<$db as Backend>::Id::from(id.as_uuid()))
                    .fetch_optional(executor)
                    .await?;
                Ok(row.map(to_user::<$db>))
            }
        }

        impl UserStore for $crate::store::sql::SqlStore<$db> {
            async fn create(&self, user: NewUser) -> Result<User, StoreError> {
                let write = async {
                    let mut tx = self.pool.begin().await?;
                    let (created, event) = Self::insert_user(&mut tx, &user).await?;
                    tx.commit().await?;
                    Ok((created, event))
                };
                let (created, event) = timed(&self.metrics, "insert_user", write)
                    .instrument(query_span::<$db>("INSERT"))
                    .await?;
                self.committed(event);
                Ok(created)
            }

            async fn get(&self, id: UserId) -> Result<User, StoreError> {
                let user = timed(&self.metrics, "select_user", Self::select(&self.pool, id))
                    .instrument(query_span::<$db>("SELECT"))
                    .await?;
                user.ok_or(StoreError::NotFound)
            }

            async fn update(&self, id: UserId, changes: UserChanges) -> Result<User, StoreError> {
                // COALESCE keeps the stored value for every field the request left empty.
                let set = "UPDATE users SET name = COALESCE($2, name), \
                           email = COALESCE($3, email), age = COALESCE($4, age) WHERE id = $1";
                let write = async {
                    let mut tx = self.pool.begin().await?;
                    let sql = format!("{set} RETURNING {}", <$db as Backend>::USER_COLUMNS);
                    let row = sqlx::query_as::<_, UserRow<$db>>(sqlx::AssertSqlSafe(sql))
                        .bind(<$db as Backend>::Id::from(id.as_uuid()))
                        .bind(changes.name.as_ref().map(Name::as_str))
                        .bind(changes.email.as_ref().map(Email::as_str))
                        .bind(changes.age.map(|age| age.get()))
                        .fetch_optional(&mut *tx)
                        .await?;
                    let updated = match row {
                        None => None,
                        Some(row) if <$db as Backend>::RETURNING_SEES_TRIGGERS => {
                            Some(to_user::<$db>(row))
                        }
                        // The row before the updated_at trigger ran: read it back.
                        Some(_) => Self::select(&mut *tx, id).await?,
                    };
                    let Some(updated) = updated else {
                        return Ok(None);
                    };
                    let event = UserEvent::updated(&updated);
                    Self::insert_event(&mut tx, &event).await?;
                    tx.commit().await?;
                    Ok(Some((updated, event)))
                };
                let updated = timed(&self.metrics, "update_user", write)
                    .instrument(query_span::<$db>("UPDATE"))
                    .await?;
                let (updated, event) = updated.ok_or(StoreError::NotFound)?;
                self.committed(event);
                Ok(updated)
            }

            async fn delete(&self, id: UserId) -> Result<Version, StoreError> {
                let write = async {
                    let mut tx = self.pool.begin().await?;
                    let deleted = sqlx::query_scalar::<_, i64>(
                        "DELETE FROM users WHERE id = $1 RETURNING version",
                    )
                    .bind(<$db as Backend>::Id::from(id.as_uuid()))
                    .fetch_optional(&mut *tx)
                    .await?;
                    let Some(last) = deleted else {
                        return Ok(None);
                    };
                    let version = Version::new(last).next();
                    let event = UserEvent::deleted(id, version);
                    Self::insert_event(&mut tx, &event).await?;
                    tx.commit().await?;
                    Ok(Some((version, event)))
                };
                let deleted = timed(&self.metrics, "delete_user", write)
                    .instrument(query_span::<$db>("DELETE"))
                    .await?;
                let (version, event) = deleted.ok_or(StoreError::NotFound)?;
                self.committed(event);
                Ok(version)
            }

            async fn list(&self, page: PageRequest) -> Result<UserPage, StoreError> {
                // One statement, so the page and the total come from the same snapshot; the
                // total is the trigger-kept count (migration 20261130000110), not a scan.
                let limit = i64::from(page.limit());
                let offset = i64::try_from(page.offset()).map_err(internal)?;
                let sql = format!(
                    "SELECT {}, {} AS total FROM users ORDER BY {} LIMIT $1 OFFSET $2",
                    <$db as Backend>::USER_COLUMNS,
                    <$db as Backend>::TOTAL_USERS,
                    <$db as Backend>::USERS_ORDER,
                );
                let rows = sqlx::query_as::<
                    _,
                    (<$db as Backend>::Id, String, String, i32, i64, i64, i64, i64),
                >(sqlx::AssertSqlSafe(sql))
                .bind(limit)
                .bind(offset)
                .fetch_all(&self.pool);
                let rows = timed(&self.metrics, "list_users", rows)
                    .instrument(query_span::<$db>("SELECT"))
                    .await?;
                let total = match rows.first() {
                    Some(row) => row.7,
                    // A page past the end has no rows to carry the total.
                    None => self.count_users().await?,
                };
                let users = rows
                    .into_iter()
                    .map(|(id, name, email, age, created, updated, version, _)| {
                        to_user::<$db>((id, name, email, age, created, updated, version))
                    })
                    .collect();
                Ok(UserPage { users, total })
            }

            async fn ping(&self) -> Result<(), StoreError> {
                let ping = sqlx::query("SELECT 1").execute(&self.pool);
                timed(&self.metrics, "ping", ping)
                    .instrument(query_span::<$db>("SELECT"))
                    .await
                    .map(drop)
            }
        }

        impl CursorPages for $crate::store::sql::SqlStore<$db> {
            async fn list_after(
                &self,
                after: Option<ListPosition>,
                size: PageSize,
            ) -> Result<CursorPage, StoreError> {
                // One row more than asked tells whether another page follows. As in `list`,
                // the total is read in the page's own statement.
                let limit = i64::from(size.get()) + 1;
                let filter = if after.is_some() {
                    format!("WHERE {}", <$db as Backend>::AFTER_POSITION)
                } else {
                    String::new()
                };
                let sql = format!(
                    "SELECT {}, {}, {} AS total FROM users {filter} ORDER BY {} LIMIT $1",
                    <$db as Backend>::USER_COLUMNS,
                    <$db as Backend>::POSITION_COLUMNS,
                    <$db as Backend>::TOTAL_USERS,
                    <$db as Backend>::USERS_ORDER,
                );
                type Row = (
                    <$db as Backend>::Id,
                    String,
                    String,
                    i32,
                    i64,
                    i64,
                    i64,
                    i64,
                    <$db as Backend>::Tiebreak,
                    i64,
                );
                let mut query = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(sql)).bind(limit);
                if let Some(position) = after {
                    query = query
                        .bind(position.created)
                        .bind(<$db as Backend>::tiebreak_from_position(position.tiebreak));
                }
                let rows = timed(&self.metrics, "list_users_after", query.fetch_all(&self.pool))
                    .instrument(query_span::<$db>("SELECT"))
                    .await?;
                let total = match rows.first() {
                    Some(row) => row.9,
                    None => self.count_users().await?,
                };
                let more = rows.len() > size.get() as usize;
                let mut users = Vec::with_capacity(rows.len());
                let mut next = None;
                for (id, name, email, age, created, updated, version, key, tiebreak, _) in
                    rows.into_iter().take(size.get() as usize)
                {
                    users.push(to_user::<$db>((id, name, email, age, created, updated, version)));
                    next = Some(ListPosition {
                        created: key,
                        tiebreak: <$db as Backend>::tiebreak_into_position(tiebreak),
                    });
                }
                Ok(CursorPage {
                    users,
                    next: if more { next } else { None },
                    total,
                })
            }

            async fn page_token_key(&self) -> Result<Vec<u8>, StoreError> {
                let key = sqlx::query_scalar::<_, Vec<u8>>(
                    "SELECT key FROM service_keys WHERE name = 'page_token'",
                )
                .fetch_optional(&self.pool);
                timed(&self.metrics, "select_service_key", key)
                    .instrument(query_span::<$db>("SELECT"))
                    .await?
                    // Inserted by the migration that created the table.
                    .ok_or_else(|| internal("service_keys has no page_token key"))
            }
        }
    };
}

mod users {
    use futures::TryStreamExt;
    use sqlx::{Postgres, Sqlite};
    use tracing::Instrument;

    use super::{Backend, UserRow, query_span, to_user};
    use crate::domain::{
        CursorPage, CursorPages, Email, ListPosition, Name, NewUser, PageRequest, PageSize,
        StoreError, User, UserChanges, UserId, UserPage, UserStore, Version,
    };
    use crate::events::UserEvent;
    use crate::repair::{Planner, Repair, StoredRow};
    use crate::store::{internal, timed};

    users_impl!(Postgres);
    users_impl!(Sqlite);
}
