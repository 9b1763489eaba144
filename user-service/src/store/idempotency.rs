//! Claimed `Idempotency-Key`s (migration 20261130000500), for both backends.

use sqlx::{Postgres, Sqlite};
use tracing::Instrument;

use super::sql::{Backend, SqlStore, query_span};
use super::{Database, internal, timed};
use crate::domain::{NewUser, StoreError};
use crate::events::UserEvent;
use crate::idempotency::{Claim, IdempotentCreate, Outcome};

impl IdempotentCreate for Database {
    async fn create_idempotent(&self, user: NewUser, claim: &Claim) -> Result<Outcome, StoreError> {
        Database::create_idempotent(self, user, claim).await
    }
}

/// A stored key: the request's fingerprint and the created user (as its `user.created` event).
type StoredKey = (String, Option<String>);

fn replay(claim: &Claim, (fingerprint, response): StoredKey) -> Result<Outcome, StoreError> {
    if fingerprint != claim.fingerprint {
        return Ok(Outcome::Conflict);
    }
    let response =
        response.ok_or_else(|| internal("a committed idempotency key has no response"))?;
    let event = UserEvent::decode(response.as_bytes()).map_err(internal)?;
    event
        .snapshot_user()
        .map(Outcome::Replayed)
        .ok_or_else(|| internal("an idempotency key's response has no user"))
}

impl Database {
    /// Creates `user` unless `claim`'s key is already taken (and not expired): the claim, the
    /// user, its event and the response commit in one transaction. A concurrent call with the
    /// same key waits on the key's unique index until this transaction ends.
    pub async fn create_idempotent(
        &self,
        user: NewUser,
        claim: &Claim,
    ) -> Result<Outcome, StoreError> {
        dispatch!(self, store => store.create_idempotent(user, claim))
    }

    /// Forgets expired keys (their rows are also reclaimed in place when a key is reused).
    pub async fn purge_expired_idempotency_keys(&self) -> Result<u64, StoreError> {
        dispatch!(self, store => store.purge_expired_idempotency_keys())
    }
}

/// Idempotent creates on one backend (`$db`, a [`Backend`]).
macro_rules! idempotency_impl {
    ($db:ty) => {
        impl SqlStore<$db> {
            async fn create_idempotent(
                &self,
                user: NewUser,
                claim: &Claim,
            ) -> Result<Outcome, StoreError> {
                let ttl_secs = i64::try_from(claim.ttl.as_secs()).unwrap_or(i64::MAX);
                let claim_sql = format!(
                    "INSERT INTO idempotency_keys (key, fingerprint, expires_at) \
                     VALUES ($1, $2, {expires}) \
                     ON CONFLICT (key) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, \
                     response = NULL, created_at = {now}, expires_at = EXCLUDED.expires_at \
                     WHERE idempotency_keys.expires_at <= {now} RETURNING 1",
                    expires = <$db as Backend>::EXPIRES_AFTER_TTL,
                    now = <$db as Backend>::NOW,
                );
                let work = async {
                    let mut tx = self.pool.begin().await?;
                    let claimed = sqlx::query_scalar::<_, i32>(sqlx::AssertSqlSafe(claim_sql))
                        .bind(claim.key.as_str())
                        .bind(&claim.fingerprint)
                        .bind(ttl_secs)
                        .fetch_optional(&mut *tx)
                        .await?
                        .is_some();
                    if !claimed {
                        let stored = sqlx::query_as::<_, StoredKey>(
                            "SELECT fingerprint, response FROM idempotency_keys WHERE key = $1",
                        )
                        .bind(claim.key.as_str())
                        .fetch_one(&mut *tx)
                        .await?;
                        return Ok(Err(stored));
                    }
                    let (created, event) = Self::insert_user(&mut tx, &user).await?;
                    sqlx::query("UPDATE idempotency_keys SET response = $2 WHERE key = $1")
                        .bind(claim.key.as_str())
                        .bind(String::from_utf8_lossy(&event.encode()).as_ref())
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok(Ok((created, event)))
                };
                let outcome = timed(&self.metrics, "insert_user_idempotent", work)
                    .instrument(query_span::<$db>("INSERT"))
                    .await?;
                match outcome {
                    Ok((created, event)) => {
                        self.committed(event);
                        Ok(Outcome::Created(created))
                    }
                    Err(stored) => replay(claim, stored),
                }
            }

            async fn purge_expired_idempotency_keys(&self) -> Result<u64, StoreError> {
                let sql = format!(
                    "DELETE FROM idempotency_keys WHERE expires_at <= {}",
                    <$db as Backend>::NOW
                );
                let purge = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(&self.pool);
                Ok(timed(&self.metrics, "purge_idempotency_keys", purge)
                    .await?
                    .rows_affected())
            }
        }
    };
}

idempotency_impl!(Postgres);
idempotency_impl!(Sqlite);
