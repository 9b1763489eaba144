//! The user-service's domain core: users, the parsed values they are made of, and the storage
//! port. The service re-exports it as `user_service::domain`.
//!
//! **Architecture invariant:** nothing here knows about tonic, prost, sqlx or redis: this crate
//! does not depend on them, so the compiler keeps it that way. The gRPC adapter converts wire
//! messages into these types, the stores persist them.
#![forbid(unsafe_code)]

use std::fmt;
use std::future::Future;

use uuid::Uuid;

/// A stored user. Timestamps are unix seconds, kept by the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: UserId,
    pub name: Name,
    pub email: Email,
    pub age: Age,
    pub created_at: i64,
    pub updated_at: i64,
    pub version: Version,
}

/// How often one user has been written: [`Version::FIRST`] when created, one more on every
/// update, and one more again for the delete. The database keeps it (a trigger), so versions
/// follow commit order, which `updated_at` does not (it is the transaction's start time). The
/// cache orders its entries by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(i64);

impl Version {
    pub const FIRST: Self = Self(1);

    pub fn new(raw: i64) -> Self {
        Self(raw)
    }

    pub fn get(self) -> i64 {
        self.0
    }

    /// The version of the write after this one (a delete's, for its tombstone).
    pub fn next(self) -> Self {
        Self(self.0.saturating_add(1))
    }
}

/// A user identifier (a UUID, assigned by the service on create).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserId(Uuid);

impl UserId {
    pub fn new_random() -> Self {
        Self(Uuid::new_v4())
    }

    pub fn parse(raw: &str) -> Result<Self, FieldViolation> {
        Uuid::parse_str(raw.trim())
            .map(Self)
            .map_err(|_| FieldViolation::new("id", "must be a UUID"))
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl From<Uuid> for UserId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A display name: 1 to 100 characters once surrounding whitespace is trimmed, with no control
/// characters (Unicode category Cc: U+0000–U+001F, U+007F–U+009F) left inside. PostgreSQL cannot
/// store NUL at all, and a tab or a line break inside a name is a client bug, not a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name(String);

impl Name {
    pub const MAX_CHARS: usize = 100;

    pub fn parse(raw: &str) -> Result<Self, FieldViolation> {
        let trimmed = raw.trim();
        let chars = trimmed.chars().count();
        if chars == 0 {
            Err(FieldViolation::new("name", "must not be empty"))
        } else if trimmed.chars().any(char::is_control) {
            Err(FieldViolation::new(
                "name",
                "must not contain control characters",
            ))
        } else if chars > Self::MAX_CHARS {
            Err(FieldViolation::new(
                "name",
                "must be at most 100 characters",
            ))
        } else {
            Ok(Self(trimmed.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A syntactically valid email address (RFC 5322 addr-spec as checked by `email_address`), in
/// its stored form: surrounding whitespace trimmed and the domain lower-cased (ASCII letters).
///
/// The local part keeps the case it was given: RFC 5321 lets a mail server treat it
/// case-sensitively, so mail must go out exactly as the user typed it. But no mainstream provider
/// does, and two accounts that differ only in letter case are the same person (or an
/// impersonation), so *identity* ignores case in the whole address ([`email_identity`]); the
/// databases enforce it with a unique index on `lower(email)` (`users_email_lower_key`). Only
/// ASCII letters are folded, the same in Rust, PostgreSQL (`lower(… COLLATE "C")`) and SQLite
/// (`lower()`), so the rule never depends on a server's locale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(raw: &str) -> Result<Self, FieldViolation> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(FieldViolation::new("email", "must not be empty"));
        }
        // `is_valid` accepts display-name forms ("Ada <a@b.c>"); a stored address must be bare.
        let bare = !trimmed.contains(['<', '>', ' ']) && !trimmed.chars().any(char::is_control);
        if bare && email_address::EmailAddress::is_valid(trimmed) {
            Ok(Self(normalise_domain(trimmed)))
        } else {
            Err(FieldViolation::new(
                "email",
                "must be a valid email address",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The identity of a stored address (see [`Email`]): spaces trimmed, ASCII letters lower-cased.
/// The databases compute the same (`lower(trim(email))`) to order rows for the repair pass.
pub fn email_identity(stored: &str) -> String {
    stored.trim_matches(' ').to_ascii_lowercase()
}

/// `local@Domain.Example` → `local@domain.example`. The domain starts after the last `@` (a
/// quoted local part may contain one).
fn normalise_domain(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => format!("{local}@{}", domain.to_ascii_lowercase()),
        None => address.to_owned(),
    }
}

/// An age in whole years, 1 to 149.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Age(i32);

impl Age {
    pub fn parse(raw: i32) -> Result<Self, FieldViolation> {
        if (1..=149).contains(&raw) {
            Ok(Self(raw))
        } else {
            Err(FieldViolation::new("age", "must be between 1 and 149"))
        }
    }

    pub fn get(&self) -> i32 {
        self.0
    }
}

// Stores and caches read values back from what they wrote, whose constraints mirror the
// parsers above; these constructors are for those trusted rows only (public because the
// adapters live in the service crate), never for input.
impl Name {
    pub fn from_trusted(raw: String) -> Self {
        Self(raw)
    }
}
impl Email {
    pub fn from_trusted(raw: String) -> Self {
        Self(raw)
    }
}
impl Age {
    pub fn from_trusted(raw: i32) -> Self {
        Self(raw)
    }
}

/// One invalid request field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: &'static str,
    pub description: &'static str,
}

impl FieldViolation {
    pub fn new(field: &'static str, description: &'static str) -> Self {
        Self { field, description }
    }
}

/// Every violation found in one request (all fields are checked, not just the first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid request: {}", describe(.0))]
pub struct Invalid(pub Vec<FieldViolation>);

fn describe(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|v| format!("{} {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Collects the outcome of parsing several fields into one `Invalid` error.
#[derive(Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn check<T>(&mut self, parsed: Result<T, FieldViolation>) -> Option<T> {
        parsed.map_err(|v| self.0.push(v)).ok()
    }

    pub fn finish<T>(self, value: impl FnOnce() -> Option<T>) -> Result<T, Invalid> {
        if self.0.is_empty() {
            value().ok_or_else(|| Invalid(Vec::new()))
        } else {
            Err(Invalid(self.0))
        }
    }
}

/// What `CreateUser` stores.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: UserId,
    pub name: Name,
    pub email: Email,
    pub age: Age,
}

impl NewUser {
    pub fn parse(name: &str, email: &str, age: i32) -> Result<Self, Invalid> {
        let mut violations = Violations::default();
        let name = violations.check(Name::parse(name));
        let email = violations.check(Email::parse(email));
        let age = violations.check(Age::parse(age));
        violations.finish(|| {
            Some(Self {
                id: UserId::new_random(),
                name: name?,
                email: email?,
                age: age?,
            })
        })
    }
}

/// What `UpdateUser` changes: `None` keeps the stored value (the legacy service's rule is that
/// an empty string or a zero age means "unchanged").
#[derive(Debug, Clone, Default)]
pub struct UserChanges {
    pub name: Option<Name>,
    pub email: Option<Email>,
    pub age: Option<Age>,
}

impl UserChanges {
    pub fn parse(name: &str, email: &str, age: i32) -> Result<Self, Invalid> {
        let mut violations = Violations::default();
        let name = if name.is_empty() {
            None
        } else {
            violations.check(Name::parse(name))
        };
        let email = if email.is_empty() {
            None
        } else {
            violations.check(Email::parse(email))
        };
        let age = if age == 0 {
            None
        } else {
            violations.check(Age::parse(age))
        };
        violations.finish(|| Some(Self { name, email, age }))
    }

    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.email.is_none() && self.age.is_none()
    }
}

/// One page of `ListUsers`: page ≥ 1, limit clamped to 1..=100 (10 when unset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PageRequest {
    page: u32,
    limit: u32,
}

impl PageRequest {
    pub const DEFAULT_LIMIT: u32 = 10;
    pub const MAX_LIMIT: u32 = 100;

    /// Lenient like the replaced service: out-of-range values are corrected, never rejected.
    pub fn new(page: i32, limit: i32) -> Self {
        let page = u32::try_from(page).unwrap_or(0).max(1);
        let limit = match u32::try_from(limit).unwrap_or(0) {
            0 => Self::DEFAULT_LIMIT,
            n => n.min(Self::MAX_LIMIT),
        };
        Self { page, limit }
    }

    pub fn page(&self) -> u32 {
        self.page
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    pub fn offset(&self) -> u64 {
        u64::from(self.page - 1) * u64::from(self.limit)
    }
}

/// How many users a cursor page (ListUsers v2) holds: 1 to 100, 10 when unset (0); larger
/// values are served as 100 (a client asking for more simply pages more), negative ones are
/// refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PageSize(u32);

impl PageSize {
    pub fn parse(raw: i32) -> Result<Self, FieldViolation> {
        match u32::try_from(raw) {
            Err(_) => Err(FieldViolation::new("page_size", "must not be negative")),
            Ok(0) => Ok(Self(PageRequest::DEFAULT_LIMIT)),
            Ok(n) => Ok(Self(n.min(PageRequest::MAX_LIMIT))),
        }
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

/// Where a cursor page resumes: the list-order key of the last user the previous page returned
/// (users strictly after it in the order come next). The store defines both parts (PostgreSQL:
/// `created_at` in microseconds and the id; SQLite: `created_at` and the row's `seq`); outside
/// the store it is opaque, and clients only ever see it signed (the page token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListPosition {
    pub created: i64,
    pub tiebreak: u128,
}

/// One cursor page: users newest first, where the next page resumes (`None`: this is the last
/// page), and the number of users stored when the page was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorPage {
    pub users: Vec<User>,
    pub next: Option<ListPosition>,
    pub total: i64,
}

/// Cursor (keyset) pages of the list order. Unlike offset pages, a walk over them sees every
/// user that existed throughout exactly once, whatever is created or deleted between pages.
pub trait CursorPages: Send + Sync + 'static {
    /// Up to `size` users after `after` (from the start when `None`).
    fn list_after(
        &self,
        after: Option<ListPosition>,
        size: PageSize,
    ) -> impl Future<Output = Result<CursorPage, StoreError>> + Send;
    /// The secret page tokens are signed with. Kept in the database, so every replica accepts
    /// the tokens any other issued, also across restarts.
    fn page_token_key(&self) -> impl Future<Output = Result<Vec<u8>, StoreError>> + Send;
}

/// A page of users, newest first, with the total number of users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPage {
    pub users: Vec<User>,
    pub total: i64,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("user not found")]
    NotFound,
    /// The database's unique constraint on the email rejected the write.
    #[error("a user with this email already exists")]
    EmailTaken,
    /// The database could not be reached (connection refused, pool timeout, shutdown).
    #[error("storage unavailable")]
    Unavailable(#[source] BoxError),
    /// Anything else; the cause is logged, never sent to clients.
    #[error("storage error")]
    Internal(#[source] BoxError),
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The storage port. Implemented by the Postgres and SQLite stores and by the cache decorator.
pub trait UserStore: Send + Sync + 'static {
    fn create(&self, user: NewUser) -> impl Future<Output = Result<User, StoreError>> + Send;
    fn get(&self, id: UserId) -> impl Future<Output = Result<User, StoreError>> + Send;
    fn update(
        &self,
        id: UserId,
        changes: UserChanges,
    ) -> impl Future<Output = Result<User, StoreError>> + Send;
    /// Deletes the user; answers the delete's version (one past the last stored one).
    fn delete(&self, id: UserId) -> impl Future<Output = Result<Version, StoreError>> + Send;
    fn list(&self, page: PageRequest) -> impl Future<Output = Result<UserPage, StoreError>> + Send;
    /// Succeeds while the database answers (the health probe).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_is_trimmed_and_bounded() {
        assert_eq!(Name::parse("  Ada ").unwrap().as_str(), "Ada");
        assert!(Name::parse("   ").is_err());
        assert!(
            Name::parse(&"é".repeat(100)).is_ok(),
            "counts characters, not bytes"
        );
        assert!(Name::parse(&"a".repeat(101)).is_err());
    }

    #[test]
    fn control_characters_inside_a_name_are_refused() {
        for bad in [
            "a\u{0}b",
            "Ada\tLovelace",
            "line\nbreak",
            "del\u{7f}",
            "c1\u{85}x",
            "\u{1}",
        ] {
            let violation = Name::parse(bad).unwrap_err();
            assert_eq!(violation.field, "name", "{bad:?}");
            assert!(violation.description.contains("control"), "{bad:?}");
        }
        // Surrounding whitespace (tabs and line breaks included) is trimmed, not refused.
        assert_eq!(Name::parse("\tAda\r\n").unwrap().as_str(), "Ada");
        assert!(
            Name::parse("Zoë – d’Arc 李").is_ok(),
            "non-ASCII text is fine"
        );
    }

    #[test]
    fn email_domain_is_lower_cased_and_the_local_part_kept() {
        let parsed = |raw: &str| Email::parse(raw).unwrap().as_str().to_owned();
        assert_eq!(parsed("d@EXAMPLE.COM"), "d@example.com");
        assert_eq!(parsed(" D.Smith@Example.Com "), "D.Smith@example.com");
        assert_eq!(parsed("\"a@b\"@X.org"), "\"a@b\"@x.org");
        // The three spellings of issue 12 are one identity.
        let identities: std::collections::HashSet<_> = [
            "d@example.com",
            "d@EXAMPLE.COM",
            "d@Example.Com",
            "D@example.com",
        ]
        .iter()
        .map(|raw| email_identity(Email::parse(raw).unwrap().as_str()))
        .collect();
        assert_eq!(identities.len(), 1);
        // ASCII only: the databases fold the same letters whatever their locale.
        assert_ne!(email_identity("É@x.org"), email_identity("é@x.org"));
        assert!(Email::parse("a\u{0}@example.com").is_err());
        assert!(Email::parse("a\tb@example.com").is_err());
    }

    #[test]
    fn email_must_be_a_bare_address() {
        assert!(Email::parse("ada@example.com").is_ok());
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "Ada <ada@example.com>",
            "a b@c.d",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn age_is_between_1_and_149() {
        assert!(Age::parse(0).is_err());
        assert!(Age::parse(1).is_ok());
        assert!(Age::parse(149).is_ok());
        assert!(Age::parse(150).is_err());
        assert!(Age::parse(-3).is_err());
    }

    #[test]
    fn new_user_reports_every_invalid_field() {
        let err = NewUser::parse("", "nope", 200).unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|v| v.field).collect();
        assert_eq!(fields, ["name", "email", "age"]);
    }

    #[test]
    fn empty_update_fields_keep_stored_values() {
        let changes = UserChanges::parse("", "", 0).unwrap();
        assert!(changes.is_empty());
        let changes = UserChanges::parse("Bob", "", 0).unwrap();
        assert_eq!(changes.name.unwrap().as_str(), "Bob");
        assert!(UserChanges::parse("", "", -1).is_err());
    }

    #[test]
    fn page_request_clamps_like_the_legacy_service() {
        assert_eq!(PageRequest::new(0, 0), PageRequest::new(1, 10));
        assert_eq!(PageRequest::new(-5, -5), PageRequest::new(1, 10));
        assert_eq!(PageRequest::new(3, 1000).limit(), 100);
        assert_eq!(PageRequest::new(3, 20).offset(), 40);
    }

    #[test]
    fn page_size_defaults_caps_and_refuses_negatives() {
        assert_eq!(PageSize::parse(0).unwrap().get(), 10);
        assert_eq!(PageSize::parse(1).unwrap().get(), 1);
        assert_eq!(PageSize::parse(100).unwrap().get(), 100);
        assert_eq!(PageSize::parse(5000).unwrap().get(), 100);
        assert_eq!(PageSize::parse(-1).unwrap_err().field, "page_size");
    }

    #[test]
    fn malformed_id_is_a_field_violation() {
        assert_eq!(UserId::parse("42").unwrap_err().field, "id");
        assert!(UserId::parse("7f1c6a9e-8d36-4f43-9a8e-0b7c6a6d2f11").is_ok());
    }
}
