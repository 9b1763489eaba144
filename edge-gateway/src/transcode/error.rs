//! Transcoding failures: a client's mistakes, each naming the field and where in the request
//! it came from, and an upstream answer that cannot be read.

use prost_reflect::{FieldDescriptor, Kind};
use serde_json::Value;

use crate::validate::Violation;

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
    pub(super) fn of(field: &FieldDescriptor) -> Self {
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
