//! PostgreSQL store: a sqlx pool, hand-written queries, the schema in `migrations/postgres`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use tracing::Instrument;
use uuid::Uuid;

use super::{PoolStats, internal, timed};
use crate::domain::{
    Age, Email, Name, NewUser, PageRequest, StoreError, User, UserChanges, UserId, UserPage,
    UserStore, Version,
};
use crate::metrics::Metrics;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// Columns every query returns, timestamps as unix seconds.
const USER_COLUMNS: &str = "id, name, email, age, \
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

    pub async fn migrate(&self) -> anyhow::Result<()> {
        MIGRATOR.run(&self.pool).await?;
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
}

fn query_span(operation: &'static str) -> tracing::Span {
    tracing::info_span!(
        "db.query",
        db.system = "postgresql",
        db.operation = operation
    )
}

impl UserStore for PostgresStore {
    async fn create(&self, user: NewUser) -> Result<User, StoreError> {
        let sql = format!(
            "INSERT INTO users (id, name, email, age) VALUES ($1, $2, $3, $4) RETURNING {USER_COLUMNS}"
        );
        let row = sqlx::query_as::<_, UserRow>(sqlx::AssertSqlSafe(sql))
            .bind(user.id.as_uuid())
            .bind(user.name.as_str())
            .bind(user.email.as_str())
            .bind(user.age.get())
            .fetch_one(&self.pool);
        let row = timed(&self.metrics, "insert_user", row)
            .instrument(query_span("INSERT"))
            .await?;
        Ok(to_user(row))
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
        let row = sqlx::query_as::<_, UserRow>(sqlx::AssertSqlSafe(sql))
            .bind(id.as_uuid())
            .bind(changes.name.as_ref().map(Name::as_str))
            .bind(changes.email.as_ref().map(Email::as_str))
            .bind(changes.age.map(|age| age.get()))
            .fetch_optional(&self.pool);
        let row = timed(&self.metrics, "update_user", row)
            .instrument(query_span("UPDATE"))
            .await?;
        row.map(to_user).ok_or(StoreError::NotFound)
    }

    async fn delete(&self, id: UserId) -> Result<Version, StoreError> {
        let deleted =
            sqlx::query_scalar::<_, i64>("DELETE FROM users WHERE id = $1 RETURNING version")
                .bind(id.as_uuid())
                .fetch_optional(&self.pool);
        let deleted = timed(&self.metrics, "delete_user", deleted)
            .instrument(query_span("DELETE"))
            .await?;
        deleted
            .map(|version| Version::new(version).next())
            .ok_or(StoreError::NotFound)
    }

    async fn list(&self, page: PageRequest) -> Result<UserPage, StoreError> {
        // One statement so the page and the total come from the same snapshot. The ORDER BY
        // names the table's column: a bare `created_at` would be the whole-seconds output alias.
        let sql = format!(
            "SELECT {USER_COLUMNS}, COUNT(*) OVER () AS total FROM users \
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
            // A page past the end has no rows to carry the window count.
            None => {
                let count = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM users")
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
