//! REST ↔ protobuf: builds the request message from path bindings, query string and JSON body,
//! and renders response messages as proto3 JSON. Everything is descriptor-driven.
//!
//! Path and query values are first placed into one JSON document next to the body, typed by the
//! target field's kind, and the document is parsed once by prost-reflect's proto3 JSON reader:
//! one parser, one set of error messages, and well-known types for free.

use prost::Message;
use prost_reflect::{
    DynamicMessage, Kind, MessageDescriptor, ReflectMessage, SerializeOptions, Value as ProtoValue,
};
use serde_json::{Map, Value};

use crate::path_template::percent_decode;
use crate::routes::{BodyTarget, Route, resolve_field_path};

/// Client mistakes; each becomes a 400 with the message shown.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TranscodeError {
    #[error("malformed JSON body: {0}")]
    MalformedJson(String),
    #[error("the JSON body must be an object")]
    NotAnObject,
    #[error("invalid value for field {field}: {reason}")]
    InvalidField { field: String, reason: String },
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("unknown query parameter {0:?}")]
    UnknownQueryParameter(String),
    #[error("query parameter {name:?}: {reason}")]
    BadQueryParameter { name: String, reason: String },
}

/// Failures to read the upstream's answer; the gateway reports them as INTERNAL.
#[derive(Debug, thiserror::Error)]
#[error("upstream response for {message} could not be decoded: {reason}")]
pub struct ResponseDecodeError {
    pub message: String,
    pub reason: String,
}

#[derive(Debug, Clone, Copy)]
pub struct JsonOptions {
    /// Emit proto field names (`created_at`) instead of lowerCamelCase JSON names.
    pub use_proto_field_names: bool,
    /// Emit fields holding their default value (proto3 JSON omits them by default).
    pub emit_defaults: bool,
}

impl Default for JsonOptions {
    fn default() -> Self {
        Self {
            use_proto_field_names: false,
            emit_defaults: true,
        }
    }
}

impl JsonOptions {
    fn serialize_options(self) -> SerializeOptions {
        SerializeOptions::new()
            .use_proto_field_name(self.use_proto_field_names)
            .skip_default_fields(!self.emit_defaults)
    }
}

/// Builds the encoded gRPC request message for a matched route.
pub fn build_request(
    route: &Route,
    bindings: &[(String, String)],
    query: Option<&str>,
    body: &[u8],
) -> Result<DynamicMessage, TranscodeError> {
    let input = route.input();
    let mut document = match &route.body {
        BodyTarget::None => Map::new(),
        BodyTarget::Whole => match parse_body(body)? {
            Some(Value::Object(map)) => map,
            Some(_) => return Err(TranscodeError::NotAnObject),
            None => Map::new(),
        },
        BodyTarget::Field(field) => {
            let mut map = Map::new();
            if let Some(value) = parse_body(body)? {
                map.insert(field.clone(), value);
            }
            map
        }
    };
    // With `body: "*"` every field comes from the body; the query string is ignored (spec).
    if route.body != BodyTarget::Whole
        && let Some(query) = query
    {
        let mut repeated: Vec<(String, Vec<Value>)> = Vec::new();
        for (name, raw) in parse_query(query)? {
            let field = resolve_field_path(&input, &name)
                .ok_or_else(|| TranscodeError::UnknownQueryParameter(name.clone()))?;
            // With `body: "field"` that field comes from the body only (spec); a query value
            // for it or below it would silently replace or merge into what the body sent.
            if let BodyTarget::Field(body_field) = &route.body
                && let Some(top) = name.split('.').next()
                && input
                    .get_field_by_name(top)
                    .or_else(|| input.get_field_by_json_name(top))
                    .is_some_and(|top| top.name() == body_field)
            {
                return Err(TranscodeError::BadQueryParameter {
                    name,
                    reason: format!("field {body_field} is set by the request body"),
                });
            }
            if field.is_map()
                || (matches!(field.kind(), Kind::Message(ref m) if !is_scalar_like(m)))
            {
                return Err(TranscodeError::BadQueryParameter {
                    name,
                    reason: "message fields cannot be set from the query string".into(),
                });
            }
            let value = scalar_json(&field.kind(), &raw).map_err(|reason| {
                TranscodeError::BadQueryParameter {
                    name: name.clone(),
                    reason,
                }
            })?;
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
        let value =
            scalar_json(&field.kind(), raw).map_err(|reason| TranscodeError::InvalidField {
                field: path.clone(),
                reason,
            })?;
        insert_path(&mut document, &input, path, value)?;
    }
    decode_document(&input, document)
}

fn parse_body(body: &[u8]) -> Result<Option<Value>, TranscodeError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(body)
        .map(Some)
        .map_err(|e| TranscodeError::MalformedJson(e.to_string()))
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

fn decode_document(
    input: &MessageDescriptor,
    document: Map<String, Value>,
) -> Result<DynamicMessage, TranscodeError> {
    match DynamicMessage::deserialize(input.clone(), Value::Object(document.clone())) {
        Ok(message) => Ok(message),
        Err(whole) => {
            // Name the offending top-level field: re-read each one alone.
            for (key, value) in document {
                let single = Value::Object(Map::from_iter([(key.clone(), value)]));
                if let Err(error) = DynamicMessage::deserialize(input.clone(), single) {
                    return Err(TranscodeError::InvalidField {
                        field: key,
                        reason: error.to_string(),
                    });
                }
            }
            Err(TranscodeError::Invalid(whole.to_string()))
        }
    }
}

/// Parses `a=1&b=x+y&c=%20`; `+` is a space as in HTML forms.
fn parse_query(query: &str) -> Result<Vec<(String, String)>, TranscodeError> {
    let mut pairs = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_decode(&s.replace('+', " "), true).ok_or_else(|| {
                TranscodeError::BadQueryParameter {
                    name: name.to_owned(),
                    reason: "bad percent-encoding".into(),
                }
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
    if route.response_body.is_none() {
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
    message
        .serialize_with_options(serde_json::value::Serializer, &options.serialize_options())
        .map_err(|e| e.to_string())
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
