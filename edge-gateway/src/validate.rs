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

use std::collections::HashMap;
use std::sync::Arc;

use prost_reflect::{
    DescriptorPool, DynamicMessage, ExtensionDescriptor, FieldDescriptor, Kind, MessageDescriptor,
    ReflectMessage, Value,
};
use serde_json::{Map, Value as Json};

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

#[derive(Debug)]
struct FieldRules {
    field: FieldDescriptor,
    required: bool,
    ignore_if_zero: bool,
    checks: Vec<Check>,
    /// The field's message type has rules of its own.
    nested: bool,
}

#[derive(Debug, Clone)]
enum Check {
    Len(u64),
    MinLen(u64),
    MaxLen(u64),
    Email,
    Uuid,
    Prefix(String),
    Suffix(String),
    Contains(String),
    Lower {
        bound: Number,
        inclusive: bool,
    },
    Upper {
        bound: Number,
        inclusive: bool,
    },
    /// `const` (one value) or `in`.
    OneOf(Vec<Value>),
    NotIn(Vec<Value>),
}

const NUMERIC_RULES: &[&str] = &[
    "float", "double", "int32", "int64", "uint32", "uint64", "sint32", "sint64", "fixed32",
    "fixed64", "sfixed32", "sfixed64",
];

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

fn compile_field(
    extension: &ExtensionDescriptor,
    field: &FieldDescriptor,
) -> Result<Option<FieldRules>, RuleError> {
    let options = field.options();
    if !options.has_extension(extension) {
        return Ok(None);
    }
    let rules = options.get_extension(extension);
    let Some(rules) = rules.as_message() else {
        return Ok(None);
    };
    let unsupported = |rule: &str| RuleError {
        field: field.full_name().to_owned(),
        reason: format!("buf.validate rule `{rule}` is not supported by the gateway"),
    };
    let mut compiled = FieldRules {
        field: field.clone(),
        required: false,
        ignore_if_zero: false,
        checks: Vec::new(),
        nested: false,
    };
    for (rule, value) in rules.fields() {
        match rule.name() {
            "required" => compiled.required = value.as_bool().unwrap_or(false),
            "ignore" => match value.as_enum_number() {
                Some(0) | None => {}
                Some(1) => compiled.ignore_if_zero = true,
                // IGNORE_ALWAYS: the field has no rules.
                Some(3) => return Ok(None),
                Some(other) => return Err(unsupported(&format!("ignore = {other}"))),
            },
            "string" => compiled.checks = string_checks(value, &unsupported)?,
            "bool" => compiled.checks = bool_checks(value, &unsupported)?,
            name if NUMERIC_RULES.contains(&name) => {
                compiled.checks = numeric_checks(value, &unsupported)?;
            }
            other => return Err(unsupported(other)),
        }
    }
    if field.is_list() || field.is_map() {
        if !compiled.checks.is_empty() || compiled.required {
            return Err(unsupported("rules on repeated or map fields"));
        }
        return Ok(None);
    }
    let expected = match field.kind() {
        Kind::String => Some("string"),
        Kind::Bool => Some("bool"),
        Kind::Message(_) | Kind::Enum(_) | Kind::Bytes => None,
        _ => Some("numeric"),
    };
    if !compiled.checks.is_empty() && expected.is_none() {
        return Err(unsupported("value rules on message, enum or bytes fields"));
    }
    Ok(Some(compiled))
}

fn rule_fields(value: &Value) -> Vec<(FieldDescriptor, Value)> {
    value.as_message().map_or_else(Vec::new, |m| {
        m.fields().map(|(f, v)| (f, v.clone())).collect()
    })
}

fn string_checks(
    value: &Value,
    unsupported: &dyn Fn(&str) -> RuleError,
) -> Result<Vec<Check>, RuleError> {
    let mut checks = Vec::new();
    for (rule, value) in rule_fields(value) {
        let text = || value.as_str().unwrap_or_default().to_owned();
        let count = || value.as_u64().unwrap_or_default();
        checks.push(match rule.name() {
            "len" => Check::Len(count()),
            "min_len" => Check::MinLen(count()),
            "max_len" => Check::MaxLen(count()),
            "const" => Check::OneOf(vec![value.clone()]),
            "in" => Check::OneOf(list(&value)),
            "not_in" => Check::NotIn(list(&value)),
            "prefix" => Check::Prefix(text()),
            "suffix" => Check::Suffix(text()),
            "contains" => Check::Contains(text()),
            "email" if value.as_bool() == Some(true) => Check::Email,
            "uuid" if value.as_bool() == Some(true) => Check::Uuid,
            "email" | "uuid" | "example" => continue,
            other => return Err(unsupported(&format!("string.{other}"))),
        });
    }
    Ok(checks)
}

fn bool_checks(
    value: &Value,
    unsupported: &dyn Fn(&str) -> RuleError,
) -> Result<Vec<Check>, RuleError> {
    let mut checks = Vec::new();
    for (rule, value) in rule_fields(value) {
        match rule.name() {
            "const" => checks.push(Check::OneOf(vec![value])),
            "example" => {}
            other => return Err(unsupported(&format!("bool.{other}"))),
        }
    }
    Ok(checks)
}

fn numeric_checks(
    value: &Value,
    unsupported: &dyn Fn(&str) -> RuleError,
) -> Result<Vec<Check>, RuleError> {
    let mut checks = Vec::new();
    let (mut lower, mut upper) = (None, None);
    for (rule, value) in rule_fields(value) {
        let number = || Number::of(&value).ok_or_else(|| unsupported(rule.name()));
        match rule.name() {
            "gt" => lower = Some((number()?, false)),
            "gte" => lower = Some((number()?, true)),
            "lt" => upper = Some((number()?, false)),
            "lte" => upper = Some((number()?, true)),
            "const" => checks.push(Check::OneOf(vec![value])),
            "in" => checks.push(Check::OneOf(list(&value))),
            "not_in" => checks.push(Check::NotIn(list(&value))),
            "example" => {}
            other => return Err(unsupported(other)),
        }
    }
    if let (Some((low, _)), Some((high, _))) = (lower, upper)
        && high.less_than(low)
    {
        // protovalidate reads an upper bound below the lower one as "outside the range".
        return Err(unsupported(
            "exclusive ranges (upper bound below the lower bound)",
        ));
    }
    if let Some((bound, inclusive)) = lower {
        checks.push(Check::Lower { bound, inclusive });
    }
    if let Some((bound, inclusive)) = upper {
        checks.push(Check::Upper { bound, inclusive });
    }
    Ok(checks)
}

fn list(value: &Value) -> Vec<Value> {
    value.as_list().map(<[Value]>::to_vec).unwrap_or_default()
}

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
    fn broken_by(&self, field: &FieldDescriptor, value: &Value) -> Option<Violation> {
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

/// Schema keywords for a field's rules, for the OpenAPI document (`minLength`, `maximum`,
/// `format`, ...), and whether the field is required.
pub fn schema_keywords(
    pool: &DescriptorPool,
    field: &FieldDescriptor,
) -> (Map<String, Json>, bool) {
    let mut keywords = Map::new();
    let Some(extension) = pool.get_extension_by_name("buf.validate.field") else {
        return (keywords, false);
    };
    let Ok(Some(rules)) = compile_field(&extension, field) else {
        return (keywords, false);
    };
    for check in &rules.checks {
        match check {
            Check::Len(n) => {
                keywords.insert("minLength".into(), (*n).into());
                keywords.insert("maxLength".into(), (*n).into());
            }
            Check::MinLen(n) => {
                keywords.insert("minLength".into(), (*n).into());
            }
            Check::MaxLen(n) => {
                keywords.insert("maxLength".into(), (*n).into());
            }
            Check::Email => {
                keywords.insert("format".into(), "email".into());
            }
            Check::Uuid => {
                keywords.insert("format".into(), "uuid".into());
            }
            Check::Lower { bound, inclusive } => {
                let key = if *inclusive {
                    "minimum"
                } else {
                    "exclusiveMinimum"
                };
                keywords.insert(key.into(), bound.to_json());
            }
            Check::Upper { bound, inclusive } => {
                let key = if *inclusive {
                    "maximum"
                } else {
                    "exclusiveMaximum"
                };
                keywords.insert(key.into(), bound.to_json());
            }
            Check::OneOf(values) => {
                let values: Vec<Json> = values.iter().map(value_json).collect();
                keywords.insert("enum".into(), values.into());
            }
            Check::NotIn(_) | Check::Prefix(_) | Check::Suffix(_) | Check::Contains(_) => {}
        }
    }
    (keywords, rules.required)
}

fn value_json(value: &Value) -> Json {
    match value {
        Value::String(s) => s.clone().into(),
        Value::Bool(b) => (*b).into(),
        other => Number::of(other).map_or(Json::Null, Number::to_json),
    }
}

#[cfg(test)]
mod tests;
