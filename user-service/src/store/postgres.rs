//! PostgreSQL: the [`Backend`] facts the shared store ([`super::sql`]) needs, the pool, and the
//! migration runner's locks and legacy hooks. The schema is in `migrations/postgres`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, Postgres};
use uuid::Uuid;

use super::legacy;
use super::migrate::{ContractPhase, MigrationTarget, RepairLogEntry};
use super::sql::{Backend, SqlStore, migrate_in_transaction};
use crate::metrics::Metrics;
use crate::repair::Repair;

pub(crate) static MIGRATOR: Migrator = sqlx::migrate!("../migrations/postgres");

/// One `migrate` at a time per database (pods starting with MIGRATE_ON_START, the Job): a
/// transaction-scoped advisory lock on this key.
pub const MIGRATE_LOCK_KEY: i64 = i64::from_be_bytes(*b"meshmigr");

impl Backend for Postgres {
    const SYSTEM: &'static str = "postgresql";
    /// `name` and `email` are cast to text: an adopted database turns them from varchar into
    /// text at the contract phase, and a prepared statement whose result type changes fails
    /// ("cached plan must not change result type"); with the casts, statements prepared before
    /// the change are re-planned silently.
    const USER_COLUMNS: &'static str = "id, name::text AS name, email::text AS email, age, \
         EXTRACT(EPOCH FROM created_at)::int8 AS created_at, \
         EXTRACT(EPOCH FROM updated_at)::int8 AS updated_at, version";
    const NOW: &'static str = "now()";
    const TOTAL_USERS: &'static str = "(SELECT COALESCE(sum(n), 0) FROM users_count)::int8";
    /// The page walks users_created_at_idx. The ORDER BY names the table's column: a bare
    /// `created_at` would be the whole-seconds output alias.
    const USERS_ORDER: &'static str = "users.created_at DESC, users.id DESC";
    /// Microseconds, PostgreSQL's precision (EXTRACT answers an exact numeric since
    /// PostgreSQL 14), so rows created in the same second keep their order.
    const POSITION_COLUMNS: &'static str =
        "(EXTRACT(EPOCH FROM users.created_at) * 1000000)::int8, users.id";
    const AFTER_POSITION: &'static str = "(users.created_at, users.id) < \
         (TIMESTAMPTZ 'epoch' + $2::int8 * INTERVAL '1 microsecond', $3)";
    const RETURNING_SEES_TRIGGERS: bool = true;
    const REPAIR_ROWS: &'static str = "SELECT id, name::text, email::text FROM users \
         ORDER BY lower(trim(email) COLLATE \"C\"), created_at, id";
    const EXPIRES_AFTER_TTL: &'static str = "now() + make_interval(secs => $3::float8)";
    /// Transaction-local (`set_config(.., true)`): the pooled session keeps its defaults.
    const BOUND_APPLY_WAITS: Option<&'static str> = Some(
        "SELECT set_config('lock_timeout', '1s', true), \
         set_config('idle_in_transaction_session_timeout', '5s', true)",
    );
    type Id = Uuid;
    type Tiebreak = Uuid;

    fn tiebreak_into_position(value: Uuid) -> u128 {
        value.as_u128()
    }

    fn tiebreak_from_position(raw: u128) -> Uuid {
        Uuid::from_u128(raw)
    }

    fn migrator() -> &'static Migrator {
        &MIGRATOR
    }
}

pub type PostgresStore = SqlStore<Postgres>;

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
        Ok(Self::new(pool, metrics))
    }

    /// Applies the migrations in one transaction ([`super::migrate::run`]): adopts a legacy
    /// database (see `store/legacy.rs`), applies the expand set, then the contract set after the
    /// repair pass unless the database is an adopted one still in its cut-over overlap and
    /// `phase` is `WhenSafe`.
    pub async fn migrate(&self, phase: ContractPhase) -> anyhow::Result<()> {
        migrate_in_transaction(&self.pool, phase).await
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
        PostgresStore::plan_repairs(self).await
    }

    async fn apply_repair(&mut self, repair: &Repair) -> anyhow::Result<()> {
        PostgresStore::apply_repair(self, repair).await
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
