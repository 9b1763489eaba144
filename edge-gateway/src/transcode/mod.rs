//! REST ↔ protobuf: builds the request message from path bindings, query string and JSON body,
//! and renders response messages as proto3 JSON. Everything is descriptor-driven.
//!
//! Path and query values are first placed into one JSON document next to the body, typed by the
//! target field's kind, and the document is parsed once by prost-reflect's proto3 JSON reader:
//! one parser, one set of error messages, and well-known types for free.
//!
//! - `request`: path bindings + query + JSON body → one document → the request message, with
//!   its `buf.validate` rules checked; every problem of a request reported at once.
//! - `response`: the upstream's message → proto3 JSON (`response_body`, int64 as numbers),
//!   the `Location` header.
//! - `error`: what a client sent wrong (per field, with where it came from) and what the
//!   upstream answered that cannot be read.

mod error;
mod request;
mod response;

use prost_reflect::{DeserializeOptions, SerializeOptions};

pub use self::{
    error::{Expected, FieldError, Problem, ResponseDecodeError, Source, TranscodeError},
    request::build_request,
    response::{decode_response, encode, fill_location, message_json, render_response},
};

/// The REST JSON conventions (`gateway.json`).
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

#[cfg(test)]
mod tests;
