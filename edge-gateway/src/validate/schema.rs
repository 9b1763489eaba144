//! The rules as OpenAPI schema keywords, so the document states what the gateway enforces.

use prost_reflect::{DescriptorPool, FieldDescriptor, Value};
use serde_json::{Map, Value as Json};

use super::{
    Number,
    rules::{Check, compile_field},
};

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
