//! REST request → protobuf message, the way `proxy::rest` does it: a request path rendered
//! from a route's template with arbitrary values (or an arbitrary raw path) goes through
//! `Router::lookup`, and the bindings it returns, an arbitrary query string and an arbitrary
//! JSON body go through `transcode::build_request`. Runs against the real contract and the
//! gateway's test proto (nested/repeated/map/oneof/enum/well-known-type fields, `body: "field"`).
//!
//! Invariants beyond "no panic":
//! - a path rendered from a route's template is found by the router, and when that route wins
//!   the bindings are exactly the values that were rendered into it;
//! - a rejected request is a client error: it rescues to HTTP 400 with a non-empty message;
//! - an accepted request's path-bound string fields hold the bound value (the path wins over
//!   body and query);
//! - the message survives the wire (encode → decode) and proto3 JSON (render → parse → render)
//!   unchanged.
#![no_main]

mod common;

use arbitrary::Arbitrary;
use edge_gateway::error::GatewayError;
use edge_gateway::transcode::{self, JsonOptions};
use libfuzzer_sys::fuzz_target;
use meshgate_wire::routes::RouteMiss;
use prost_reflect::{DynamicMessage, Kind, ReflectMessage, Value as ProtoValue};
use serde_json::{Map, Number, Value};

#[derive(Debug, Arbitrary)]
struct Input {
    kitchen: bool,
    route: u8,
    path: PathInput,
    query: Option<QueryInput>,
    body: BodyInput,
    /// `gateway.json.ignore_unknown_fields` (the facade style's choice).
    ignore_unknown_fields: bool,
}

#[derive(Debug, Arbitrary)]
enum PathInput {
    /// The chosen route's template expanded with these values.
    Rendered(common::Fill),
    /// Anything, looked up with the chosen route's HTTP method.
    Raw(String),
}

#[derive(Debug, Arbitrary)]
enum QueryInput {
    Raw(String),
    /// Names drawn from the input message's field paths (proto and JSON spellings, nested),
    /// values form-encoded.
    Pairs(Vec<(FieldPick, String)>),
}

#[derive(Debug, Arbitrary)]
enum FieldPick {
    Known(u8),
    Other(String),
}

#[derive(Debug, Arbitrary)]
enum BodyInput {
    Raw(Vec<u8>),
    /// An object whose keys are the input message's field names.
    Object(Vec<(FieldPick, Json)>),
    Value(Json),
}

/// JSON values shaped like what proto3 JSON fields take (and like what they don't).
#[derive(Debug, Arbitrary)]
enum Json {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    /// Strings that proto3 JSON gives meaning to: numbers, enums, timestamps, durations, base64.
    Special(u8, i64),
    Array(Vec<Json>),
    Object(Vec<(FieldPick, Json)>),
}

const SPECIAL: &[&str] = &[
    "NaN",
    "Infinity",
    "-Infinity",
    "1e400",
    "-0",
    "0x10",
    "1.0",
    "1.5",
    "RED",
    "GREEN",
    "COLOR_UNSPECIFIED",
    "BLUE",
    "1970-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999999Z",
    "10000-01-01T00:00:00Z",
    "0001-01-01T00:00:00Z",
    "2024-02-30T00:00:00Z",
    "2024-01-01T00:00:00+25:00",
    "1.5s",
    "-315576000000s",
    "315576000001s",
    "0.000000001s",
    "1.0000000001s",
    "s",
    "AAEC",
    "AAE=",
    "-_8",
    "====",
    "true",
    "false",
    "",
];

/// Field paths of the input message, two levels deep, in both spellings.
fn field_paths(message: &prost_reflect::MessageDescriptor) -> Vec<String> {
    let mut out = Vec::new();
    for field in message.fields() {
        for name in [field.name(), field.json_name()] {
            out.push(name.to_owned());
            if let Kind::Message(inner) = field.kind() {
                for child in inner.fields() {
                    out.push(format!("{name}.{}", child.name()));
                    out.push(format!("{name}.{}", child.json_name()));
                }
            }
        }
    }
    out
}

fn pick_name(pick: &FieldPick, names: &[String]) -> String {
    match pick {
        FieldPick::Known(index) if !names.is_empty() => {
            names[usize::from(*index) % names.len()].clone()
        }
        FieldPick::Known(_) => String::new(),
        FieldPick::Other(name) => name.clone(),
    }
}

fn to_json(value: &Json, names: &[String], depth: usize) -> Value {
    match value {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Int(n) => Value::Number((*n).into()),
        Json::UInt(n) => Value::Number((*n).into()),
        Json::Float(f) => Number::from_f64(*f).map_or(Value::Null, Value::Number),
        Json::Str(s) => Value::String(s.clone()),
        Json::Special(index, n) => {
            let text = SPECIAL[usize::from(*index) % SPECIAL.len()];
            Value::String(if *index as usize >= SPECIAL.len() {
                format!("{n}{text}")
            } else {
                text.to_owned()
            })
        }
        Json::Array(items) if depth < 8 => {
            Value::Array(items.iter().map(|v| to_json(v, names, depth + 1)).collect())
        }
        Json::Object(pairs) if depth < 8 => Value::Object(object(pairs, names, depth + 1)),
        Json::Array(_) | Json::Object(_) => Value::Null,
    }
}

fn object(pairs: &[(FieldPick, Json)], names: &[String], depth: usize) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(pick, value)| {
            // Nested paths are for the query string; in a body, only the leaf name is a key.
            let name = pick_name(pick, names);
            let key = name.rsplit('.').next().unwrap_or_default().to_owned();
            (key, to_json(value, names, depth))
        })
        .collect()
}

fn form_encode(text: &str) -> String {
    common::encode_segment(text).replace("%20", "+")
}

/// The field at a dotted path of the message, if set.
fn field_value(message: &DynamicMessage, path: &str) -> Option<ProtoValue> {
    let mut current = message.clone();
    let parts: Vec<&str> = path.split('.').collect();
    for (index, part) in parts.iter().enumerate() {
        let descriptor = current.descriptor();
        let field = descriptor
            .get_field_by_name(part)
            .or_else(|| descriptor.get_field_by_json_name(part))?;
        let value = current.get_field(&field).into_owned();
        if index == parts.len() - 1 {
            return Some(value);
        }
        current = value.as_message()?.clone();
    }
    None
}

fuzz_target!(|input: Input| {
    let api = common::api(input.kitchen);
    let routes = api.router.routes();
    let chosen = &routes[usize::from(input.route) % routes.len()];
    let method = chosen.http_method.clone();
    let path = match &input.path {
        PathInput::Rendered(fill) => {
            let (path, expected) = common::render(&chosen.template, fill);
            match api.router.lookup(&method, &path) {
                Ok((route, bindings)) => {
                    if std::sync::Arc::ptr_eq(&route, chosen) {
                        assert_eq!(
                            bindings,
                            expected,
                            "bindings of {path} via {}",
                            chosen.label()
                        );
                    } else {
                        // Another route claimed it; it must rank at least as specific.
                        assert!(
                            route.template.specificity() >= chosen.template.specificity(),
                            "{path}: {} won over {}",
                            route.label(),
                            chosen.label()
                        );
                    }
                }
                Err(miss) => panic!(
                    "{path} rendered from {} not found: {miss:?}",
                    chosen.label()
                ),
            }
            path
        }
        PathInput::Raw(raw) => raw.clone(),
    };
    let (route, bindings) = match api.router.lookup(&method, &path) {
        Ok(found) => found,
        Err(RouteMiss::NotFound) => return,
        Err(RouteMiss::MethodNotAllowed(allow)) => {
            assert!(
                !allow.is_empty() && !allow.contains(&method),
                "{path}: {allow:?}"
            );
            return;
        }
    };
    let input_message = route.input();
    let names = field_paths(&input_message);
    let query = input.query.as_ref().map(|query| match query {
        QueryInput::Raw(raw) => raw.clone(),
        QueryInput::Pairs(pairs) => pairs
            .iter()
            .map(|(pick, value)| {
                format!(
                    "{}={}",
                    form_encode(&pick_name(pick, &names)),
                    form_encode(value)
                )
            })
            .collect::<Vec<_>>()
            .join("&"),
    });
    let body: Vec<u8> = match &input.body {
        BodyInput::Raw(bytes) => bytes.clone(),
        BodyInput::Object(pairs) => {
            serde_json::to_vec(&Value::Object(object(pairs, &names, 0))).expect("serializes")
        }
        BodyInput::Value(value) => {
            serde_json::to_vec(&to_json(value, &names, 0)).expect("serializes")
        }
    };

    let request_options = JsonOptions {
        ignore_unknown_fields: input.ignore_unknown_fields,
        ..JsonOptions::default()
    };
    let message = match transcode::build_request(
        &route,
        &bindings,
        query.as_deref(),
        &body,
        request_options,
        &api.validators,
    ) {
        Ok(message) => message,
        Err(error) => {
            let rescued = GatewayError::BadRequest(error).rescue();
            assert_eq!(rescued.http_status, 400);
            assert!(!rescued.message.is_empty());
            return;
        }
    };
    assert_eq!(message.descriptor(), input_message);

    // The path wins: a bound string field holds exactly the bound value.
    for (field_path, value) in &bindings {
        if let Some(ProtoValue::String(held)) = field_value(&message, field_path) {
            assert_eq!(&held, value, "{field_path} of {path}");
        }
    }

    // Wire round trip.
    let wire = transcode::encode(&message);
    let decoded = transcode::decode_response(&input_message, &wire).expect("own encoding decodes");
    let options = JsonOptions {
        use_proto_field_names: false,
        emit_defaults: false,
        ..JsonOptions::default()
    };
    let json = transcode::message_json(&message, options).expect("an accepted message renders");
    assert_eq!(
        transcode::message_json(&decoded, options).as_ref(),
        Ok(&json)
    );

    // proto3 JSON round trip.
    let reparsed = DynamicMessage::deserialize(input_message.clone(), json.clone())
        .unwrap_or_else(|e| panic!("rendered JSON {json} does not parse back: {e}"));
    assert_eq!(
        transcode::message_json(&reparsed, options).as_ref(),
        Ok(&json)
    );
});
