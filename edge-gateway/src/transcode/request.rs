//! REST request → the gRPC request message: path and query values placed into one JSON
//! document next to the body, typed by the target field's kind, then read once by
//! prost-reflect's proto3 JSON reader and checked against the message's `buf.validate` rules.

use meshgate_wire::percent;
use meshgate_wire::routes::{BodyTarget, Route, resolve_field_path};
use prost_reflect::{DynamicMessage, Kind, MessageDescriptor};
use serde_json::{Map, Value};

use super::{Expected, FieldError, JsonOptions, Problem, Source, TranscodeError};
use crate::validate::{Presence, Validators};

/// Builds the gRPC request message for a matched route and checks it against the input
/// message's `buf.validate` rules, reporting every problem found (type errors and broken rules
/// together, one per field).
pub fn build_request(
    route: &Route,
    bindings: &[(String, String)],
    query: Option<&str>,
    body: &[u8],
    options: JsonOptions,
    validators: &Validators,
) -> Result<DynamicMessage, TranscodeError> {
    let input = route.input();
    let body_value = parse_body(body)?;
    let mut document = match &route.body {
        BodyTarget::None => Map::new(),
        BodyTarget::Whole => match body_value {
            Some(Value::Object(map)) => map,
            Some(_) => return Err(TranscodeError::NotAnObject),
            None => return Err(TranscodeError::MissingBody),
        },
        BodyTarget::Field(field) => {
            let value = body_value.ok_or(TranscodeError::MissingBody)?;
            Map::from_iter([(field.clone(), value)])
        }
    };
    let mut problems = Vec::new();
    // Top-level document keys set from the query string or the path (the rest is the body).
    let mut origins: Vec<(String, Source)> = Vec::new();
    // With `body: "*"` every field comes from the body; the query string is ignored (spec).
    if route.body != BodyTarget::Whole
        && let Some(query) = query
    {
        let mut repeated: Vec<(String, Vec<Value>)> = Vec::new();
        for (name, raw) in parse_query(query)? {
            let problem = |problem: Problem| FieldError {
                source: Source::Query,
                field: name.clone(),
                problem,
                input: Some(Value::String(raw.clone())),
            };
            let Some(field) = resolve_field_path(&input, &name) else {
                if !options.ignore_unknown_fields {
                    problems.push(problem(Problem::Unknown));
                }
                continue;
            };
            // With `body: "field"` that field comes from the body only (spec); a query value
            // for it or below it would silently replace or merge into what the body sent.
            if let BodyTarget::Field(body_field) = &route.body
                && let Some(top) = name.split('.').next()
                && input
                    .get_field_by_name(top)
                    .or_else(|| input.get_field_by_json_name(top))
                    .is_some_and(|top| top.name() == body_field)
            {
                problems.push(problem(Problem::Other(format!(
                    "field {body_field} is set by the request body"
                ))));
                continue;
            }
            if field.is_map()
                || (matches!(field.kind(), Kind::Message(ref m) if !is_scalar_like(m)))
            {
                problems.push(problem(Problem::Other(
                    "message fields cannot be set from the query string".into(),
                )));
                continue;
            }
            let value = match scalar_json(&field.kind(), &raw) {
                Ok(value) => value,
                Err(reason) => {
                    problems.push(problem(Problem::WrongType {
                        expected: Expected::of(&field),
                        reason,
                    }));
                    continue;
                }
            };
            note_origin(&mut origins, &input, &name, Source::Query);
            if field.is_list() {
                match repeated.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, values)) => values.push(value),
                    None => repeated.push((name, vec![value])),
                }
            } else {
                insert_path(&mut document, &input, &name, value)?;
            }
        }
        for (name, values) in repeated {
            insert_path(&mut document, &input, &name, Value::Array(values))?;
        }
    }
    for (path, raw) in bindings {
        let field = resolve_field_path(&input, path)
            .ok_or_else(|| TranscodeError::Invalid(format!("unknown field {path}")))?;
        match scalar_json(&field.kind(), raw) {
            Ok(value) => {
                note_origin(&mut origins, &input, path, Source::Path);
                insert_path(&mut document, &input, path, value)?;
            }
            Err(reason) => problems.push(FieldError {
                source: Source::Path,
                field: path.clone(),
                problem: Problem::WrongType {
                    expected: Expected::of(&field),
                    reason,
                },
                input: Some(Value::String(raw.clone())),
            }),
        }
    }
    let source_of = |key: &str| {
        origins
            .iter()
            .find(|(name, _)| name == key)
            .map_or(Source::Body, |(_, source)| *source)
    };
    let (message, rejected) = decode_document(&input, &mut document, options)?;
    for (key, problem, value) in rejected.iter().cloned() {
        problems.push(FieldError {
            source: source_of(&key),
            field: key,
            problem,
            input: Some(value),
        });
    }
    for violation in validators.check(&message, Presence::Document(&document)) {
        let top = violation.field.split('.').next().unwrap_or_default();
        if rejected.iter().any(|(key, _, _)| key == top) {
            continue;
        }
        let source = source_of(top);
        let input_value = lookup(&document, &input, &violation.field);
        problems.push(FieldError {
            source,
            field: violation.field.clone(),
            problem: Problem::Rule(violation),
            input: input_value,
        });
    }
    if !problems.is_empty() {
        // A body-field route reports body fields below that field, as the client sent them.
        if let BodyTarget::Field(body_field) = &route.body {
            for problem in &mut problems {
                if problem.source == Source::Body {
                    problem.field = problem
                        .field
                        .strip_prefix(body_field.as_str())
                        .map(|rest| rest.trim_start_matches('.').to_owned())
                        .unwrap_or_else(|| problem.field.clone());
                }
            }
        }
        return Err(TranscodeError::Fields(problems));
    }
    Ok(message)
}

/// Records that the top-level field of `path` was set from the query string or the path.
fn note_origin(
    origins: &mut Vec<(String, Source)>,
    input: &MessageDescriptor,
    path: &str,
    source: Source,
) {
    let top = path.split('.').next().unwrap_or_default();
    if let Some(field) = input
        .get_field_by_name(top)
        .or_else(|| input.get_field_by_json_name(top))
        && !origins.iter().any(|(name, _)| name == field.name())
    {
        origins.push((field.name().to_owned(), source));
    }
}

/// The value at a dotted proto field path of the request document.
fn lookup(document: &Map<String, Value>, input: &MessageDescriptor, path: &str) -> Option<Value> {
    let mut current = document;
    let mut message = input.clone();
    let parts: Vec<&str> = path.split('.').collect();
    for (index, part) in parts.iter().enumerate() {
        let field = message.get_field_by_name(part)?;
        let value = current
            .get(field.name())
            .or_else(|| current.get(field.json_name()))?;
        if index == parts.len() - 1 {
            return Some(value.clone());
        }
        current = value.as_object()?;
        message = match field.kind() {
            Kind::Message(inner) => inner,
            _ => return None,
        };
    }
    None
}

fn parse_body(body: &[u8]) -> Result<Option<Value>, TranscodeError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body).map(Some).map_err(|e| {
        // serde_json reports a 1-based line and column; clients get the character offset of
        // what was expected (Python's json module's `char`), the end of the body for EOF.
        let text = String::from_utf8_lossy(body);
        let offset = if e.is_eof() {
            text.chars().count()
        } else {
            text.split_inclusive('\n')
                .take(e.line().saturating_sub(1))
                .map(|line| line.chars().count())
                .sum::<usize>()
                + e.column().saturating_sub(1)
        };
        TranscodeError::MalformedJson {
            reason: e.to_string(),
            offset,
        }
    })
}

/// Wrapper and well-known types whose JSON form is a scalar, so a query value can set them.
fn is_scalar_like(message: &MessageDescriptor) -> bool {
    matches!(
        message.full_name(),
        "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask"
            | "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.BoolValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
    )
}

/// A path or query string value as the JSON the proto3 reader expects for the field's kind.
/// Numbers and enums may stay strings (proto3 JSON accepts them quoted); booleans may not.
fn scalar_json(kind: &Kind, raw: &str) -> Result<Value, String> {
    let boolean = |raw: &str| match raw {
        "true" => Ok(Value::Bool(true)),
        "false" => Ok(Value::Bool(false)),
        other => Err(format!("{other:?} is not a boolean (true or false)")),
    };
    match kind {
        Kind::Bool => boolean(raw),
        Kind::Message(m) if m.full_name() == "google.protobuf.BoolValue" => boolean(raw),
        _ => Ok(Value::String(raw.to_owned())),
    }
}

/// Inserts `value` at the dotted field path, creating intermediate objects. Keys are the proto
/// field names (the reader accepts both spellings).
fn insert_path(
    document: &mut Map<String, Value>,
    input: &MessageDescriptor,
    path: &str,
    value: Value,
) -> Result<(), TranscodeError> {
    let mut current = document;
    let mut message = input.clone();
    let parts: Vec<&str> = path.split('.').collect();
    for (index, part) in parts.iter().enumerate() {
        let field = message
            .get_field_by_name(part)
            .or_else(|| message.get_field_by_json_name(part))
            .ok_or_else(|| TranscodeError::Invalid(format!("unknown field {path}")))?;
        if index == parts.len() - 1 {
            // Drop the other spelling so the body's value and the bound value don't both apply.
            if field.json_name() != field.name() {
                current.remove(field.json_name());
            }
            current.insert(field.name().to_owned(), value);
            return Ok(());
        }
        let Kind::Message(inner) = field.kind() else {
            return Err(TranscodeError::Invalid(format!(
                "{part} in {path} is not a message field"
            )));
        };
        message = inner;
        let entry = current
            .entry(field.name().to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        current = entry.as_object_mut().expect("just made an object");
    }
    Ok(())
}

/// A top-level document key the proto3 reader refused, why, and the value sent.
type Rejected = (String, Problem, Value);

/// Reads the document with the proto3 JSON reader. When it refuses, each top-level key is read
/// alone to name every offending field; those keys leave the document and the rest is read, so
/// the remaining fields can still be checked against their rules.
fn decode_document(
    input: &MessageDescriptor,
    document: &mut Map<String, Value>,
    options: JsonOptions,
) -> Result<(DynamicMessage, Vec<Rejected>), TranscodeError> {
    let read = |document: &Map<String, Value>| {
        DynamicMessage::deserialize_with_options(
            input.clone(),
            Value::Object(document.clone()),
            &options.deserialize_options(),
        )
    };
    let whole = match read(document) {
        Ok(message) => return Ok((message, Vec::new())),
        Err(error) => error,
    };
    let mut rejected = Vec::new();
    for (key, value) in document.iter() {
        let single = Map::from_iter([(key.clone(), value.clone())]);
        if let Err(error) = read(&single) {
            let problem = match input
                .get_field_by_name(key)
                .or_else(|| input.get_field_by_json_name(key))
            {
                None => Problem::Unknown,
                Some(field) => Problem::WrongType {
                    expected: Expected::of(&field),
                    reason: error.to_string(),
                },
            };
            rejected.push((key.clone(), problem, value.clone()));
        }
    }
    if rejected.is_empty() {
        return Err(TranscodeError::Invalid(whole.to_string()));
    }
    for (key, _, _) in &rejected {
        document.remove(key);
    }
    let message = read(document).map_err(|e| TranscodeError::Invalid(e.to_string()))?;
    // Report under the proto field name, as rules and paths do.
    for (key, _, _) in &mut rejected {
        if let Some(field) = input.get_field_by_json_name(key) {
            *key = field.name().to_owned();
        }
    }
    Ok((message, rejected))
}

/// Parses `a=1&b=x+y&c=%20`; `+` is a space as in HTML forms.
fn parse_query(query: &str) -> Result<Vec<(String, String)>, TranscodeError> {
    let mut pairs = Vec::new();
    for (name, value) in percent::query_pairs(query) {
        let decode = |s: &str| {
            percent::decode_query_component(s).ok_or_else(|| {
                TranscodeError::Fields(vec![FieldError {
                    source: Source::Query,
                    field: name.to_owned(),
                    problem: Problem::Other("bad percent-encoding".into()),
                    input: None,
                }])
            })
        };
        pairs.push((decode(name)?, decode(value)?));
    }
    Ok(pairs)
}
