//! Storage adapters behind [`UserStore`](crate::domain::UserStore): PostgreSQL (production) and
//! SQLite (the embedded default), one implementation over both ([`sql`]), and the cache decorator
//! in [`crate::cache`]; the migration
//! runner ([`migrate`]) and the adoption of the replaced service's database (`legacy`).

use std::time::Instant;

use crate::domain::{
    BoxError, CursorPage, CursorPages, ListPosition, NewUser, PageRequest, PageSize, StoreError,
    User, UserChanges, UserId, UserPage, UserStore, Version,
};
use crate::metrics::Metrics;

/// Runs `$call` on whichever backend `$self` (a [`Database`]) is.
macro_rules! dispatch {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            $crate::store::Database::Postgres($store) => $call.await,
            $crate::store::Database::Sqlite($store) => $call.await,
        }
    };
}

mod idempotency;
mod legacy;
pub mod migrate;
pub mod outbox;
pub mod postgres;
pub mod sql;
pub mod sqlite;

pub use migrate::ContractPhase;
pub use outbox::{OutboxLease, PendingEvent};
pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// The configured database: one of the two backends, chosen at start from `DATABASE_URL`.
#[derive(Clone)]
pub enum Database {
    Postgres(PostgresStore),
    Sqlite(SqliteStore),
}

/// Connection pool occupancy, for the `/metrics` gauges.
#[derive(Debug, Clone, Copy)]
pub struct PoolStats {
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}

impl Database {
    /// `user-service migrate` (and `--migrate-on-start`): every migration that is safe now. On a
    /// database adopted from the replaced service, the contract set waits for [`Self::contract`].
    pub async fn migrate(&self) -> anyhow::Result<()> {
        self.migrate_with(ContractPhase::WhenSafe).await
    }

    /// `user-service migrate --contract`: also the contract set of an adopted database (the
    /// operator has retired the replaced server).
    pub async fn contract(&self) -> anyhow::Result<()> {
        self.migrate_with(ContractPhase::Now).await
    }

    async fn migrate_with(&self, phase: ContractPhase) -> anyhow::Result<()> {
        match self {
            Self::Postgres(store) => store.migrate(phase).await,
            Self::Sqlite(store) => store.migrate().await,
        }
    }

    pub fn pool_stats(&self) -> PoolStats {
        match self {
            Self::Postgres(store) => store.pool_stats(),
            Self::Sqlite(store) => store.pool_stats(),
        }
    }

    /// Hands every event committed through this handle to `live` (see [`sql::SqlStore::feed_commits_to`]).
    pub fn feed_commits_to(&mut self, live: crate::events::live::LiveEvents) {
        match self {
            Self::Postgres(store) => store.feed_commits_to(live),
            Self::Sqlite(store) => store.feed_commits_to(live),
        }
    }

    /// Wakes `relay` after every commit through this handle that wrote an outbox row (see
    /// [`sql::SqlStore::wake_on_commits`]).
    pub fn wake_on_commits(&mut self, relay: std::sync::Arc<tokio::sync::Notify>) {
        match self {
            Self::Postgres(store) => store.wake_on_commits(relay),
            Self::Sqlite(store) => store.wake_on_commits(relay),
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Self::Postgres(_) => "postgresql",
            Self::Sqlite(_) => "sqlite",
        }
    }

    pub async fn close(&self) {
        match self {
            Self::Postgres(store) => store.close().await,
            Self::Sqlite(store) => store.close().await,
        }
    }
}

impl UserStore for Database {
    async fn create(&self, user: NewUser) -> Result<User, StoreError> {
        dispatch!(self, s => s.create(user))
    }
    async fn get(&self, id: UserId) -> Result<User, StoreError> {
        dispatch!(self, s => s.get(id))
    }
    async fn update(&self, id: UserId, changes: UserChanges) -> Result<User, StoreError> {
        dispatch!(self, s => s.update(id, changes))
    }
    async fn delete(&self, id: UserId) -> Result<Version, StoreError> {
        dispatch!(self, s => s.delete(id))
    }
    async fn list(&self, page: PageRequest) -> Result<UserPage, StoreError> {
        dispatch!(self, s => s.list(page))
    }
    async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.ping())
    }
}

impl CursorPages for Database {
    async fn list_after(
        &self,
        after: Option<ListPosition>,
        size: PageSize,
    ) -> Result<CursorPage, StoreError> {
        dispatch!(self, s => s.list_after(after, size))
    }
    async fn page_token_key(&self) -> Result<Vec<u8>, StoreError> {
        dispatch!(self, s => s.page_token_key())
    }
}

/// Sorts a sqlx error into the store's error kinds. Pure, so the mapping is unit-tested.
pub(crate) fn classify(error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::RowNotFound => StoreError::NotFound,
        sqlx::Error::Database(db) if is_email_unique_violation(db.as_ref()) => {
            StoreError::EmailTaken
        }
        sqlx::Error::Database(db) if db.code().is_some_and(|code| is_transient_sqlstate(&code)) => {
            StoreError::Unavailable(Box::new(error))
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(Box::new(error)),
        _ => StoreError::Internal(Box::new(error)),
    }
}

/// The unique index on the email's identity, `users_email_lower_key` (the contract phase), or the
/// exact `users_email_key` it replaces (an adopted database before the contract phase).
/// PostgreSQL names them; SQLite names an expression index in the message and a column
/// constraint by its column.
fn is_email_unique_violation(db: &dyn sqlx::error::DatabaseError) -> bool {
    const NAMES: [&str; 2] = ["users_email_lower_key", "users_email_key"];
    matches!(db.kind(), sqlx::error::ErrorKind::UniqueViolation)
        && (db.constraint().is_some_and(|name| NAMES.contains(&name))
            || NAMES
                .iter()
                .any(|name| db.message().contains(&format!("'{name}'")))
            || db.message().contains("users.email"))
}

/// SQLSTATEs meaning "not now; try again": connection exceptions (08), operator intervention
/// such as shutdown (57P0x), too many connections (53300), a lock wait that timed out (55P03).
fn is_transient_sqlstate(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("57P0")
        || code == "53300"
        || code == LOCK_NOT_AVAILABLE
}

/// `lock_timeout` expired: another transaction holds the row; trying again later may succeed.
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// Times one query into `db_query_duration_seconds{operation}`.
pub(crate) async fn timed<T>(
    metrics: &Metrics,
    operation: &'static str,
    query: impl std::future::Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, StoreError> {
    let started = Instant::now();
    let result = query.await;
    metrics
        .db_query_duration
        .with_label_values(&[operation])
        .observe(started.elapsed().as_secs_f64());
    result.map_err(|error| {
        let error = classify(error);
        if let StoreError::Unavailable(cause) | StoreError::Internal(cause) = &error {
            tracing::warn!(operation, error = %cause, "database query failed");
        }
        error
    })
}

pub(crate) fn internal(error: impl Into<BoxError>) -> StoreError {
    StoreError::Internal(error.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_sqlstates_mean_unavailable() {
        assert!(is_transient_sqlstate("08006"));
        assert!(is_transient_sqlstate("57P01"));
        assert!(is_transient_sqlstate("53300"));
        assert!(is_transient_sqlstate("55P03"));
        assert!(!is_transient_sqlstate("23505"));
        assert!(!is_transient_sqlstate("42P01"));
    }

    #[test]
    fn transport_errors_mean_unavailable() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(matches!(
            classify(sqlx::Error::Io(refused)),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            classify(sqlx::Error::PoolTimedOut),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            classify(sqlx::Error::RowNotFound),
            StoreError::NotFound
        ));
        let odd = sqlx::Error::Protocol("garbled".into());
        assert!(matches!(classify(odd), StoreError::Internal(_)));
    }
}
