//! SQLite, the embedded default when no `DATABASE_URL` is given: the [`Backend`] facts the shared
//! store ([`super::sql`]) needs and the pool (one file, WAL mode). The schema is in
//! `migrations/sqlite`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Sqlite, SqliteConnection};

use super::migrate::{ContractPhase, MigrationTarget};
use super::sql::{Backend, SqlStore, migrate_in_transaction};
use crate::metrics::Metrics;
use crate::repair::Repair;

pub(crate) static MIGRATOR: Migrator = sqlx::migrate!("../migrations/sqlite");

impl Backend for Sqlite {
    const SYSTEM: &'static str = "sqlite";
    const USER_COLUMNS: &'static str = "id, name, email, age, created_at, updated_at, version";
    /// Unix seconds, as the timestamp columns hold them.
    const NOW: &'static str = "CAST(strftime('%s', 'now') AS INTEGER)";
    const TOTAL_USERS: &'static str = "(SELECT sum(n) FROM users_count)";
    const USERS_ORDER: &'static str = "created_at DESC, seq DESC";
    const POSITION_COLUMNS: &'static str = "created_at, seq";
    const AFTER_POSITION: &'static str = "(created_at, seq) < ($2, $3)";
    // RETURNING would show the row before the updated_at trigger ran.
    const RETURNING_SEES_TRIGGERS: bool = false;
    const REPAIR_ROWS: &'static str =
        "SELECT id, name, email FROM users ORDER BY lower(trim(email)), created_at, seq";
    const EXPIRES_AFTER_TTL: &'static str = "CAST(strftime('%s', 'now') AS INTEGER) + $3";
    const BOUND_APPLY_WAITS: Option<&'static str> = None;
    type Id = uuid::fmt::Hyphenated;
    type Tiebreak = i64;

    fn tiebreak_into_position(seq: i64) -> u128 {
        // AUTOINCREMENT keys start at 1.
        u128::try_from(seq).unwrap_or(0)
    }

    fn tiebreak_from_position(raw: u128) -> i64 {
        // Only a position this store made reaches here (tokens are signed); larger still
        // orders after every row.
        i64::try_from(raw).unwrap_or(i64::MAX)
    }

    fn migrator() -> &'static Migrator {
        &MIGRATOR
    }
}

pub type SqliteStore = SqlStore<Sqlite>;

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
        Self::new(pool, metrics)
    }

    /// Applies the migrations in one transaction ([`super::migrate::run`]). SQLite databases are
    /// always meshgate's own, so the contract set runs as soon as it is there.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        migrate_in_transaction(&self.pool, ContractPhase::WhenSafe).await
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
        SqliteStore::plan_repairs(self).await
    }

    async fn apply_repair(&mut self, repair: &Repair) -> anyhow::Result<()> {
        SqliteStore::apply_repair(self, repair).await
    }
}
