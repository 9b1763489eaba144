//! What the cache stores, as bytes, and which of two entries for one user wins. Pure: the Redis
//! script and the in-process cache apply the same rule ([`supersedes`]) to the same bytes.
//!
//! A user entry is `"{version}:{json}"`; a tombstone (the user was deleted) is `"{version}:"`.
//! The version prefix is what the compare-and-set reads, so it stays readable without JSON.
//! Bytes in any other shape (an older release's entries) have no version and lose to anything.

use serde::{Deserialize, Serialize};

use crate::domain::{Age, Email, Name, User, UserId, UserPage, Version};

/// One user's cache entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheEntry {
    User(User),
    /// The user was deleted by the write with this version; fills of older reads lose to it.
    Deleted(Version),
}

impl CacheEntry {
    pub fn version(&self) -> Version {
        match self {
            Self::User(user) => user.version,
            Self::Deleted(version) => *version,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = format!("{}:", self.version().get()).into_bytes();
        if let Self::User(user) = self {
            serde_json::to_writer(&mut bytes, &to_cached(user)).expect("plain struct serialises");
        }
        bytes
    }

    /// `None` for bytes this release cannot read (they are then treated as a miss).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (version, body) = split_version(bytes)?;
        if body.is_empty() {
            return Some(Self::Deleted(version));
        }
        let user = from_cached(serde_json::from_slice(body).ok()?);
        // A body whose version disagrees with its prefix was not written by this code.
        (user.version == version).then_some(Self::User(user))
    }
}

/// The version prefix of stored bytes, if they have one.
pub fn version_of(bytes: &[u8]) -> Option<Version> {
    split_version(bytes).map(|(version, _)| version)
}

fn split_version(bytes: &[u8]) -> Option<(Version, &[u8])> {
    let colon = bytes.iter().position(|&b| b == b':')?;
    let digits = std::str::from_utf8(&bytes[..colon]).ok()?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((Version::new(digits.parse().ok()?), &bytes[colon + 1..]))
}

/// Whether an entry with version `candidate` may replace the stored one. Only a strictly newer
/// version wins: an equal one is the same row state, and an older one is a read or a write-back
/// that lost a race. Unversioned or missing entries lose to anything.
pub fn supersedes(candidate: Version, current: Option<Version>) -> bool {
    current.is_none_or(|current| candidate > current)
}

// === list pages (keyed by generation, so never compared) ===

pub fn encode_page(page: &UserPage) -> Vec<u8> {
    let cached = CachedPage {
        users: page.users.iter().map(to_cached).collect(),
        total: page.total,
    };
    serde_json::to_vec(&cached).expect("plain struct serialises")
}

pub fn decode_page(bytes: &[u8]) -> Option<UserPage> {
    let cached: CachedPage = serde_json::from_slice(bytes).ok()?;
    Some(UserPage {
        users: cached.users.into_iter().map(from_cached).collect(),
        total: cached.total,
    })
}

/// The cached form of a user: JSON with short keys, independent of the wire contract.
#[derive(Serialize, Deserialize)]
struct CachedUser {
    i: uuid::Uuid,
    n: String,
    e: String,
    a: i32,
    c: i64,
    u: i64,
    v: i64,
}

#[derive(Serialize, Deserialize)]
struct CachedPage {
    users: Vec<CachedUser>,
    total: i64,
}

fn to_cached(user: &User) -> CachedUser {
    CachedUser {
        i: user.id.as_uuid(),
        n: user.name.as_str().to_owned(),
        e: user.email.as_str().to_owned(),
        a: user.age.get(),
        c: user.created_at,
        u: user.updated_at,
        v: user.version.get(),
    }
}

fn from_cached(cached: CachedUser) -> User {
    User {
        id: UserId::from(cached.i),
        name: Name::from_trusted(cached.n),
        email: Email::from_trusted(cached.e),
        age: Age::from_trusted(cached.a),
        created_at: cached.c,
        updated_at: cached.u,
        version: Version::new(cached.v),
    }
}

/// A user for the cache's unit tests.
#[cfg(test)]
pub(crate) fn sample_user(version: i64) -> User {
    User {
        id: UserId::new_random(),
        name: Name::parse("Ada").unwrap(),
        email: Email::parse("ada@example.com").unwrap(),
        age: Age::parse(36).unwrap(),
        created_at: 1,
        updated_at: 2,
        version: Version::new(version),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_with_their_version_readable_up_front() {
        let live = CacheEntry::User(sample_user(7));
        let bytes = live.encode();
        assert!(
            bytes.starts_with(b"7:{"),
            "{}",
            String::from_utf8_lossy(&bytes)
        );
        assert_eq!(CacheEntry::decode(&bytes), Some(live));
        assert_eq!(version_of(&bytes), Some(Version::new(7)));

        let tombstone = CacheEntry::Deleted(Version::new(8));
        assert_eq!(tombstone.encode(), b"8:");
        assert_eq!(CacheEntry::decode(b"8:"), Some(tombstone));
    }

    #[test]
    fn foreign_bytes_have_no_version() {
        // The previous release stored bare JSON; garbage and mismatched bodies are misses too.
        for bytes in [
            &br#"{"i":"7f1c6a9e-8d36-4f43-9a8e-0b7c6a6d2f11"}"#[..],
            b"",
            b":{}",
            b"-3:",
            b"x1:",
            b"99999999999999999999999:",
        ] {
            assert_eq!(version_of(bytes), None, "{bytes:?}");
            assert_eq!(CacheEntry::decode(bytes), None, "{bytes:?}");
        }
        let mut mismatched = b"3:".to_vec();
        mismatched.extend_from_slice(&CacheEntry::User(sample_user(4)).encode()[2..]);
        assert_eq!(CacheEntry::decode(&mismatched), None);
    }

    #[test]
    fn only_a_strictly_newer_version_replaces_an_entry() {
        let v = Version::new;
        assert!(supersedes(v(1), None), "anything fills an empty slot");
        assert!(supersedes(v(3), Some(v(2))), "a newer write wins");
        assert!(!supersedes(v(2), Some(v(3))), "an older read loses");
        assert!(
            !supersedes(v(3), Some(v(3))),
            "the same state is left alone"
        );
        // A tombstone is one past the last live version: the last read of the user loses to it.
        let last = v(5);
        assert!(!supersedes(last, Some(last.next())));
        assert!(supersedes(last.next(), Some(last)));
    }

    #[test]
    fn pages_round_trip() {
        let page = UserPage {
            users: vec![sample_user(2)],
            total: 7,
        };
        assert_eq!(decode_page(&encode_page(&page)), Some(page));
        assert_eq!(decode_page(b"not json"), None);
    }
}
