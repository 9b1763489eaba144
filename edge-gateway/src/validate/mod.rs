//! Request validation from `buf.validate` (protovalidate) field rules, read from the descriptors'
//! options once at start-up and checked on every REST and gRPC-web request before it goes
//! upstream.
//!
//! The standard scalar rules are supported: `required`, `ignore`, string `len`/`min_len`/
//! `max_len`/`const`/`in`/`not_in`/`prefix`/`suffix`/`contains`/`email`/`uuid`, numeric
//! `const`/`gt`/`gte`/`lt`/`lte`/`in`/`not_in` for every integer and floating kind, bool `const`,
//! and rules on the fields of nested messages. Any other rule (CEL, patterns, repeated, map, ...)
//! is refused when the gateway starts, so a rule is never silently skipped.
//!
//! Presence is where REST and protobuf differ: a proto3 scalar without `optional` is "set" when
//! it is not zero, but a REST request names its fields. [`Presence::Document`] takes a field as
//! set when the request named it (body key, path or query parameter; `null` is absent), so
//! `{"name": ""}` is checked against `min_len` even where `ignore = IGNORE_IF_ZERO_VALUE` lets a
//! gRPC caller's empty string through as "unchanged".
//!
//! - `rules`: a field's `buf.validate` options compiled into checks (unsupported rules refused).
//! - `check`: one check against a value, worded as protovalidate words it.
//! - `schema`: the same rules as OpenAPI schema keywords.

mod check;
mod rules;
mod schema;

use std::{collections::HashMap, sync::Arc};

use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage, Value,
};
use serde_json::{Map, Value as Json};

use self::rules::{FieldRules, compile_field};
pub use self::schema::schema_keywords;

/// A rule the request broke.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// Dotted proto field path, e.g. `age` or `address.city`.
    pub field: String,
    /// protovalidate's rule id, e.g. `string.min_len`, `int32.gte_lte`, `required`.
    pub rule_id: String,
    /// protovalidate's wording, e.g. "value length must be at least 1 characters".
    pub message: String,
    pub kind: ViolationKind,
}

/// What kind of rule was broken, with its bound, for clients that word errors their own way.
#[derive(Debug, Clone, PartialEq)]
pub enum ViolationKind {
    Required,
    TooShort(u64),
    TooLong(u64),
    Email,
    Uuid,
    /// Below the lower bound (`inclusive`: `gte`).
    Below {
        bound: Number,
        inclusive: bool,
    },
    /// Above the upper bound (`inclusive`: `lte`).
    Above {
        bound: Number,
        inclusive: bool,
    },
    /// `const`, `in`, `not_in`, `prefix`, `suffix`, `contains`.
    NotAllowed,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Number {
    Int(i128),
    Float(f64),
}

impl Number {
    fn of(value: &Value) -> Option<Self> {
        Some(match value {
            Value::I32(n) => Self::Int((*n).into()),
            Value::I64(n) => Self::Int((*n).into()),
            Value::U32(n) => Self::Int((*n).into()),
            Value::U64(n) => Self::Int((*n).into()),
            Value::F32(n) => Self::Float((*n).into()),
            Value::F64(n) => Self::Float(*n),
            _ => return None,
        })
    }

    fn as_f64(self) -> f64 {
        match self {
            // Precision loss only matters beyond 2^53, where bounds are not written by hand.
            Self::Int(n) => n as f64,
            Self::Float(n) => n,
        }
    }

    fn less_than(self, other: Self) -> bool {
        match (self, other) {
            (Self::Int(a), Self::Int(b)) => a < b,
            (a, b) => a.as_f64() < b.as_f64(),
        }
    }

    pub fn to_json(self) -> Json {
        match self {
            Self::Int(n) => {
                i64::try_from(n).map_or_else(|_| Json::String(n.to_string()), Json::from)
            }
            Self::Float(n) => Json::from(n),
        }
    }
}

impl std::fmt::Display for Number {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Int(n) => write!(f, "{n}"),
            Self::Float(n) => write!(f, "{n}"),
        }
    }
}

/// A descriptor's rules that cannot be enforced: the gateway refuses to start on them.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct RuleError {
    pub field: String,
    pub reason: String,
}

/// How to tell whether a field is set.
#[derive(Debug, Clone, Copy)]
pub enum Presence<'a> {
    /// Protobuf presence: implicit-presence scalars are set when not zero.
    Proto,
    /// A REST request: set when the request document names the field (see the module docs).
    Document(&'a Map<String, Json>),
}

/// The rules of every message in a pool, compiled once.
#[derive(Debug, Default, Clone)]
pub struct Validators {
    messages: HashMap<String, Arc<MessageRules>>,
}

#[derive(Debug, Default)]
struct MessageRules {
    fields: Vec<FieldRules>,
}

impl Validators {
    /// Compiles the rules of every message in the pool. A pool without `buf.validate` has none.
    pub fn from_pool(pool: &DescriptorPool) -> Result<Self, RuleError> {
        let Some(extension) = pool.get_extension_by_name("buf.validate.field") else {
            return Ok(Self::default());
        };
        if let Some(message_extension) = pool.get_extension_by_name("buf.validate.message") {
            for message in pool.all_messages() {
                if message.options().has_extension(&message_extension) {
                    return Err(RuleError {
                        field: message.full_name().to_owned(),
                        reason: "message-level buf.validate rules are not supported by the gateway"
                            .into(),
                    });
                }
            }
        }
        let mut compiled: HashMap<String, MessageRules> = HashMap::new();
        for message in pool.all_messages() {
            let mut rules = MessageRules::default();
            for field in message.fields() {
                if let Some(field_rules) = compile_field(&extension, &field)? {
                    rules.fields.push(field_rules);
                }
            }
            if !rules.fields.is_empty() {
                compiled.insert(message.full_name().to_owned(), rules);
            }
        }
        // A message field is walked when its type (or one below it) has rules.
        let names: Vec<String> = compiled.keys().cloned().collect();
        let mut with_rules: std::collections::HashSet<String> = names.into_iter().collect();
        let mut messages_with_fields: HashMap<String, MessageRules> = HashMap::new();
        loop {
            let mut grew = false;
            for message in pool.all_messages() {
                if with_rules.contains(message.full_name()) {
                    continue;
                }
                if message.fields().any(|f| points_into(&f, &with_rules)) {
                    with_rules.insert(message.full_name().to_owned());
                    grew = true;
                }
            }
            if !grew {
                break;
            }
        }
        for name in &with_rules {
            let message = pool
                .get_message_by_name(name)
                .expect("names come from the pool");
            let mut rules = compiled.remove(name).unwrap_or_default();
            for field in message.fields() {
                if points_into(&field, &with_rules) {
                    match rules.fields.iter_mut().find(|r| r.field == field) {
                        Some(existing) => existing.nested = true,
                        None => rules.fields.push(FieldRules {
                            field: field.clone(),
                            required: false,
                            ignore_if_zero: false,
                            checks: Vec::new(),
                            nested: true,
                        }),
                    }
                }
            }
            // Declaration order, as the client wrote the message.
            rules
                .fields
                .sort_by_key(|rules| message.fields().position(|f| f == rules.field));
            messages_with_fields.insert(name.clone(), rules);
        }
        Ok(Self {
            messages: messages_with_fields
                .into_iter()
                .map(|(name, rules)| (name, Arc::new(rules)))
                .collect(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Whether messages of this type have rules (on them or below them).
    pub fn has_rules(&self, message: &MessageDescriptor) -> bool {
        self.messages.contains_key(message.full_name())
    }

    /// The broken rules of an encoded gRPC (or gRPC-web) request to `/package.Service/Method`,
    /// with protobuf presence. A method not in the pool, or bytes that do not decode, have none
    /// here: the service answers those.
    pub fn check_grpc_request(
        &self,
        pool: &DescriptorPool,
        grpc_path: &str,
        message: &[u8],
    ) -> Vec<Violation> {
        if self.is_empty() {
            return Vec::new();
        }
        let input = meshgate_wire::routes::grpc_method(pool, grpc_path)
            .map(|method| method.input())
            .filter(|input| self.has_rules(input));
        let Some(input) = input else {
            return Vec::new();
        };
        match DynamicMessage::decode(input, message) {
            Ok(decoded) => self.check(&decoded, Presence::Proto),
            Err(_) => Vec::new(),
        }
    }

    /// Every broken rule of `message`, in field order.
    pub fn check(&self, message: &DynamicMessage, presence: Presence<'_>) -> Vec<Violation> {
        let mut violations = Vec::new();
        self.check_into(message, presence, "", &mut violations);
        violations
    }

    fn check_into(
        &self,
        message: &DynamicMessage,
        presence: Presence<'_>,
        prefix: &str,
        out: &mut Vec<Violation>,
    ) {
        let Some(rules) = self.messages.get(message.descriptor().full_name()) else {
            return;
        };
        for rules in &rules.fields {
            let field = &rules.field;
            let path = if prefix.is_empty() {
                field.name().to_owned()
            } else {
                format!("{prefix}.{}", field.name())
            };
            let (set, document) = match presence {
                Presence::Proto => (message.has_field(field), None),
                Presence::Document(document) => {
                    let value = document
                        .get(field.name())
                        .or_else(|| document.get(field.json_name()))
                        .filter(|v| !v.is_null());
                    (value.is_some(), value.and_then(Json::as_object))
                }
            };
            if !set {
                if rules.required {
                    out.push(Violation {
                        field: path,
                        rule_id: "required".into(),
                        message: "value is required".into(),
                        kind: ViolationKind::Required,
                    });
                    continue;
                }
                // Unset fields with presence, and zero values the rules say to ignore, pass;
                // an implicit-presence scalar is checked as its zero value (protovalidate).
                if rules.ignore_if_zero || field.supports_presence() {
                    continue;
                }
            }
            let value = message.get_field(field);
            if let Some(violation) = rules
                .checks
                .iter()
                .find_map(|check| check.broken_by(field, &value))
            {
                out.push(Violation {
                    field: path.clone(),
                    ..violation
                });
            }
            if rules.nested
                && set
                && let Value::Message(inner) = value.as_ref()
            {
                let inner_presence = match (presence, document) {
                    (Presence::Document(_), Some(document)) => Presence::Document(document),
                    (Presence::Document(_), None) => continue,
                    (Presence::Proto, _) => Presence::Proto,
                };
                self.check_into(inner, inner_presence, &path, out);
            }
        }
    }
}

fn points_into(field: &FieldDescriptor, with_rules: &std::collections::HashSet<String>) -> bool {
    !field.is_list()
        && !field.is_map()
        && matches!(field.kind(), Kind::Message(m) if with_rules.contains(m.full_name()))
}

#[cfg(test)]
mod tests;
