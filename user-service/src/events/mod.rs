//! User change events: what the outbox stores and the relay publishes (`user.created`,
//! `user.updated`, `user.deleted`), the broker names, and the trace context a write carries.
//!
//! Pure: the stores write [`UserEvent::encode`]'s bytes in the write's own transaction
//! ([`crate::store`]), the [`relay`] publishes them unchanged, the [`worker`] decodes them.

use std::future::Future;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::cache::CachedStore;
use crate::domain::{Age, Email, Name, StoreError, User, UserId, Version};
use crate::store::Database;

pub mod live;
pub mod relay;
pub mod worker;

/// The JetStream stream holding every user event.
pub const STREAM: &str = "USERS";
/// Subjects of [`STREAM`]: `users.created`, `users.updated`, `users.deleted`.
pub const SUBJECTS: &str = "users.>";

/// Where `ListUserEvents` reads a user's events (the database: audit trail and outbox).
pub trait EventLog: Send + Sync + 'static {
    fn user_events(
        &self,
        id: UserId,
    ) -> impl Future<Output = Result<Vec<UserEvent>, StoreError>> + Send;
}

impl EventLog for Database {
    async fn user_events(&self, id: UserId) -> Result<Vec<UserEvent>, StoreError> {
        Database::user_events(self, id).await
    }
}

/// Events are not cached: read them from the database under the cache.
impl<S: EventLog> EventLog for CachedStore<S> {
    async fn user_events(&self, id: UserId) -> Result<Vec<UserEvent>, StoreError> {
        self.inner().user_events(id).await
    }
}

/// Which write an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventType {
    #[serde(rename = "user.created")]
    Created,
    #[serde(rename = "user.updated")]
    Updated,
    #[serde(rename = "user.deleted")]
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "user.created",
            Self::Updated => "user.updated",
            Self::Deleted => "user.deleted",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [Self::Created, Self::Updated, Self::Deleted]
            .into_iter()
            .find(|kind| kind.as_str() == raw)
    }

    /// The JetStream subject: `users.<type>`.
    pub fn subject(self) -> &'static str {
        match self {
            Self::Created => "users.created",
            Self::Updated => "users.updated",
            Self::Deleted => "users.deleted",
        }
    }
}

/// The user as it was right after the write (absent for a delete).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSnapshot {
    pub id: Uuid,
    pub name: String,
    pub email: String,
    pub age: i32,
    pub created_at: i64,
    pub updated_at: i64,
}

/// One committed write of one user. `version` is the user's version after the write (the
/// delete's is one past the last stored one), so per user the events are totally ordered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEvent {
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub user_id: Uuid,
    pub version: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserSnapshot>,
    /// Unix milliseconds at the service when the write was made.
    pub occurred_at_ms: i64,
    /// W3C `traceparent` of the request that made the write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_parent: Option<String>,
}

impl UserEvent {
    fn new(kind: EventType, user_id: UserId, version: Version, user: Option<&User>) -> Self {
        Self {
            event_id: Uuid::new_v4(),
            kind,
            user_id: user_id.as_uuid(),
            version: version.get(),
            user: user.map(snapshot),
            occurred_at_ms: now_ms(),
            trace_parent: current_trace_parent(),
        }
    }

    pub fn created(user: &User) -> Self {
        Self::new(EventType::Created, user.id, user.version, Some(user))
    }

    pub fn updated(user: &User) -> Self {
        Self::new(EventType::Updated, user.id, user.version, Some(user))
    }

    pub fn deleted(id: UserId, version: Version) -> Self {
        Self::new(EventType::Deleted, id, version, None)
    }

    /// The bytes stored in the outbox and published (JSON).
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("plain struct serialises")
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The user of the snapshot, as the cache stores it.
    pub fn snapshot_user(&self) -> Option<User> {
        self.user.as_ref().map(|snapshot| User {
            id: UserId::from(snapshot.id),
            name: Name::from_trusted(snapshot.name.clone()),
            email: Email::from_trusted(snapshot.email.clone()),
            age: Age::from_trusted(snapshot.age),
            created_at: snapshot.created_at,
            updated_at: snapshot.updated_at,
            version: Version::new(self.version),
        })
    }
}

fn snapshot(user: &User) -> UserSnapshot {
    UserSnapshot {
        id: user.id.as_uuid(),
        name: user.name.as_str().to_owned(),
        email: user.email.as_str().to_owned(),
        age: user.age.get(),
        created_at: user.created_at,
        updated_at: user.updated_at,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

tokio::task_local! {
    static TRACE_PARENT: Option<String>;
}

/// Runs `work` (one RPC) with the request's `traceparent`, which the events its writes record
/// carry. A task-local rather than a store argument: the storage port stays trace-agnostic.
pub async fn with_trace_parent<F: Future>(trace_parent: Option<String>, work: F) -> F::Output {
    TRACE_PARENT.scope(trace_parent, work).await
}

fn current_trace_parent() -> Option<String> {
    TRACE_PARENT.try_with(Clone::clone).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(version: i64) -> User {
        User {
            id: UserId::new_random(),
            name: Name::parse("Ada").unwrap(),
            email: Email::parse("ada@example.com").unwrap(),
            age: Age::parse(36).unwrap(),
            created_at: 1_700_000_000,
            updated_at: 1_700_000_100,
            version: Version::new(version),
        }
    }

    #[test]
    fn an_event_round_trips_through_its_bytes() {
        let event = UserEvent::updated(&user(3));
        let decoded = UserEvent::decode(&event.encode()).unwrap();
        assert_eq!(decoded, event);
        assert_eq!(decoded.snapshot_user().unwrap().version, Version::new(3));
    }

    #[test]
    fn the_wire_names_are_the_documented_ones() {
        let event = UserEvent::created(&user(1));
        let json: serde_json::Value = serde_json::from_slice(&event.encode()).unwrap();
        assert_eq!(json["type"], "user.created");
        assert_eq!(json["version"], 1);
        assert_eq!(json["user"]["email"], "ada@example.com");
        assert_eq!(EventType::Created.subject(), "users.created");
        assert_eq!(EventType::parse("user.deleted"), Some(EventType::Deleted));
        assert_eq!(EventType::parse("user.renamed"), None);
    }

    #[test]
    fn a_delete_has_no_snapshot() {
        let event = UserEvent::deleted(UserId::new_random(), Version::new(4));
        let json: serde_json::Value = serde_json::from_slice(&event.encode()).unwrap();
        assert!(json.get("user").is_none());
        assert_eq!(json["type"], "user.deleted");
        assert!(
            UserEvent::decode(&event.encode())
                .unwrap()
                .snapshot_user()
                .is_none()
        );
    }

    #[tokio::test]
    async fn events_carry_the_trace_parent_of_their_request() {
        let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned();
        let event =
            with_trace_parent(Some(parent.clone()), async { UserEvent::created(&user(1)) }).await;
        assert_eq!(event.trace_parent, Some(parent));
        assert_eq!(UserEvent::created(&user(1)).trace_parent, None);
    }
}
