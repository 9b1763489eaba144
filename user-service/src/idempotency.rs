//! `Idempotency-Key` on `CreateUser` (gRPC metadata `idempotency-key`; the edge forwards the
//! REST header as it). Pure: the key's rules and the request fingerprint; the stores keep
//! claimed keys ([`crate::store::Database::create_idempotent`]).
//!
//! The same key with the same request answers the original response (the same user, as it was
//! created); the same key with a different request is refused (`INVALID_ARGUMENT`); concurrent
//! duplicates create one user (the key is claimed by a unique row in the creating transaction,
//! so a duplicate waits for that transaction and then reads its outcome). Keys expire.

use std::future::Future;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::cache::{CacheEntry, CachedStore};
use crate::domain::{FieldViolation, NewUser, StoreError, User};

/// The metadata key (the REST header `Idempotency-Key`, lower-cased by HTTP/2).
pub const METADATA_KEY: &str = "idempotency-key";

/// A client-chosen key: 1 to 255 visible ASCII characters (a UUID is typical).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;

    pub fn parse(raw: &[u8]) -> Result<Self, FieldViolation> {
        if raw.is_empty() {
            return Err(FieldViolation::new(METADATA_KEY, "must not be empty"));
        }
        if raw.len() > Self::MAX_LEN {
            return Err(FieldViolation::new(
                METADATA_KEY,
                "must be at most 255 characters",
            ));
        }
        if !raw.iter().all(|byte| byte.is_ascii_graphic()) {
            return Err(FieldViolation::new(
                METADATA_KEY,
                "must be visible ASCII characters (no spaces or control characters)",
            ));
        }
        Ok(Self(String::from_utf8_lossy(raw).into_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A key with the fingerprint of the request it was first used with, and how long it lives.
#[derive(Debug, Clone)]
pub struct Claim {
    pub key: IdempotencyKey,
    pub fingerprint: String,
    pub ttl: Duration,
}

/// How long a key is remembered unless configured (`IDEMPOTENCY_TTL_SECS`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 60 * 60);

impl Claim {
    /// The fingerprint covers the request as sent (before normalisation), so only a byte-equal
    /// retry counts as "the same request".
    pub fn new(key: IdempotencyKey, ttl: Duration, name: &str, email: &str, age: i32) -> Self {
        let mut hash = Sha256::new();
        for part in [name.as_bytes(), email.as_bytes(), &age.to_be_bytes()] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        Self {
            key,
            fingerprint: hex::encode(hash.finalize()),
            ttl,
        }
    }
}

/// What an idempotent create did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The key was new (or expired): the user was created now.
    Created(User),
    /// The key was used before with the same request: the user as that call created it.
    Replayed(User),
    /// The key was used before with a different request.
    Conflict,
}

/// `CreateUser` under a claimed key. Implemented by the database and passed through the cache.
pub trait IdempotentCreate: Send + Sync + 'static {
    fn create_idempotent(
        &self,
        user: NewUser,
        claim: &Claim,
    ) -> impl Future<Output = Result<Outcome, StoreError>> + Send;
}

/// Creates through the database, then updates the cache like a plain create does.
impl<S: IdempotentCreate> IdempotentCreate for CachedStore<S> {
    async fn create_idempotent(&self, user: NewUser, claim: &Claim) -> Result<Outcome, StoreError> {
        let outcome = self.inner().create_idempotent(user, claim).await?;
        if let Outcome::Created(created) = &outcome {
            self.warm(created.id, CacheEntry::User(created.clone()))
                .await;
        }
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_bounded_visible_ascii() {
        assert!(IdempotencyKey::parse(b"0b7e2c8e-4c1e-4d0e-9d43-1f1f0c3e0a11").is_ok());
        assert_eq!(
            IdempotencyKey::parse(b"").unwrap_err().description,
            "must not be empty"
        );
        assert!(IdempotencyKey::parse(&[b'k'; 255]).is_ok());
        assert_eq!(
            IdempotencyKey::parse(&[b'k'; 256]).unwrap_err().description,
            "must be at most 255 characters"
        );
        for bad in [&b"has space"[..], b"tab\there", "caf\u{e9}".as_bytes()] {
            let violation = IdempotencyKey::parse(bad).unwrap_err();
            assert_eq!(violation.field, "idempotency-key");
            assert!(violation.description.contains("visible ASCII"));
        }
    }

    #[test]
    fn the_fingerprint_tells_requests_apart() {
        let print = |name: &str, email: &str, age: i32| {
            let key = IdempotencyKey::parse(b"k").unwrap();
            Claim::new(key, DEFAULT_TTL, name, email, age).fingerprint
        };
        let a = print("Ada", "ada@example.com", 36);
        assert_eq!(a, print("Ada", "ada@example.com", 36));
        assert_ne!(a, print("Ada", "ada@example.com", 37));
        assert_ne!(a, print("Ada ", "ada@example.com", 36));
        // Length prefixes: moving a character between fields changes the fingerprint.
        assert_ne!(print("ab", "c", 1), print("a", "bc", 1));
    }
}
