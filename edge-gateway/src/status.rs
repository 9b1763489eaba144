//! gRPC status → HTTP status, and `google.rpc.Status` JSON error bodies.

use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::{Value, json};
use tonic::Code;

use crate::transcode::{JsonOptions, message_json};

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

fn decode_details(pool: &DescriptorPool, bytes: &[u8]) -> Option<Value> {
    let descriptor = pool.get_message_by_name("google.rpc.Status")?;
    let status = DynamicMessage::decode(descriptor, bytes).ok()?;
    let options = JsonOptions {
        use_proto_field_names: false,
        emit_defaults: false,
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
