//! SQLite store: the embedded default when no `DATABASE_URL` is given. One file, WAL mode,
//! the schema in `migrations/sqlite`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use sqlx::SqliteConnection;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use tracing::Instrument;

use super::migrate::{self, ContractPhase, MigrationTarget};
use super::{PoolStats, internal, outbox, timed};
use crate::domain::{
    Age, Email, Name, NewUser, PageRequest, StoreError, User, UserChanges, UserId, UserPage,
    UserStore, Version,
};
use crate::events::UserEvent;
use crate::metrics::Metrics;
use crate::repair::{Planner, Repair, StoredRow};

pub(crate) static MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");

const SELECT_USER: &str =
    "SELECT id, name, email, age, created_at, updated_at, version FROM users WHERE id = ?1";

type UserRow = (String, String, String, i32, i64, i64, i64);

fn to_user(
    (id, name, email, age, created_at, updated_at, version): UserRow,
) -> Result<User, StoreError> {
    Ok(User {
        id: UserId::parse(&id).map_err(|_| internal(format!("stored id {id:?} is not a UUID")))?,
        name: Name::from_trusted(name),
        email: Email::from_trusted(email),
        age: Age::from_trusted(age),
        created_at,
        updated_at,
        version: Version::new(version),
    })
}

#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    metrics: Arc<Metrics>,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file.
    pub fn open(
        path: &Path,
        max_connections: u32,
        acquire_timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            // WAL lets readers run beside the single writer; writers queue on the busy timeout.
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(acquire_timeout)
            .connect_lazy_with(options);
        Self { pool, metrics }
    }

    /// Applies the migrations in one transaction ([`migrate::run`]). SQLite databases are
    /// always meshgate's own, so the contract set runs as soon as it is there.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        let logged = migrate::run(&mut *tx, &MIGRATOR, ContractPhase::WhenSafe).await?;
        tx.commit().await?;
        migrate::log_repair_log(&logged);
        Ok(())
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

    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    async fn select(&self, id: UserId) -> Result<User, StoreError> {
        let row = sqlx::query_as::<_, UserRow>(SELECT_USER)
            .bind(id.to_string())
            .fetch_optional(&self.pool);
        let row = timed(&self.metrics, "select_user", row)
            .instrument(query_span("SELECT"))
            .await?;
        row.map(to_user).unwrap_or(Err(StoreError::NotFound))
    }
}

/// Inserts `user` and its `user.created` event, inside the caller's transaction.
pub(crate) async fn insert_user(conn: &mut SqliteConnection, user: &NewUser) -> sqlx::Result<User> {
    let row = sqlx::query_as::<_, UserRow>(
        "INSERT INTO users (id, name, email, age) VALUES (?1, ?2, ?3, ?4) \
         RETURNING id, name, email, age, created_at, updated_at, version",
    )
    .bind(user.id.to_string())
    .bind(user.name.as_str())
    .bind(user.email.as_str())
    .bind(user.age.get())
    .fetch_one(&mut *conn)
    .await?;
    let created = to_user(row).map_err(|error| sqlx::Error::Decode(error.into()))?;
    outbox::insert_sqlite(conn, &UserEvent::created(&created)).await?;
    Ok(created)
}

pub(crate) fn query_span(operation: &'static str) -> tracing::Span {
    tracing::info_span!("db.query", db.system = "sqlite", db.operation = operation)
}

impl UserStore for SqliteStore {
    async fn create(&self, user: NewUser) -> Result<User, StoreError> {
        // The user and its event commit together (the transactional outbox).
        let write = async {
            let mut tx = self.pool.begin().await?;
            let created = insert_user(&mut tx, &user).await?;
            tx.commit().await?;
            Ok(created)
        };
        timed(&self.metrics, "insert_user", write)
            .instrument(query_span("INSERT"))
            .await
    }

    async fn get(&self, id: UserId) -> Result<User, StoreError> {
        self.select(id).await
    }

    async fn update(&self, id: UserId, changes: UserChanges) -> Result<User, StoreError> {
        let write = async {
            let mut tx = self.pool.begin().await?;
            let updated = sqlx::query(
                "UPDATE users SET name = COALESCE(?2, name), email = COALESCE(?3, email), \
                 age = COALESCE(?4, age) WHERE id = ?1",
            )
            .bind(id.to_string())
            .bind(changes.name.as_ref().map(Name::as_str))
            .bind(changes.email.as_ref().map(Email::as_str))
            .bind(changes.age.map(|age| age.get()))
            .execute(&mut *tx)
            .await?;
            if updated.rows_affected() == 0 {
                return Ok(None);
            }
            // RETURNING would show the row before the updated_at trigger ran, so read it back.
            let row = sqlx::query_as::<_, UserRow>(SELECT_USER)
                .bind(id.to_string())
                .fetch_one(&mut *tx)
                .await?;
            let user = to_user(row).map_err(|error| sqlx::Error::Decode(error.into()))?;
            outbox::insert_sqlite(&mut tx, &UserEvent::updated(&user)).await?;
            tx.commit().await?;
            Ok(Some(user))
        };
        let updated = timed(&self.metrics, "update_user", write)
            .instrument(query_span("UPDATE"))
            .await?;
        updated.ok_or(StoreError::NotFound)
    }

    async fn delete(&self, id: UserId) -> Result<Version, StoreError> {
        let write = async {
            let mut tx = self.pool.begin().await?;
            let deleted =
                sqlx::query_scalar::<_, i64>("DELETE FROM users WHERE id = ?1 RETURNING version")
                    .bind(id.to_string())
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(last) = deleted else {
                return Ok(None);
            };
            let version = Version::new(last).next();
            outbox::insert_sqlite(&mut tx, &UserEvent::deleted(id, version)).await?;
            tx.commit().await?;
            Ok(Some(version))
        };
        let deleted = timed(&self.metrics, "delete_user", write)
            .instrument(query_span("DELETE"))
            .await?;
        deleted.ok_or(StoreError::NotFound)
    }

    async fn list(&self, page: PageRequest) -> Result<UserPage, StoreError> {
        // The total is the trigger-kept count (migration 20261130000110), read in the same
        // statement as the page.
        let limit = i64::from(page.limit());
        let offset = i64::try_from(page.offset()).map_err(internal)?;
        let rows = sqlx::query_as::<_, (String, String, String, i32, i64, i64, i64, i64)>(
            "SELECT id, name, email, age, created_at, updated_at, version, \
             (SELECT sum(n) FROM users_count) AS total \
             FROM users ORDER BY created_at DESC, seq DESC LIMIT ?1 OFFSET ?2",
        )
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool);
        let rows = timed(&self.metrics, "list_users", rows)
            .instrument(query_span("SELECT"))
            .await?;
        let total = match rows.first() {
            Some(row) => row.7,
            None => {
                let count = sqlx::query_scalar::<_, i64>("SELECT sum(n) FROM users_count")
                    .fetch_one(&self.pool);
                timed(&self.metrics, "count_users", count)
                    .instrument(query_span("SELECT"))
                    .await?
            }
        };
        let users = rows
            .into_iter()
            .map(|(id, name, email, age, created, updated, version, _)| {
                to_user((id, name, email, age, created, updated, version))
            })
            .collect::<Result<_, _>>()?;
        Ok(UserPage { users, total })
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let ping = sqlx::query("SELECT 1").execute(&self.pool);
        timed(&self.metrics, "ping", ping)
            .instrument(query_span("SELECT"))
            .await
            .map(drop)
    }
}

/// `migrate` on SQLite (inside its transaction).
impl MigrationTarget for SqliteConnection {
    async fn lock_migrations(&mut self) -> anyhow::Result<()> {
        // One process owns an embedded database; SQLite's own locking covers the rest.
        Ok(())
    }

    async fn lock_users(&mut self) -> anyhow::Result<()> {
        // Any write takes SQLite's database-wide write lock until the transaction ends; this
        // no-op write takes it now, before the rows are read.
        sqlx::query("UPDATE users_count SET n = n WHERE slot = 0")
            .execute(&mut *self)
            .await?;
        Ok(())
    }

    async fn plan_repairs(&mut self) -> anyhow::Result<Vec<Repair>> {
        let mut rows = sqlx::query_as::<_, (String, String, String)>(
            "SELECT id, name, email FROM users ORDER BY lower(trim(email)), created_at, seq",
        )
        .fetch(&mut *self);
        let mut planner = Planner::default();
        let mut repairs = Vec::new();
        while let Some((id, name, email)) = rows.try_next().await? {
            let id = UserId::parse(&id)
                .map_err(|_| anyhow::anyhow!("stored id {id:?} is not a UUID"))?;
            repairs.extend(planner.row(&StoredRow { id, name, email }));
        }
        Ok(repairs)
    }

    async fn apply_repair(&mut self, repair: &Repair) -> anyhow::Result<()> {
        if let Some(value) = &repair.new_value {
            let column = repair.field.column();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE users SET {column} = ?2 WHERE id = ?1"
            )))
            .bind(repair.user_id.to_string())
            .bind(value)
            .execute(&mut *self)
            .await?;
        }
        sqlx::query(
            "INSERT INTO users_repair_log (user_id, field, problem, old_value, new_value) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(repair.user_id.to_string())
        .bind(repair.field.column())
        .bind(&repair.problem)
        .bind(&repair.old_value)
        .bind(repair.new_value.as_deref())
        .execute(&mut *self)
        .await?;
        Ok(())
    }
}
