//! The upstream's response message → proto3 JSON as the route and `gateway.json` ask, and
//! the `Location` header filled from it.

use meshgate_wire::routes::Route;
use prost::Message;
use prost_reflect::{DynamicMessage, MessageDescriptor, ReflectMessage, Value as ProtoValue};
use serde_json::Value;

use super::{JsonOptions, MAX_SAFE_INTEGER, ResponseDecodeError};

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
    if !options.int64_as_number {
        // Straight to bytes, without a `serde_json::Value` in between (building and
        // re-serializing that tree was two thirds of the rendering): the whole message, or the
        // `response_body` field when it holds a message that is set.
        let rendered = match &route.response_body {
            None => Some(message),
            Some(field) => body_message(message, field),
        };
        if let Some(rendered) = rendered {
            let mut json = Vec::with_capacity(128);
            rendered
                .serialize_with_options(
                    &mut serde_json::Serializer::new(&mut json),
                    &options.serialize_options(),
                )
                .map_err(|e| failed(e.to_string()))?;
            return Ok(json);
        }
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

/// The `response_body` field of `message` when it is a singular message field that is set
/// (rendered on its own as a JSON object); `None` for anything else, which takes the general
/// path.
fn body_message<'a>(message: &'a DynamicMessage, field: &str) -> Option<&'a DynamicMessage> {
    let field = message.descriptor().get_field_by_name(field)?;
    if field.is_list() || field.is_map() || !message.has_field(&field) {
        return None;
    }
    match message.get_field(&field) {
        std::borrow::Cow::Borrowed(value) => value.as_message(),
        // Present fields are borrowed; an owned value would be a default.
        std::borrow::Cow::Owned(_) => None,
    }
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
