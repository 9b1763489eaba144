//! REST ↔ protobuf: builds the request message from path bindings, query string and JSON body,
//! and renders response messages as proto3 JSON. Everything is descriptor-driven.
//!
//! Path and query values are first placed into one JSON document next to the body, typed by the
//! target field's kind, and the document is parsed once by prost-reflect's proto3 JSON reader:
//! one parser, one set of error messages, and well-known types for free.

use meshgate_wire::percent;
use meshgate_wire::routes::{BodyTarget, Route, resolve_field_path};
use prost::Message;
use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, ReflectMessage,
    SerializeOptions, Value as ProtoValue,
};
use serde_json::{Map, Value};

use crate::validate::{Presence, Validators, Violation};

/// Client mistakes: a 400 with the message shown, or with `gateway.json.error_detail` a 422
/// listing every problem (see [`crate::status`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TranscodeError {
    #[error("malformed JSON body: {reason}")]
    MalformedJson {
        reason: String,
        /// Character offset of the error in the body.
        offset: usize,
    },
    #[error("the JSON body must be an object")]
    NotAnObject,
    #[error("the request body is required: send a JSON object")]
    MissingBody,
    /// One entry per problem with a field: wrong type, unknown, or a broken rule.
    #[error("{}", describe(.0))]
    Fields(Vec<FieldError>),
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl TranscodeError {
    /// Broken rules of a message that arrived encoded (gRPC-web): fields of its body.
    pub fn from_violations(violations: Vec<Violation>) -> Self {
        Self::Fields(
            violations
                .into_iter()
                .map(|violation| FieldError {
                    source: Source::Body,
                    field: violation.field.clone(),
                    problem: Problem::Rule(violation),
                    input: None,
                })
                .collect(),
        )
    }
}

/// Where in the request a field came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Body,
    Query,
    Path,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Body => "body",
            Self::Query => "query",
            Self::Path => "path",
        }
    }
}

/// A problem with one field of a REST request.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub source: Source,
    /// Dotted proto field path (for [`Source::Body`] with `body: "field"`, below that field).
    pub field: String,
    pub problem: Problem,
    /// The value the client sent, when there was one.
    pub input: Option<Value>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Problem {
    /// No such field in the request message.
    Unknown,
    /// The value does not fit the field's type.
    WrongType {
        expected: Expected,
        reason: String,
    },
    /// A `buf.validate` rule (see [`crate::validate`]).
    Rule(Violation),
    Other(String),
}

/// The JSON shape a field's kind takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    Integer,
    Number,
    String,
    Boolean,
    Bytes,
    Enum,
    Object,
    Array,
}

impl Expected {
    fn of(field: &FieldDescriptor) -> Self {
        if field.is_map() {
            return Self::Object;
        }
        if field.is_list() {
            return Self::Array;
        }
        match field.kind() {
            Kind::Int32
            | Kind::Int64
            | Kind::Uint32
            | Kind::Uint64
            | Kind::Sint32
            | Kind::Sint64
            | Kind::Fixed32
            | Kind::Fixed64
            | Kind::Sfixed32
            | Kind::Sfixed64 => Self::Integer,
            Kind::Float | Kind::Double => Self::Number,
            Kind::Bool => Self::Boolean,
            Kind::String => Self::String,
            Kind::Bytes => Self::Bytes,
            Kind::Enum(_) => Self::Enum,
            Kind::Message(_) => Self::Object,
        }
    }
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let field = &self.field;
        match (&self.source, &self.problem) {
            (Source::Query, Problem::Unknown) => write!(f, "unknown query parameter {field:?}"),
            (_, Problem::Unknown) => write!(f, "unknown field {field:?}"),
            (Source::Query, Problem::WrongType { reason, .. } | Problem::Other(reason)) => {
                write!(f, "query parameter {field:?}: {reason}")
            }
            (_, Problem::WrongType { reason, .. } | Problem::Other(reason)) => {
                write!(f, "invalid value for field {field}: {reason}")
            }
            (_, Problem::Rule(violation)) => {
                write!(f, "invalid value for field {field}: {}", violation.message)
            }
        }
    }
}

fn describe(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Failures to read the upstream's answer; the gateway reports them as INTERNAL.
#[derive(Debug, thiserror::Error)]
#[error("upstream response for {message} could not be decoded: {reason}")]
pub struct ResponseDecodeError {
    pub message: String,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonOptions {
    /// Emit proto field names (`created_at`) instead of lowerCamelCase JSON names.
    pub use_proto_field_names: bool,
    /// Emit fields holding their default value (proto3 JSON omits them by default).
    pub emit_defaults: bool,
    /// 64-bit integers as JSON numbers while they fit in ±(2^53 − 1), the integers every JSON
    /// reader holds exactly; beyond that, strings (proto3 JSON writes them all as strings).
    pub int64_as_number: bool,
    /// Ignore request fields and query parameters the message does not have, instead of
    /// refusing the request.
    pub ignore_unknown_fields: bool,
    /// Error bodies add `detail` to google.rpc.Status, and request-validation failures are 422
    /// with a FastAPI-style item list (see [`crate::status`]).
    pub error_detail: bool,
}

impl Default for JsonOptions {
    fn default() -> Self {
        Self {
            use_proto_field_names: false,
            emit_defaults: true,
            int64_as_number: false,
            ignore_unknown_fields: false,
            error_detail: false,
        }
    }
}

/// The largest integer an IEEE double (a JavaScript number) holds exactly: 2^53 − 1.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

impl JsonOptions {
    fn serialize_options(self) -> SerializeOptions {
        SerializeOptions::new()
            .use_proto_field_name(self.use_proto_field_names)
            .skip_default_fields(!self.emit_defaults)
            .stringify_64_bit_integers(!self.int64_as_number)
    }

    fn deserialize_options(self) -> DeserializeOptions {
        DeserializeOptions::new().deny_unknown_fields(!self.ignore_unknown_fields)
    }
}

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

/// Decodes the upstream's response message.
pub fn decode_response(
    output: &MessageDescriptor,
    bytes: &[u8],
) -> Result<DynamicMessage, ResponseDecodeError> {
    DynamicMessage::decode(output.clone(), bytes).map_err(|e| ResponseDecodeError {
        message: output.full_name().to_owned(),
        reason: e.to_string(),
    })
}

/// Renders a response message as proto3 JSON, honouring `response_body`.
pub fn render_response(
    route: &Route,
    message: &DynamicMessage,
    options: JsonOptions,
) -> Result<Vec<u8>, ResponseDecodeError> {
    let failed = |reason: String| ResponseDecodeError {
        message: message.descriptor().full_name().to_owned(),
        reason,
    };
    if route.response_body.is_none() && !options.int64_as_number {
        // The whole message: straight to bytes, without a `serde_json::Value` in between.
        let mut json = Vec::with_capacity(128);
        message
            .serialize_with_options(
                &mut serde_json::Serializer::new(&mut json),
                &options.serialize_options(),
            )
            .map_err(|e| failed(e.to_string()))?;
        return Ok(json);
    }
    let value = message_json(message, options).map_err(failed)?;
    let value = match (&route.response_body, value) {
        (Some(field), Value::Object(mut map)) => {
            let descriptor = message.descriptor();
            let field = descriptor
                .get_field_by_name(field)
                .expect("validated when the route was built");
            let key = if options.use_proto_field_names {
                field.name()
            } else {
                field.json_name()
            };
            map.remove(key).unwrap_or(Value::Null)
        }
        (_, value) => value,
    };
    Ok(serde_json::to_vec(&value).expect("a JSON value always serializes"))
}

pub fn message_json(message: &DynamicMessage, options: JsonOptions) -> Result<Value, String> {
    let mut value = message
        .serialize_with_options(serde_json::value::Serializer, &options.serialize_options())
        .map_err(|e| e.to_string())?;
    if options.int64_as_number {
        stringify_unsafe_integers(&mut value);
    }
    Ok(value)
}

/// Integers beyond ±(2^53 − 1) become strings: a JSON reader using doubles would round them.
/// Only 64-bit proto integers can be that large, so no other field changes type.
fn stringify_unsafe_integers(value: &mut Value) {
    match value {
        Value::Number(n) => {
            let unsafe_int = n.as_u64().is_some_and(|u| u > MAX_SAFE_INTEGER)
                || n.as_i64()
                    .is_some_and(|i| i.unsigned_abs() > MAX_SAFE_INTEGER);
            if unsafe_int {
                *value = Value::String(n.to_string());
            }
        }
        Value::Array(items) => items.iter_mut().for_each(stringify_unsafe_integers),
        Value::Object(map) => map.values_mut().for_each(stringify_unsafe_integers),
        _ => {}
    }
}

/// Fills `{field.path}` placeholders of a Location template from the response message.
/// Returns `None` if a placeholder does not resolve to a set scalar.
pub fn fill_location(template: &str, message: &DynamicMessage) -> Option<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}')? + open;
        let path = &rest[open + 1..close];
        out.push_str(&field_text(message, path)?);
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    Some(out)
}

fn field_text(message: &DynamicMessage, path: &str) -> Option<String> {
    let mut current = message.clone();
    let parts: Vec<&str> = path.split('.').collect();
    for (index, part) in parts.iter().enumerate() {
        let value = current.get_field_by_name(part)?.into_owned();
        if index == parts.len() - 1 {
            let text = match value {
                ProtoValue::String(s) => s,
                ProtoValue::I32(n) | ProtoValue::EnumNumber(n) => n.to_string(),
                ProtoValue::I64(n) => n.to_string(),
                ProtoValue::U32(n) => n.to_string(),
                ProtoValue::U64(n) => n.to_string(),
                _ => return None,
            };
            return (!text.is_empty()).then(|| encode_path_segment(&text));
        }
        current = value.as_message()?.clone();
    }
    None
}

fn encode_path_segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Encodes a message for the wire.
pub fn encode(message: &DynamicMessage) -> bytes::Bytes {
    message.encode_to_vec().into()
}

#[cfg(test)]
mod tests;
