//! PostgreSQL store: a sqlx pool, hand-written queries, the schema in `migrations/postgres`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use sqlx::PgConnection;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tracing::Instrument;
use uuid::Uuid;

use super::migrate::{self, ContractPhase, MigrationTarget, RepairLogEntry};
use super::{PoolStats, internal, legacy, outbox, timed};
use crate::domain::{
    Age, Email, Name, NewUser, PageRequest, StoreError, User, UserChanges, UserId, UserPage,
    UserStore, Version,
};
use crate::events::UserEvent;
use crate::metrics::Metrics;
use crate::repair::{Planner, Repair, StoredRow};

pub(crate) static MIGRATOR: Migrator = sqlx::migrate!("../migrations/postgres");

/// One `migrate` at a time per database (pods starting with MIGRATE_ON_START, the Job): a
/// transaction-scoped advisory lock on this key.
pub const MIGRATE_LOCK_KEY: i64 = i64::from_be_bytes(*b"meshmigr");

/// Columns every query returns, timestamps as unix seconds. `name` and `email` are cast to text:
/// an adopted database turns them from varchar into text at the contract phase, and a prepared
/// statement whose result type changes fails ("cached plan must not change result type"); with
/// the casts, statements prepared before the change are re-planned silently.
const USER_COLUMNS: &str = "id, name::text AS name, email::text AS email, age, \
     EXTRACT(EPOCH FROM created_at)::int8 AS created_at, \
     EXTRACT(EPOCH FROM updated_at)::int8 AS updated_at, version";

type UserRow = (Uuid, String, String, i32, i64, i64, i64);

fn to_user((id, name, email, age, created_at, updated_at, version): UserRow) -> User {
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

#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    metrics: Arc<Metrics>,
}

/// Pool settings from the config.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl PostgresStore {
    /// Builds the pool without connecting: the service starts (NOT_SERVING) while the database
    /// is still coming up, and connects on first use.
    pub fn connect_lazy(
        url: &str,
        settings: &PoolSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, sqlx::Error> {
        let options = PgConnectOptions::from_str(url)?.application_name("user-service");
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .connect_lazy_with(options);
        Ok(Self { pool, metrics })
    }

    /// Applies the migrations in one transaction ([`migrate::run`]): adopts a legacy database
    /// (see `store/legacy.rs`), applies the expand set, then the contract set after the repair
    /// pass unless the database is an adopted one still in its cut-over overlap and `phase` is
    /// `WhenSafe`.
    pub async fn migrate(&self, phase: ContractPhase) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        let logged = migrate::run(&mut *tx, &MIGRATOR, phase).await?;
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

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// Inserts `user` and its `user.created` event, inside the caller's transaction.
pub(crate) async fn insert_user(conn: &mut PgConnection, user: &NewUser) -> sqlx::Result<User> {
    let sql = format!(
        "INSERT INTO users (id, name, email, age) VALUES ($1, $2, $3, $4) RETURNING {USER_COLUMNS}"
    );
    let row = sqlx::query_as::<_, UserRow>(sqlx::AssertSqlSafe(sql))
        .bind(user.id.as_uuid())
        .bind(user.name.as_str())
        .bind(user.email.as_str())
        .bind(user.age.get())
        .fetch_one(&mut *conn)
        .await?;
    let created = to_user(row);
    outbox::insert_pg(conn, &UserEvent::created(&created)).await?;
    Ok(created)
}

pub(crate) fn query_span(operation: &'static str) -> tracing::Span {
    tracing::info_span!(
        "db.query",
        db.system = "postgresql",
        db.operation = operation
    )
}

impl UserStore for PostgresStore {
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
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        let row = sqlx::query_as::<_, UserRow>(sqlx::AssertSqlSafe(sql))
            .bind(id.as_uuid())
            .fetch_optional(&self.pool);
        let row = timed(&self.metrics, "select_user", row)
            .instrument(query_span("SELECT"))
            .await?;
        row.map(to_user).ok_or(StoreError::NotFound)
    }

    async fn update(&self, id: UserId, changes: UserChanges) -> Result<User, StoreError> {
        // COALESCE keeps the stored value for every field the request left empty.
        let sql = format!(
            "UPDATE users SET name = COALESCE($2, name), email = COALESCE($3, email), \
             age = COALESCE($4, age) WHERE id = $1 RETURNING {USER_COLUMNS}"
        );
        let write = async {
            let mut tx = self.pool.begin().await?;
            let row = sqlx::query_as::<_, UserRow>(sqlx::AssertSqlSafe(sql))
                .bind(id.as_uuid())
                .bind(changes.name.as_ref().map(Name::as_str))
                .bind(changes.email.as_ref().map(Email::as_str))
                .bind(changes.age.map(|age| age.get()))
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            let updated = to_user(row);
            outbox::insert_pg(&mut tx, &UserEvent::updated(&updated)).await?;
            tx.commit().await?;
            Ok(Some(updated))
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
                sqlx::query_scalar::<_, i64>("DELETE FROM users WHERE id = $1 RETURNING version")
                    .bind(id.as_uuid())
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(last) = deleted else {
                return Ok(None);
            };
            let version = Version::new(last).next();
            outbox::insert_pg(&mut tx, &UserEvent::deleted(id, version)).await?;
            tx.commit().await?;
            Ok(Some(version))
        };
        let deleted = timed(&self.metrics, "delete_user", write)
            .instrument(query_span("DELETE"))
            .await?;
        deleted.ok_or(StoreError::NotFound)
    }

    async fn list(&self, page: PageRequest) -> Result<UserPage, StoreError> {
        // One statement, so the page and the total come from the same snapshot. The total is
        // the trigger-kept count (migration 20261130000110), not a scan of every row; the page
        // walks users_created_at_idx. The ORDER BY names the table's column: a bare
        // `created_at` would be the whole-seconds output alias.
        let sql = format!(
            "SELECT {USER_COLUMNS}, (SELECT COALESCE(sum(n), 0) FROM users_count)::int8 AS total FROM users \
             ORDER BY users.created_at DESC, users.id DESC LIMIT $1 OFFSET $2"
        );
        let limit = i64::from(page.limit());
        let offset = i64::try_from(page.offset()).map_err(internal)?;
        let rows = sqlx::query_as::<_, (Uuid, String, String, i32, i64, i64, i64, i64)>(
            sqlx::AssertSqlSafe(sql),
        )
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool);
        let rows = timed(&self.metrics, "list_users", rows)
            .instrument(query_span("SELECT"))
            .await?;
        let total = match rows.first() {
            Some(row) => row.7,
            // A page past the end has no rows to carry the total.
            None => {
                let count = sqlx::query_scalar::<_, i64>(
                    "SELECT COALESCE(sum(n), 0)::int8 FROM users_count",
                )
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
            .collect();
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

/// `migrate` on PostgreSQL (inside its transaction).
impl MigrationTarget for PgConnection {
    async fn lock_migrations(&mut self) -> anyhow::Result<()> {
        // The migrations' "already exists, skipping" notices are expected; keep the log for
        // what matters.
        sqlx::query("SET LOCAL client_min_messages = warning")
            .execute(&mut *self)
            .await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(MIGRATE_LOCK_KEY)
            .execute(&mut *self)
            .await?;
        Ok(())
    }

    async fn adopt_legacy(&mut self, migrator: &Migrator) -> anyhow::Result<Option<i64>> {
        legacy::adopt(self, migrator).await
    }

    async fn record_adoption(
        &mut self,
        legacy_version: i64,
        migrator: &Migrator,
    ) -> anyhow::Result<()> {
        legacy::record(self, legacy_version, migrator).await
    }

    async fn in_overlap(&mut self) -> anyhow::Result<bool> {
        legacy::in_overlap(self).await
    }

    async fn mark_contracted(&mut self) -> anyhow::Result<()> {
        legacy::mark_contracted(self).await
    }

    async fn lock_users(&mut self) -> anyhow::Result<()> {
        // Fail clearly rather than queue behind a long transaction with every request queued
        // behind us.
        sqlx::query("SET LOCAL lock_timeout = '10s'")
            .execute(&mut *self)
            .await?;
        sqlx::query("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *self)
            .await?;
        Ok(())
    }

    async fn plan_repairs(&mut self) -> anyhow::Result<Vec<Repair>> {
        let mut rows = sqlx::query_as::<_, (Uuid, String, String)>(
            "SELECT id, name::text, email::text FROM users \
             ORDER BY lower(trim(email) COLLATE \"C\"), created_at, id",
        )
        .fetch(&mut *self);
        let mut planner = Planner::default();
        let mut repairs = Vec::new();
        while let Some((id, name, email)) = rows.try_next().await? {
            repairs.extend(planner.row(&StoredRow {
                id: UserId::from(id),
                name,
                email,
            }));
        }
        Ok(repairs)
    }

    async fn apply_repair(&mut self, repair: &Repair) -> anyhow::Result<()> {
        if let Some(value) = &repair.new_value {
            let column = repair.field.column();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE users SET {column} = $2 WHERE id = $1"
            )))
            .bind(repair.user_id.as_uuid())
            .bind(value)
            .execute(&mut *self)
            .await?;
        }
        sqlx::query(
            "INSERT INTO users_repair_log (user_id, field, problem, old_value, new_value) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(repair.user_id.as_uuid())
        .bind(repair.field.column())
        .bind(&repair.problem)
        .bind(&repair.old_value)
        .bind(repair.new_value.as_deref())
        .execute(&mut *self)
        .await?;
        Ok(())
    }

    async fn expand_repairs(&mut self) -> anyhow::Result<Vec<RepairLogEntry>> {
        // now() is the transaction's start: the rows this run's migrations logged.
        let rows = sqlx::query_as::<_, (String, String, String, Option<String>, Option<String>)>(
            "SELECT user_id::text, field, problem, old_value, new_value FROM users_repair_log \
             WHERE logged_at = now() ORDER BY id",
        )
        .fetch_all(&mut *self)
        .await?;
        Ok(rows
            .into_iter()
            .map(
                |(user_id, field, problem, old_value, new_value)| RepairLogEntry {
                    user_id,
                    field,
                    problem,
                    old_value,
                    new_value,
                },
            )
            .collect())
    }
}
