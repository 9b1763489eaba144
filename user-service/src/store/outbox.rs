//! The transactional outbox and the worker's tables (migration 20261130000400), for both
//! backends: the event rows a write adds in its own transaction, the relay's lease and batches,
//! and the worker's idempotent apply.

use sqlx::pool::PoolConnection;
use sqlx::{Postgres, Sqlite};
use uuid::Uuid;

use super::sql::{Backend, SqlStore};
use super::{Database, internal, timed};
use crate::domain::{StoreError, UserId};
use crate::events::{EventType, UserEvent};

/// The PostgreSQL session advisory lock the publishing relay holds (one relay per database).
pub const RELAY_LOCK_KEY: i64 = i64::from_be_bytes(*b"meshrely");

/// The most events [`Database::user_events`] answers (oldest first).
pub const MAX_USER_EVENTS: i64 = 1000;

/// One outbox row waiting for JetStream.
#[derive(Debug, Clone)]
pub struct PendingEvent {
    pub seq: i64,
    pub event_id: Uuid,
    pub event_type: EventType,
    pub payload: Vec<u8>,
}

/// The right to publish the outbox. PostgreSQL: a session advisory lock on one pooled
/// connection, which every relay query then uses (the lock dies with the connection, so a
/// crashed relay's lease ends with its TCP session). SQLite: the process owns the file.
pub enum OutboxLease {
    Postgres(PoolConnection<Postgres>),
    Sqlite(sqlx::SqlitePool),
}

fn to_pending(
    (seq, event_id, event_type, payload): (i64, String, String, String),
) -> Result<PendingEvent, StoreError> {
    Ok(PendingEvent {
        seq,
        event_id: Uuid::parse_str(&event_id)
            .map_err(|_| internal(format!("outbox event id {event_id:?} is not a UUID")))?,
        event_type: EventType::parse(&event_type)
            .ok_or_else(|| internal(format!("outbox event type {event_type:?} is unknown")))?,
        payload: payload.into_bytes(),
    })
}

impl OutboxLease {
    /// The oldest `limit` unpublished events, in commit order per user.
    pub async fn pending(&mut self, limit: i64) -> Result<Vec<PendingEvent>, StoreError> {
        let rows = match self {
            Self::Postgres(conn) => sqlx::query_as::<_, (i64, String, String, String)>(
                "SELECT seq, event_id::text, event_type, payload FROM user_outbox \
                 ORDER BY seq LIMIT $1",
            )
            .bind(limit)
            .fetch_all(&mut **conn)
            .await
            .map_err(super::classify)?,
            Self::Sqlite(pool) => sqlx::query_as::<_, (i64, String, String, String)>(
                "SELECT seq, event_id, event_type, payload FROM user_outbox ORDER BY seq LIMIT ?1",
            )
            .bind(limit)
            .fetch_all(&*pool)
            .await
            .map_err(super::classify)?,
        };
        rows.into_iter().map(to_pending).collect()
    }

    /// Forgets events JetStream has acknowledged.
    pub async fn remove(&mut self, seqs: &[i64]) -> Result<(), StoreError> {
        if seqs.is_empty() {
            return Ok(());
        }
        match self {
            Self::Postgres(conn) => sqlx::query("DELETE FROM user_outbox WHERE seq = ANY($1)")
                .bind(seqs)
                .execute(&mut **conn)
                .await
                .map(drop),
            Self::Sqlite(pool) => {
                let mut tx = pool.begin().await.map_err(super::classify)?;
                for seq in seqs {
                    sqlx::query("DELETE FROM user_outbox WHERE seq = ?1")
                        .bind(seq)
                        .execute(&mut *tx)
                        .await
                        .map_err(super::classify)?;
                }
                tx.commit().await
            }
        }
        .map_err(super::classify)
    }

    /// Gives the lease up (graceful stop); a crash gives it up with the connection.
    pub async fn release(self) {
        if let Self::Postgres(mut conn) = self {
            let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(RELAY_LOCK_KEY)
                .execute(&mut *conn)
                .await;
            if unlocked.is_err() {
                // Never hand a connection that may still hold the lock back to the pool.
                drop(conn.detach());
            }
        }
    }

    /// After a failed query: the connection may be broken or still hold the lock; close it.
    pub fn abandon(self) {
        if let Self::Postgres(conn) = self {
            drop(conn.detach());
        }
    }
}

impl Database {
    /// The publishing lease if no other relay holds it.
    pub async fn try_lead_outbox(&self) -> Result<Option<OutboxLease>, StoreError> {
        match self {
            Self::Postgres(store) => {
                let mut conn = store.pool().acquire().await.map_err(super::classify)?;
                let locked = sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                    .bind(RELAY_LOCK_KEY)
                    .fetch_one(&mut *conn)
                    .await;
                match locked {
                    Ok(true) => Ok(Some(OutboxLease::Postgres(conn))),
                    Ok(false) => Ok(None),
                    Err(error) => {
                        drop(conn.detach());
                        Err(super::classify(error))
                    }
                }
            }
            Self::Sqlite(store) => Ok(Some(OutboxLease::Sqlite(store.pool().clone()))),
        }
    }

    /// Events committed and not yet acknowledged by JetStream.
    pub async fn outbox_backlog(&self) -> Result<i64, StoreError> {
        dispatch!(self, store => store.outbox_backlog())
    }

    /// One user's events, oldest first: the worker's audit trail, plus committed events the
    /// worker has not recorded yet (still in the outbox, e.g. with no broker configured).
    pub async fn user_events(&self, id: UserId) -> Result<Vec<UserEvent>, StoreError> {
        dispatch!(self, store => store.user_events(id))
    }

    /// The worker's effect for events delivered together, each exactly once per `consumer`:
    /// records every event as processed and appends it to the audit trail, all in one
    /// transaction (one commit for the batch, not one per event). Per event, in order: `false`
    /// when `consumer` had already applied it (a redelivery), and nothing changed for it. An
    /// error applies none of them.
    pub async fn apply_events(
        &self,
        consumer: &str,
        events: &[UserEvent],
    ) -> Result<Vec<bool>, StoreError> {
        dispatch!(self, store => store.apply_events(consumer, events))
    }
}

/// The outbox and the worker's tables on one backend (`$db`, a [`Backend`]).
macro_rules! outbox_impl {
    ($db:ty) => {
        impl SqlStore<$db> {
            /// Adds `event` to the outbox, inside the caller's transaction.
            pub(crate) async fn insert_event(
                conn: &mut <$db as sqlx::Database>::Connection,
                event: &UserEvent,
            ) -> sqlx::Result<()> {
                sqlx::query(
                    "INSERT INTO user_outbox (event_id, user_id, event_type, version, payload) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(<$db as Backend>::Id::from(event.event_id))
                .bind(<$db as Backend>::Id::from(event.user_id))
                .bind(event.kind.as_str())
                .bind(event.version)
                .bind(String::from_utf8_lossy(&event.encode()).as_ref())
                .execute(conn)
                .await
                .map(drop)
            }

            async fn outbox_backlog(&self) -> Result<i64, StoreError> {
                let count =
                    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM user_outbox")
                        .fetch_one(&self.pool);
                timed(&self.metrics, "outbox_backlog", count).await
            }

            async fn user_events(&self, id: UserId) -> Result<Vec<UserEvent>, StoreError> {
                let rows = sqlx::query_as::<_, (i64, String)>(
                    "SELECT version, payload FROM user_events WHERE user_id = $1 \
                     UNION ALL \
                     SELECT version, payload FROM user_outbox o WHERE o.user_id = $1 \
                     AND NOT EXISTS (SELECT 1 FROM user_events e WHERE e.event_id = o.event_id) \
                     ORDER BY 1 LIMIT $2",
                )
                .bind(<$db as Backend>::Id::from(id.as_uuid()))
                .bind(MAX_USER_EVENTS)
                .fetch_all(&self.pool);
                timed(&self.metrics, "select_user_events", rows)
                    .await?
                    .into_iter()
                    .map(|(_, payload)| UserEvent::decode(payload.as_bytes()).map_err(internal))
                    .collect()
            }

            async fn apply_events(
                &self,
                consumer: &str,
                events: &[UserEvent],
            ) -> Result<Vec<bool>, StoreError> {
                let work = async {
                    let mut tx = self.pool.begin().await?;
                    if let Some(bounds) = <$db as Backend>::BOUND_APPLY_WAITS {
                        sqlx::query(bounds).execute(&mut *tx).await?;
                    }
                    let mut applied = Vec::with_capacity(events.len());
                    for event in events {
                        let event_id = <$db as Backend>::Id::from(event.event_id);
                        let first = sqlx::query(
                            "INSERT INTO processed_events (consumer, event_id) VALUES ($1, $2) \
                             ON CONFLICT DO NOTHING",
                        )
                        .bind(consumer)
                        .bind(&event_id)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected()
                            == 1;
                        if first {
                            sqlx::query(
                                "INSERT INTO user_events (event_id, user_id, event_type, \
                                 version, payload) VALUES ($1, $2, $3, $4, $5)",
                            )
                            .bind(&event_id)
                            .bind(<$db as Backend>::Id::from(event.user_id))
                            .bind(event.kind.as_str())
                            .bind(event.version)
                            .bind(String::from_utf8_lossy(&event.encode()).as_ref())
                            .execute(&mut *tx)
                            .await?;
                        }
                        applied.push(first);
                    }
                    tx.commit().await?;
                    Ok(applied)
                };
                timed(&self.metrics, "apply_events", work).await
            }
        }
    };
}

outbox_impl!(Postgres);
outbox_impl!(Sqlite);
