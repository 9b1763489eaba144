//! The migration runner behind `user-service migrate`, for both backends: sqlx's embedded,
//! checksummed migrations, split into the expand set (applied whenever `migrate` runs) and the
//! contract set (`<version>_contract_<what>.sql`: rules the replaced Go server would violate).
//! Contract migrations run in the same transaction as the repair pass ([`crate::repair`]) that
//! first brings every row within the rules they add.
//!
//! Order on a database meshgate created: every migration, contract ones included, at once. On an
//! adopted legacy database (PostgreSQL only, see `postgres.rs`) the contract set waits for
//! `migrate --contract`, so it can run after expand migrations with higher versions: a contract
//! migration only adds rules and never redefines what a later migration may change.

use std::borrow::Cow;
use std::future::Future;

use anyhow::Context;
use sqlx::migrate::{Migrate, MigrateError, Migration, Migrator};

use crate::repair::{self, Repair};

/// sqlx's history table (its default name).
pub(crate) const HISTORY_TABLE: &str = "_sqlx_migrations";

/// Whether `migrate` may apply the contract migrations to an adopted database that is still in
/// its cut-over overlap (the replaced server may still be writing to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContractPhase {
    /// Only when no legacy server can be writing: a database meshgate created, or an adopted one
    /// already contracted. What `migrate` and `--migrate-on-start` do.
    WhenSafe,
    /// Now: the operator retired the legacy server (`migrate --contract`).
    Now,
}

/// A contract migration is named `<version>_contract_<what>.sql` (sqlx's description: "contract …").
pub(crate) fn is_contract(migration: &Migration) -> bool {
    migration.description.starts_with("contract ")
}

/// A row of `users_repair_log`, or a planned one (then `new_value` is what the contract phase
/// will write).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairLogEntry {
    pub user_id: String,
    pub field: String,
    pub problem: String,
    pub old_value: Option<String>,
    pub new_value: Option<String>,
}

impl From<&Repair> for RepairLogEntry {
    fn from(repair: &Repair) -> Self {
        Self {
            user_id: repair.user_id.to_string(),
            field: repair.field.column().to_owned(),
            problem: repair.problem.clone(),
            old_value: Some(repair.old_value.clone()),
            new_value: repair.new_value.clone(),
        }
    }
}

/// What the runner needs from a backend connection (inside the migration transaction) besides
/// sqlx's [`Migrate`]. The legacy hooks default to "no legacy databases" (SQLite).
pub(crate) trait MigrationTarget: Migrate + Send {
    /// Serialises concurrent `migrate` runs until the transaction ends.
    fn lock_migrations(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Blocks writers to `users` until the transaction ends.
    fn lock_users(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Every user as the repair planner wants them: ordered by `lower(trim(email))`, then oldest
    /// first (see [`repair::StoredRow`]).
    fn plan_repairs(&mut self) -> impl Future<Output = anyhow::Result<Vec<Repair>>> + Send;
    /// Writes one change to `users` (if it has a new value) and its `users_repair_log` row.
    fn apply_repair(&mut self, repair: &Repair) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Before the expand migrations: adopts a legacy database, returning its legacy version.
    fn adopt_legacy(
        &mut self,
        _migrator: &Migrator,
    ) -> impl Future<Output = anyhow::Result<Option<i64>>> + Send {
        async { Ok(None) }
    }
    /// After the expand migrations: records an adoption.
    fn record_adoption(
        &mut self,
        _legacy_version: i64,
        _migrator: &Migrator,
    ) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }
    /// True while an adopted database has not been contracted.
    fn in_overlap(&mut self) -> impl Future<Output = anyhow::Result<bool>> + Send {
        async { Ok(false) }
    }
    /// Ends the overlap (after `migrate --contract` ran the contract migrations).
    fn mark_contracted(&mut self) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }
    /// The `users_repair_log` rows the expand migrations of this run wrote (in SQL).
    fn expand_repairs(
        &mut self,
    ) -> impl Future<Output = anyhow::Result<Vec<RepairLogEntry>>> + Send {
        async { Ok(Vec::new()) }
    }
}

/// `user-service migrate`, inside the caller's transaction (so it is all or nothing). Returns the
/// `users_repair_log` rows it wrote, for [`log_repair_log`] once the transaction has committed.
pub(crate) async fn run<C: MigrationTarget>(
    conn: &mut C,
    migrator: &Migrator,
    phase: ContractPhase,
) -> anyhow::Result<Vec<RepairLogEntry>> {
    conn.lock_migrations().await?;
    check_history(conn, migrator).await?;
    let adopted = conn.adopt_legacy(migrator).await?;
    apply_expand(conn, migrator).await?;
    let mut logged = conn.expand_repairs().await?;
    if let Some(legacy_version) = adopted {
        conn.record_adoption(legacy_version, migrator).await?;
    }
    let run_contract = phase == ContractPhase::Now || !conn.in_overlap().await?;
    let repaired = apply_contract(conn, migrator, run_contract).await?;
    if phase == ContractPhase::Now {
        conn.mark_contracted().await?;
    }
    logged.extend(repaired.iter().map(RepairLogEntry::from));
    Ok(logged)
}

/// Refuses a history that names migrations this binary does not have (a newer release migrated
/// the database), as sqlx does; needed because the expand run ignores the contract ones.
async fn check_history<C: Migrate>(conn: &mut C, migrator: &Migrator) -> anyhow::Result<()> {
    conn.ensure_migrations_table(HISTORY_TABLE).await?;
    let applied = conn.list_applied_migrations(HISTORY_TABLE).await?;
    if let Some(unknown) = applied.iter().find(|m| !migrator.version_exists(m.version)) {
        return Err(MigrateError::VersionMissing(unknown.version).into());
    }
    Ok(())
}

/// Applies every pending migration but the contract ones, inside the caller's transaction.
async fn apply_expand<C: Migrate>(conn: &mut C, migrator: &Migrator) -> anyhow::Result<()> {
    let expand = Migrator {
        migrations: Cow::Owned(
            migrator
                .iter()
                .filter(|m| !is_contract(m))
                .cloned()
                .collect(),
        ),
        // The applied contract migrations are not in this subset.
        ignore_missing: true,
        // The caller holds the migration lock for the whole transaction.
        locking: false,
        ..Migrator::DEFAULT
    };
    expand.run_direct(None, conn, false).await?;
    Ok(())
}

/// The contract migrations not applied yet, in version order.
async fn pending_contract<C: Migrate>(
    conn: &mut C,
    migrator: &Migrator,
) -> anyhow::Result<Vec<i64>> {
    let applied = conn.list_applied_migrations(HISTORY_TABLE).await?;
    Ok(migrator
        .iter()
        .filter(|m| is_contract(m) && !applied.iter().any(|a| a.version == m.version))
        .map(|m| m.version)
        .collect())
}

/// Runs the pending contract migrations (when `run_now`) after the repair pass, returning the
/// repairs it applied, or only logs what that pass would change.
async fn apply_contract<C: MigrationTarget>(
    conn: &mut C,
    migrator: &Migrator,
    run_now: bool,
) -> anyhow::Result<Vec<Repair>> {
    let pending = pending_contract(conn, migrator).await?;
    if pending.is_empty() {
        return Ok(Vec::new());
    }
    if !run_now {
        let planned = conn.plan_repairs().await.context("planning the repairs")?;
        for entry in planned.iter().map(RepairLogEntry::from) {
            log_entry(&entry, false);
        }
        tracing::warn!(
            deferred = ?pending,
            planned_repairs = planned.len(),
            "contract migrations deferred: this database was adopted from the replaced service, \
             which may still be writing to it; run `user-service migrate --contract` once it is \
             retired (deploy/CUTOVER.md)"
        );
        return Ok(Vec::new());
    }
    conn.lock_users().await?;
    let mut repairs = conn.plan_repairs().await.context("planning the repairs")?;
    repair::application_order(&mut repairs);
    for repair in &repairs {
        conn.apply_repair(repair).await.with_context(|| {
            format!(
                "repairing {} of user {}",
                repair.field.column(),
                repair.user_id
            )
        })?;
    }
    let full = Migrator {
        migrations: migrator.migrations.clone(),
        locking: false,
        ..Migrator::DEFAULT
    };
    full.run_direct(None, conn, false).await?;
    tracing::info!(
        applied = ?pending,
        repairs = repairs.len(),
        "contract migrations applied"
    );
    Ok(repairs)
}

/// Logs repair log rows (call once the transaction that wrote them has committed).
pub(crate) fn log_repair_log(entries: &[RepairLogEntry]) {
    for entry in entries {
        log_entry(entry, true);
    }
    if !entries.is_empty() {
        tracing::warn!(
            count = entries.len(),
            "rows repaired or reported by the migrations: the full list is in users_repair_log"
        );
    }
}

fn log_entry(entry: &RepairLogEntry, applied: bool) {
    let action = match (&entry.new_value, applied) {
        (None, _) => "reported, kept as stored",
        (Some(_), true) => "changed",
        (Some(_), false) => "will change at the contract phase",
    };
    tracing::warn!(
        user_id = %entry.user_id,
        field = %entry.field,
        problem = %entry.problem,
        old_value = entry.old_value.as_deref().unwrap_or("NULL"),
        new_value = entry.new_value.as_deref().unwrap_or(""),
        action,
        "row breaks a rule"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_migrations_are_recognised_by_name() {
        let migrator = &crate::store::postgres::MIGRATOR;
        let contract: Vec<_> = migrator
            .iter()
            .filter(|m| is_contract(m))
            .map(|m| m.version)
            .collect();
        assert!(!contract.is_empty());
        let sqlite: Vec<_> = crate::store::sqlite::MIGRATOR
            .iter()
            .filter(|m| is_contract(m))
            .map(|m| m.version)
            .collect();
        assert_eq!(
            sqlite, contract,
            "both backends contract at the same version"
        );
    }
}
