//! One compiled [`Check`] against a field's value: the [`Violation`] it finds, with
//! protovalidate's rule id and wording.

use prost_reflect::{FieldDescriptor, Kind, Value};

use super::{Number, Violation, ViolationKind, rules::Check};

/// protovalidate's prefix of a rule id for a field's kind (`int32`, `string`, ...).
fn kind_prefix(field: &FieldDescriptor) -> &'static str {
    match field.kind() {
        Kind::Double => "double",
        Kind::Float => "float",
        Kind::Int32 => "int32",
        Kind::Int64 => "int64",
        Kind::Uint32 => "uint32",
        Kind::Uint64 => "uint64",
        Kind::Sint32 => "sint32",
        Kind::Sint64 => "sint64",
        Kind::Fixed32 => "fixed32",
        Kind::Fixed64 => "fixed64",
        Kind::Sfixed32 => "sfixed32",
        Kind::Sfixed64 => "sfixed64",
        Kind::Bool => "bool",
        Kind::String => "string",
        Kind::Bytes => "bytes",
        Kind::Message(_) => "message",
        Kind::Enum(_) => "enum",
    }
}

impl Check {
    pub(super) fn broken_by(&self, field: &FieldDescriptor, value: &Value) -> Option<Violation> {
        let prefix = kind_prefix(field);
        let violation = |rule: &str, message: String, kind: ViolationKind| Violation {
            field: field.name().to_owned(),
            rule_id: format!("{prefix}.{rule}"),
            message,
            kind,
        };
        let text = value.as_str().unwrap_or_default();
        let chars = || text.chars().count() as u64;
        match self {
            Self::Len(n) if chars() != *n => Some(violation(
                "len",
                format!("value length must be {n} character{}", plural(*n)),
                if chars() < *n {
                    ViolationKind::TooShort(*n)
                } else {
                    ViolationKind::TooLong(*n)
                },
            )),
            Self::MinLen(n) if chars() < *n => Some(violation(
                "min_len",
                format!("value length must be at least {n} character{}", plural(*n)),
                ViolationKind::TooShort(*n),
            )),
            Self::MaxLen(n) if chars() > *n => Some(violation(
                "max_len",
                format!("value length must be at most {n} character{}", plural(*n)),
                ViolationKind::TooLong(*n),
            )),
            Self::Email if !is_email(text) => Some(violation(
                if text.is_empty() {
                    "email_empty"
                } else {
                    "email"
                },
                "value must be a valid email address".into(),
                ViolationKind::Email,
            )),
            Self::Uuid if !is_uuid(text) => Some(violation(
                if text.is_empty() {
                    "uuid_empty"
                } else {
                    "uuid"
                },
                "value must be a valid UUID".into(),
                ViolationKind::Uuid,
            )),
            Self::Prefix(p) if !text.starts_with(p.as_str()) => Some(violation(
                "prefix",
                format!("value does not have prefix {p:?}"),
                ViolationKind::NotAllowed,
            )),
            Self::Suffix(s) if !text.ends_with(s.as_str()) => Some(violation(
                "suffix",
                format!("value does not have suffix {s:?}"),
                ViolationKind::NotAllowed,
            )),
            Self::Contains(s) if !text.contains(s.as_str()) => Some(violation(
                "contains",
                format!("value does not contain substring {s:?}"),
                ViolationKind::NotAllowed,
            )),
            Self::OneOf(allowed) if !allowed.contains(value) => Some(violation(
                if allowed.len() == 1 { "const" } else { "in" },
                format!("value must be in list [{}]", values_text(allowed)),
                ViolationKind::NotAllowed,
            )),
            Self::NotIn(denied) if denied.contains(value) => Some(violation(
                "not_in",
                format!("value must not be in list [{}]", values_text(denied)),
                ViolationKind::NotAllowed,
            )),
            Self::Lower { bound, inclusive } => {
                let n = Number::of(value)?;
                let broken = if *inclusive {
                    n.less_than(*bound)
                } else {
                    !bound.less_than(n)
                };
                broken.then(|| {
                    let (rule, relation) = if *inclusive {
                        ("gte", "greater than or equal to")
                    } else {
                        ("gt", "greater than")
                    };
                    violation(
                        rule,
                        format!("value must be {relation} {bound}"),
                        ViolationKind::Below {
                            bound: *bound,
                            inclusive: *inclusive,
                        },
                    )
                })
            }
            Self::Upper { bound, inclusive } => {
                let n = Number::of(value)?;
                let broken = if *inclusive {
                    bound.less_than(n)
                } else {
                    !n.less_than(*bound)
                };
                broken.then(|| {
                    let (rule, relation) = if *inclusive {
                        ("lte", "less than or equal to")
                    } else {
                        ("lt", "less than")
                    };
                    violation(
                        rule,
                        format!("value must be {relation} {bound}"),
                        ViolationKind::Above {
                            bound: *bound,
                            inclusive: *inclusive,
                        },
                    )
                })
            }
            _ => None,
        }
    }
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn values_text(values: &[Value]) -> String {
    values
        .iter()
        .map(|v| match v {
            Value::String(s) => format!("{s:?}"),
            other => Number::of(other).map_or_else(|| format!("{other:?}"), |n| n.to_string()),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The same test as the user-service's: an RFC 5322 addr-spec, no display-name form.
fn is_email(text: &str) -> bool {
    email_address::EmailAddress::is_valid(text) && !text.contains(['<', '>', ' '])
}

/// protovalidate's `uuid`: the 36-character hyphenated form, any version, either case.
fn is_uuid(text: &str) -> bool {
    text.len() == 36
        && text.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        })
}
