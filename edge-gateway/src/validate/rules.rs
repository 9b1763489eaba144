//! A field's `buf.validate` options compiled into [`Check`]s once, at start-up. A rule the
//! gateway cannot evaluate is an error, so none is silently skipped.

use prost_reflect::{ExtensionDescriptor, FieldDescriptor, Kind, Value};

use super::{Number, RuleError};

#[derive(Debug)]
pub(super) struct FieldRules {
    pub(super) field: FieldDescriptor,
    pub(super) required: bool,
    pub(super) ignore_if_zero: bool,
    pub(super) checks: Vec<Check>,
    /// The field's message type has rules of its own.
    pub(super) nested: bool,
}

#[derive(Debug, Clone)]
pub(super) enum Check {
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

pub(super) fn compile_field(
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
