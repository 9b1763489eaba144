//! The repair pass that runs before the contract migrations add the input rules to the schema
//! (`users_name_length`, `users_name_characters`, `users_email_lower_key`): stored rows that break
//! a rule are changed by the documented rules below, each change reported, none silent.
//! Pure: the stores stream rows in and apply what comes out (`store::schema`).
//!
//! Rules (also in `migrations/README.md`):
//! - **name**: surrounding whitespace is trimmed; each control character inside becomes a space;
//!   an empty name becomes the local part of the email (or `unnamed` when that is empty too); a
//!   name longer than 100 characters keeps its first 100 (then trailing whitespace is trimmed).
//! - **email**: surrounding whitespace is trimmed and the domain lower-cased. Addresses equal but
//!   for letter case: the oldest user (`created_at`, then `id`) keeps the address; each other one
//!   is re-addressed to `<user id>@duplicate.invalid` (RFC 2606's never-deliverable TLD), its old
//!   address and the keeper's id in the report, for an operator to merge or correct.
//!   An address that is not valid at all is reported and kept as stored: no rule can guess it.

use crate::domain::{Email, Name, UserId, email_identity};

/// A stored row as the repair pass reads it. Rows must arrive ordered by the identity of their
/// email (`lower(trim(email))`), then oldest first: duplicates are then adjacent and the first of
/// them is the oldest, so the pass needs no memory beyond the current group.
#[derive(Debug, Clone)]
pub struct StoredRow {
    pub id: UserId,
    pub name: String,
    pub email: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Name,
    Email,
}

impl Field {
    /// The column (and the `field` value in `users_repair_log`).
    pub fn column(self) -> &'static str {
        match self {
            Self::Name => "name",
            Self::Email => "email",
        }
    }
}

/// One field that breaks a rule, and what the repair does about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    pub user_id: UserId,
    pub field: Field,
    pub problem: String,
    pub old_value: String,
    /// `None`: reported only, the stored value is kept.
    pub new_value: Option<String>,
}

/// The domain of re-addressed duplicates.
pub const PARKING_DOMAIN: &str = "duplicate.invalid";

/// Walks rows in identity order (see [`StoredRow`]) and returns the repairs each one needs.
#[derive(Debug, Default)]
pub struct Planner {
    /// Identity of the current group of equal addresses, and the user who keeps it.
    group: Option<(String, UserId)>,
}

impl Planner {
    pub fn row(&mut self, row: &StoredRow) -> Vec<Repair> {
        let mut repairs = Vec::new();
        if let Some((value, problems)) = repair_name(&row.name, &row.email) {
            repairs.push(Repair {
                user_id: row.id,
                field: Field::Name,
                problem: problems.join(", "),
                old_value: row.name.clone(),
                new_value: Some(value),
            });
        }
        let identity = email_identity(&row.email);
        match &self.group {
            Some((current, keeper)) if *current == identity => repairs.push(Repair {
                user_id: row.id,
                field: Field::Email,
                problem: format!(
                    "same address as user {keeper} apart from letter case (the oldest user keeps it)"
                ),
                old_value: row.email.clone(),
                new_value: Some(format!("{}@{PARKING_DOMAIN}", row.id)),
            }),
            _ => {
                self.group = Some((identity, row.id));
                repairs.extend(repair_kept_email(row));
            }
        }
        repairs
    }
}

/// The address a group's keeper ends up with.
fn repair_kept_email(row: &StoredRow) -> Option<Repair> {
    let (problem, new_value) = match Email::parse(&row.email) {
        Ok(email) if email.as_str() == row.email => return None,
        Ok(email) => {
            let mut problems = Vec::new();
            if row.email.trim() != row.email {
                problems.push("surrounding whitespace");
            }
            if email.as_str() != row.email.trim() {
                problems.push("domain not in lower case");
            }
            (problems.join(", "), Some(email.as_str().to_owned()))
        }
        Err(_) => (
            "not a valid email address (kept as stored: correct it by hand)".to_owned(),
            None,
        ),
    };
    Some(Repair {
        user_id: row.id,
        field: Field::Email,
        problem,
        old_value: row.email.clone(),
        new_value,
    })
}

/// The repaired name and the problems found, or `None` when `stored` already follows the rules.
pub fn repair_name(stored: &str, email: &str) -> Option<(String, Vec<&'static str>)> {
    if Name::parse(stored).is_ok_and(|name| name.as_str() == stored) {
        return None;
    }
    let mut problems = Vec::new();
    let trimmed = stored.trim();
    if trimmed != stored {
        problems.push("surrounding whitespace");
    }
    if trimmed.chars().any(char::is_control) {
        problems.push("control characters");
    }
    let mut value = without_controls(trimmed);
    if value.is_empty() {
        problems.push("empty");
        let local = email.rsplit_once('@').map_or(email, |(local, _)| local);
        value = without_controls(local);
        if value.is_empty() {
            value = "unnamed".to_owned();
        }
    }
    if value.chars().count() > Name::MAX_CHARS {
        if !problems.contains(&"empty") {
            problems.push("longer than 100 characters");
        }
        value = value.chars().take(Name::MAX_CHARS).collect::<String>();
        value.truncate(value.trim_end().len());
    }
    Some((value, problems))
}

/// Each control character becomes a space; the result is trimmed.
fn without_controls(text: &str) -> String {
    let spaced: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    spaced.trim().to_owned()
}

/// Orders repairs so that no intermediate state breaks the exact unique constraint on email that
/// is still in place while they are applied: addresses are freed (re-addressed duplicates) before
/// a keeper is normalised onto the spelling a duplicate held.
pub fn application_order(repairs: &mut [Repair]) {
    repairs.sort_by_key(|repair| match repair.field {
        Field::Email
            if repair
                .new_value
                .as_deref()
                .is_some_and(|value| value.ends_with(PARKING_DOMAIN)) =>
        {
            0
        }
        Field::Email => 1,
        Field::Name => 2,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, email: &str) -> StoredRow {
        StoredRow {
            id: UserId::new_random(),
            name: name.to_owned(),
            email: email.to_owned(),
        }
    }

    fn new_value(repairs: &[Repair], field: Field) -> Option<&str> {
        repairs
            .iter()
            .find(|repair| repair.field == field)
            .and_then(|repair| repair.new_value.as_deref())
    }

    #[test]
    fn valid_rows_need_no_repair() {
        let mut planner = Planner::default();
        assert!(
            planner
                .row(&row("Ada Lovelace", "ada@example.com"))
                .is_empty()
        );
        assert!(
            planner.row(&row("Bob", "Bob@example.com")).is_empty(),
            "the local part keeps its case"
        );
        assert_eq!(repair_name(&"é".repeat(100), "a@b.c"), None);
    }

    #[test]
    fn names_are_repaired_by_the_documented_rules() {
        let long = format!("{} {}", "x".repeat(99), "y".repeat(50));
        let cases = [
            (" Bob ", "Bob", vec!["surrounding whitespace"]),
            ("Ada\tLovelace", "Ada Lovelace", vec!["control characters"]),
            ("a\u{1}\u{85}b\u{7f}", "a  b", vec!["control characters"]),
            ("", "grace", vec!["empty"]),
            (
                "  \u{1} ",
                "grace",
                vec!["surrounding whitespace", "control characters", "empty"],
            ),
            (
                long.as_str(),
                &"x".repeat(99),
                vec!["longer than 100 characters"],
            ),
        ];
        for (stored, expected, problems) in cases {
            let (value, found) = repair_name(stored, "grace@example.com").unwrap();
            assert_eq!((value.as_str(), found), (expected, problems), "{stored:?}");
            assert!(Name::parse(&value).is_ok_and(|name| name.as_str() == value));
        }
        let (value, _) = repair_name("", "@example.com").unwrap();
        assert_eq!(value, "unnamed");
        let (value, problems) =
            repair_name("", &format!("{}@example.com", "l".repeat(120))).unwrap();
        assert_eq!((value.chars().count(), problems), (100, vec!["empty"]));
    }

    #[test]
    fn case_duplicates_keep_the_first_and_park_the_others() {
        let mut planner = Planner::default();
        let oldest = row("D", "d@EXAMPLE.COM");
        let kept = planner.row(&oldest);
        assert_eq!(new_value(&kept, Field::Email), Some("d@example.com"));
        assert_eq!(kept[0].problem, "domain not in lower case");
        for spelling in ["d@example.com", "D@Example.Com", " d@example.com"] {
            let duplicate = row("D", spelling);
            let parked = planner.row(&duplicate);
            let expected = format!("{}@duplicate.invalid", duplicate.id);
            assert_eq!(new_value(&parked, Field::Email), Some(expected.as_str()));
            assert!(
                parked[0].problem.contains(&oldest.id.to_string()),
                "{parked:?}"
            );
            assert!(Email::parse(&expected).is_ok());
        }
        // A new identity starts a new group.
        assert!(planner.row(&row("E", "e@example.com")).is_empty());
    }

    #[test]
    fn invalid_addresses_are_reported_and_kept() {
        let mut planner = Planner::default();
        let repairs = planner.row(&row("N", "not-an-email"));
        assert_eq!(repairs.len(), 1);
        assert_eq!(repairs[0].new_value, None);
        assert!(repairs[0].problem.starts_with("not a valid email address"));
        let repairs = planner.row(&row("N", " n@Example.org"));
        assert_eq!(
            repairs[0].problem,
            "surrounding whitespace, domain not in lower case"
        );
    }

    #[test]
    fn freed_addresses_are_applied_before_normalised_ones() {
        let mut planner = Planner::default();
        let mut repairs = planner.row(&row(" K ", "k@EXAMPLE.com"));
        repairs.extend(planner.row(&row("K", "k@example.com")));
        application_order(&mut repairs);
        let order: Vec<_> = repairs
            .iter()
            .map(|r| (r.field, r.new_value.clone().unwrap()))
            .collect();
        assert_eq!(order[0].0, Field::Email);
        assert!(order[0].1.ends_with("@duplicate.invalid"));
        assert_eq!(order[1], (Field::Email, "k@example.com".to_owned()));
        assert_eq!(order[2].0, Field::Name);
    }
}
