//! gRPC status → HTTP status, and the JSON error bodies: `google.rpc.Status`, and with
//! `gateway.json.error_detail` the same object plus a FastAPI-style `detail` (the message, or
//! for request-validation failures a 422 with one `{loc, msg, type}` item per problem).

use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::{Value, json};
use tonic::Code;

use crate::transcode::{Expected, FieldError, JsonOptions, Problem, TranscodeError, message_json};
use crate::validate::ViolationKind;

/// HTTP status of a request-validation failure with `gateway.json.error_detail`.
pub const VALIDATION_FAILED: u16 = 422;

/// HTTP status for a gRPC code as on the wire, per google/rpc/code.proto (codes outside the
/// enum are UNKNOWN).
pub fn http_status_for(code: i32) -> u16 {
    match Code::from_i32(code) {
        Code::Ok => 200,
        Code::Cancelled => 499,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => 400,
        Code::DeadlineExceeded => 504,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::PermissionDenied => 403,
        Code::ResourceExhausted => 429,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::Unauthenticated => 401,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
    }
}

/// The gRPC code a gateway-made HTTP error corresponds to.
pub fn grpc_code_for_http(status: u16) -> Code {
    match status {
        400 | 405 | 411 | 413 | 415 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 => Code::AlreadyExists,
        429 => Code::ResourceExhausted,
        499 => Code::Cancelled,
        501 => Code::Unimplemented,
        503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        _ => Code::Internal,
    }
}

/// `{code, message, details}` with details decoded from `grpc-status-details-bin` (an encoded
/// google.rpc.Status) when it is present and decodable with the pool; `Any` details resolve
/// through the pool, so BadRequest field violations show up as JSON.
pub fn status_json(
    pool: &DescriptorPool,
    code: i32,
    message: &str,
    details_bin: Option<&[u8]>,
) -> Vec<u8> {
    let details = details_bin
        .filter(|bytes| !bytes.is_empty())
        .and_then(|bytes| decode_details(pool, bytes))
        .unwrap_or_else(|| Value::Array(Vec::new()));
    serde_json::to_vec(&json!({ "code": code, "message": message, "details": details }))
        .expect("a JSON value always serializes")
}

/// [`status_json`] plus `detail`: the items when given (a validation failure), else the message.
pub fn detail_json(
    pool: &DescriptorPool,
    code: i32,
    message: &str,
    details_bin: Option<&[u8]>,
    items: Option<Vec<Value>>,
) -> Vec<u8> {
    let mut body: Value = serde_json::from_slice(&status_json(pool, code, message, details_bin))
        .expect("status_json writes a JSON object");
    body["detail"] = items.map_or_else(|| Value::String(message.to_owned()), Value::Array);
    serde_json::to_vec(&body).expect("a JSON value always serializes")
}

/// An encoded `google.rpc.Status` (INVALID_ARGUMENT) carrying a `google.rpc.BadRequest` with a
/// field violation per problem: what gRPC-web clients get in `grpc-status-details-bin`, and
/// REST clients as `details`.
pub fn bad_request_details(error: &TranscodeError) -> Option<Vec<u8>> {
    use meshgate_proto::google::rpc::{BadRequest, Status, bad_request::FieldViolation};
    let TranscodeError::Fields(fields) = error else {
        return None;
    };
    let violations = fields
        .iter()
        .map(|field| FieldViolation {
            field: field.field.clone(),
            description: match &field.problem {
                Problem::Unknown => "unknown field".to_owned(),
                Problem::WrongType { reason, .. } | Problem::Other(reason) => reason.clone(),
                Problem::Rule(violation) => violation.message.clone(),
            },
            reason: match &field.problem {
                Problem::Rule(violation) => violation.rule_id.clone(),
                _ => String::new(),
            },
            ..Default::default()
        })
        .collect();
    let status = Status {
        code: 3,
        message: error.to_string(),
        details: vec![prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.BadRequest".into(),
            value: BadRequest {
                field_violations: violations,
            }
            .encode_to_vec(),
        }],
    };
    Some(status.encode_to_vec())
}

/// FastAPI's (pydantic's) `HTTPValidationError.detail`: one `{loc, msg, type}` item per
/// problem, `loc` starting with where the value was (`body`, `query`, `path`), plus `input`
/// (what was sent) and `ctx` (the bound) when known.
pub fn validation_items(error: &TranscodeError) -> Vec<Value> {
    match error {
        TranscodeError::MalformedJson { reason, offset } => vec![json!({
            "type": "json_invalid",
            "loc": ["body", offset],
            "msg": "JSON decode error",
            "input": {},
            "ctx": {"error": reason},
        })],
        TranscodeError::NotAnObject => vec![json!({
            "type": "model_attributes_type",
            "loc": ["body"],
            "msg": "Input should be a valid dictionary or object to extract fields from",
        })],
        TranscodeError::MissingBody => vec![json!({
            "type": "missing",
            "loc": ["body"],
            "msg": "Field required",
            "input": null,
        })],
        TranscodeError::Invalid(reason) => vec![json!({
            "type": "value_error",
            "loc": ["body"],
            "msg": reason,
        })],
        TranscodeError::Fields(fields) => fields.iter().map(field_item).collect(),
    }
}

fn field_item(field: &FieldError) -> Value {
    let mut loc = vec![Value::from(field.source.as_str())];
    loc.extend(
        field
            .field
            .split('.')
            .filter(|part| !part.is_empty())
            .map(Value::from),
    );
    let (kind, msg, ctx) = match &field.problem {
        Problem::Unknown => (
            "extra_forbidden",
            "Extra inputs are not permitted".to_owned(),
            None,
        ),
        Problem::WrongType { expected, .. } => {
            let (kind, msg) = type_problem(*expected, field.input.as_ref());
            (kind, msg.to_owned(), None)
        }
        Problem::Other(reason) => ("value_error", reason.clone(), None),
        Problem::Rule(violation) => match &violation.kind {
            ViolationKind::Required => ("missing", "Field required".to_owned(), None),
            ViolationKind::TooShort(n) => (
                "string_too_short",
                format!("String should have at least {n} character{}", plural(*n)),
                Some(json!({"min_length": n})),
            ),
            ViolationKind::TooLong(n) => (
                "string_too_long",
                format!("String should have at most {n} character{}", plural(*n)),
                Some(json!({"max_length": n})),
            ),
            ViolationKind::Email => (
                "value_error",
                "value is not a valid email address".to_owned(),
                None,
            ),
            ViolationKind::Uuid => (
                "uuid_parsing",
                "Input should be a valid UUID".to_owned(),
                None,
            ),
            ViolationKind::Below { bound, inclusive } => {
                let (kind, relation, key) = if *inclusive {
                    ("greater_than_equal", "greater than or equal to", "ge")
                } else {
                    ("greater_than", "greater than", "gt")
                };
                (
                    kind,
                    format!("Input should be {relation} {bound}"),
                    Some(json!({ key: bound.to_json() })),
                )
            }
            ViolationKind::Above { bound, inclusive } => {
                let (kind, relation, key) = if *inclusive {
                    ("less_than_equal", "less than or equal to", "le")
                } else {
                    ("less_than", "less than", "lt")
                };
                (
                    kind,
                    format!("Input should be {relation} {bound}"),
                    Some(json!({ key: bound.to_json() })),
                )
            }
            ViolationKind::NotAllowed => ("value_error", violation.message.clone(), None),
        },
    };
    let mut item = json!({ "type": kind, "loc": loc, "msg": msg });
    if let Some(input) = &field.input {
        item["input"] = input.clone();
    }
    if let Some(ctx) = ctx {
        item["ctx"] = ctx;
    }
    item
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// pydantic's type and wording for a value of the wrong JSON type.
fn type_problem(expected: Expected, input: Option<&Value>) -> (&'static str, &'static str) {
    let is_string = input.is_some_and(Value::is_string);
    match expected {
        Expected::Integer => match input {
            Some(Value::String(_)) => (
                "int_parsing",
                "Input should be a valid integer, unable to parse string as an integer",
            ),
            Some(Value::Number(n)) if n.is_f64() => (
                "int_from_float",
                "Input should be a valid integer, got a number with a fractional part",
            ),
            Some(Value::Number(_)) => (
                "int_parsing_size",
                "Input should be a valid integer, the number is out of range",
            ),
            _ => ("int_type", "Input should be a valid integer"),
        },
        Expected::Number if is_string => (
            "float_parsing",
            "Input should be a valid number, unable to parse string as a number",
        ),
        Expected::Number => ("float_type", "Input should be a valid number"),
        Expected::Boolean if is_string => (
            "bool_parsing",
            "Input should be a valid boolean, unable to interpret input",
        ),
        Expected::Boolean => ("bool_type", "Input should be a valid boolean"),
        Expected::String => ("string_type", "Input should be a valid string"),
        Expected::Bytes => ("bytes_type", "Input should be valid base64 bytes"),
        Expected::Enum => ("enum", "Input should be one of the enum's value names"),
        Expected::Object => ("dict_type", "Input should be a valid dictionary"),
        Expected::Array => ("list_type", "Input should be a valid list"),
    }
}

fn decode_details(pool: &DescriptorPool, bytes: &[u8]) -> Option<Value> {
    let descriptor = pool.get_message_by_name("google.rpc.Status")?;
    let status = DynamicMessage::decode(descriptor, bytes).ok()?;
    // Details keep proto3 JSON's own spelling whatever the response options are.
    let options = JsonOptions {
        use_proto_field_names: false,
        emit_defaults: false,
        ..JsonOptions::default()
    };
    let mut value = message_json(&status, options).ok()?;
    value.get_mut("details").map(Value::take)
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn code_table() {
        let expected = [
            (0, 200),
            (1, 499),
            (2, 500),
            (3, 400),
            (4, 504),
            (5, 404),
            (6, 409),
            (7, 403),
            (8, 429),
            (9, 400),
            (10, 409),
            (11, 400),
            (12, 501),
            (13, 500),
            (14, 503),
            (15, 500),
            (16, 401),
            (99, 500),
        ];
        for (code, http) in expected {
            assert_eq!(http_status_for(code), http, "code {code}");
        }
    }

    #[test]
    fn details_decode_bad_request_violations() {
        use meshgate_proto::google::rpc::{BadRequest, Status, bad_request::FieldViolation};
        let violation = BadRequest {
            field_violations: vec![FieldViolation {
                field: "email".into(),
                description: "must contain @".into(),
                ..Default::default()
            }],
        };
        let status = Status {
            code: 3,
            message: "invalid".into(),
            details: vec![prost_types::Any {
                type_url: "type.googleapis.com/google.rpc.BadRequest".into(),
                value: violation.encode_to_vec(),
            }],
        };
        let body = status_json(
            meshgate_proto::descriptor_pool(),
            3,
            "invalid",
            Some(&status.encode_to_vec()),
        );
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["code"], 3);
        assert_eq!(
            value["details"][0]["@type"],
            "type.googleapis.com/google.rpc.BadRequest"
        );
        assert_eq!(value["details"][0]["fieldViolations"][0]["field"], "email");
    }

    #[test]
    fn undecodable_details_are_dropped() {
        let body = status_json(
            meshgate_proto::descriptor_pool(),
            5,
            "nope",
            Some(&[0xff, 0x01]),
        );
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value, json!({"code": 5, "message": "nope", "details": []}));
    }
}
