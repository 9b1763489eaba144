//! What a request is: its protocol, its gRPC method (from the gRPC path or a REST route) and
//! the readable fields of its message.

use std::sync::Arc;

use meshgate_wire::content_type::Protocol;
use meshgate_wire::grpc::{self, FrameError};
use meshgate_wire::grpc_web;
use meshgate_wire::routes::{BodyTarget, Side};

use crate::catalog::{Catalog, MessageId, MethodId};
use crate::fields::{FieldPath, query_pairs};
use crate::host::{Host, header_value};

/// The request as the filters classify it at `on_request_headers`: what was worked out once
/// ([`Identity`]) and the request-header changes made since, both shared. The bundle makes a
/// copy whenever a member changes a header (later members read the target as it is then):
/// a copy and a change each cost one link, not a copy of what came before.
#[derive(Debug, Clone)]
pub struct RequestTarget {
    identity: Arc<Identity>,
    /// The newest change made after identification, linked to the ones before it.
    changed: Option<Arc<HeaderChange>>,
}

/// A request-header change: the lower-case name, the value (`None`: removed), the change
/// before it.
#[derive(Debug)]
struct HeaderChange {
    name: String,
    value: Option<String>,
    earlier: Option<Arc<HeaderChange>>,
}

impl RequestTarget {
    /// The changes, newest first (a name may recur: its newest change holds).
    fn changes(&self) -> impl Iterator<Item = &HeaderChange> {
        std::iter::successors(self.changed.as_deref(), |change| change.earlier.as_deref())
    }
}

/// What a request is, worked out once per request (see [`RequestTarget`]).
#[derive(Debug)]
pub struct Identity {
    pub protocol: Protocol,
    pub http_method: String,
    pub path: String,
    /// The gRPC method, in `catalog`'s schema.
    pub method: Option<MethodId>,
    pub catalog: Arc<Catalog>,
    /// REST only: the rule's `body` and `response_body` (`None`: the whole message), and the
    /// path bindings.
    pub rest_body: Option<BodyTarget>,
    pub rest_response_body: Option<String>,
    pub bindings: Vec<(String, String)>,
    pub query: Vec<(String, String)>,
    /// The request headers as they were at `on_request_headers`, fetched in one host call
    /// (each host call crosses the wasm boundary; a filter reads several headers).
    headers: Vec<(String, String)>,
}

impl std::ops::Deref for RequestTarget {
    type Target = Identity;
    fn deref(&self) -> &Identity {
        &self.identity
    }
}

impl Identity {
    fn inspect(catalog: Arc<Catalog>, host: &dyn Host) -> Self {
        let headers = host.request_headers();
        let get = |name: &str| header_value(&headers, name).map(str::to_owned);
        let protocol = Protocol::from_content_type(header_value(&headers, "content-type"));
        let http_method = get(":method").unwrap_or_default();
        let path = get(":path").unwrap_or_default();
        let mut identity = Self {
            protocol,
            http_method,
            path,
            method: None,
            catalog,
            rest_body: None,
            rest_response_body: None,
            bindings: Vec::new(),
            query: Vec::new(),
            headers,
        };
        if protocol.is_grpc_family() {
            identity.method = grpc::split_path(&identity.path)
                .and_then(|(service, method)| identity.catalog.method(service, method));
        } else if let Some((route, bindings)) = identity
            .catalog
            .route(&identity.http_method, &identity.path)
        {
            identity.method = Some(route.method);
            identity.rest_body = Some(route.body.clone());
            identity.rest_response_body = route.response_body.clone();
            identity.bindings = bindings;
            identity.query = query_pairs(&identity.path);
        }
        identity
    }
}

impl RequestTarget {
    /// What the request is. A host that runs several filters on one stream (the bundle)
    /// hands back what an earlier filter with the same catalog worked out, so the headers are
    /// fetched and the route matched once per request.
    pub fn identify(catalog: &Arc<Catalog>, host: &dyn Host) -> Arc<Self> {
        if let Some(target) = host.shared_target(catalog) {
            return target;
        }
        let target = Arc::new(Self {
            identity: Arc::new(Identity::inspect(Arc::clone(catalog), host)),
            changed: None,
        });
        host.share_target(catalog, &target);
        target
    }

    /// A request header from the snapshot taken at identification (with later changes).
    pub fn header(&self, name: &str) -> Option<&str> {
        if let Some(change) = self
            .changes()
            .find(|change| change.name.eq_ignore_ascii_case(name))
        {
            return change.value.as_deref();
        }
        header_value(&self.headers, name)
    }

    /// The announced body length, if any.
    pub fn content_length(&self) -> Option<usize> {
        self.header("content-length")?.trim().parse().ok()
    }

    /// `package.Service/Method`, when known.
    pub fn method_name(&self) -> Option<String> {
        self.qualified().map(str::to_owned)
    }

    /// [`RequestTarget::method_name`] without the copy.
    pub fn qualified(&self) -> Option<&str> {
        self.method.map(|m| self.catalog.qualified_name(m))
    }

    /// Applies a request-header change made after identification, so filters that read the
    /// shared target later see the headers as they are now.
    pub fn set_header(&mut self, name: &str, value: Option<&str>) {
        self.changed = Some(Arc::new(HeaderChange {
            name: name.to_ascii_lowercase(),
            value: value.map(str::to_owned),
            earlier: self.changed.take(),
        }));
    }

    /// The request headers, with later changes applied.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        let changed = |name: &str| self.changes().any(|c| c.name.eq_ignore_ascii_case(name));
        let set = self
            .changes()
            .enumerate()
            .filter_map(move |(newer, change)| {
                let newest = !self
                    .changes()
                    .take(newer)
                    .any(|c| c.name.eq_ignore_ascii_case(&change.name));
                Some((
                    change.name.as_str(),
                    change.value.as_deref().filter(|_| newest)?,
                ))
            });
        self.headers
            .iter()
            .filter(move |(k, _)| !changed(k))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(set)
    }

    /// Whether the request message (or part of it) travels in the body.
    pub fn message_in_body(&self) -> bool {
        match self.protocol {
            Protocol::Http => matches!(
                self.rest_body,
                Some(BodyTarget::Whole | BodyTarget::Field(_))
            ),
            _ => self.method.is_some(),
        }
    }

    /// Decodes a complete request body into something fields can be read from (REST: JSON
    /// text, checked here and read field by field without building a document).
    pub fn decode_request(&self, body: &[u8]) -> Result<Decoded, BodyError> {
        let Some(method) = self.method else {
            return Ok(Decoded::Nothing);
        };
        match self.protocol {
            Protocol::Http => {
                if body.is_empty() {
                    return Ok(Decoded::Nothing);
                }
                json_text(body)
            }
            protocol => self.decode_grpc_message(protocol, body, method, Side::Input),
        }
    }

    /// Reads a request field from the path bindings, the decoded body, then the query string.
    pub fn read_request_field(&self, decoded: &Decoded, path: &FieldPath) -> Option<String> {
        if let Some(value) = path.read_pairs(&self.bindings) {
            return Some(value);
        }
        match decoded {
            Decoded::Message(message) => return message.read(path),
            Decoded::JsonText(text) => {
                let value = match &self.rest_body {
                    Some(BodyTarget::Whole) => path.read_json_text(text),
                    Some(BodyTarget::Field(field)) => path.read_json_text_below(field, text),
                    Some(BodyTarget::None) | None => None,
                };
                if value.is_some() {
                    return value;
                }
            }
            Decoded::Nothing => {}
        }
        path.read_pairs(&self.query)
    }

    /// Reads `paths` from a complete response body (gRPC family: the output message; REST:
    /// the JSON answer, which is the rule's `response_body` field when it has one: paths below
    /// that field are read below the JSON's top level, other paths are not in the answer).
    /// A body that is not the message or not JSON is an error. REST JSON is checked by the
    /// first read rather than by a pass of its own: one read goes through the whole text.
    pub fn read_response_fields<'p>(
        &self,
        body: &[u8],
        paths: impl IntoIterator<Item = &'p FieldPath>,
    ) -> Result<Vec<Option<String>>, BodyError> {
        let Some(method) = self.method else {
            return Ok(paths.into_iter().map(|_| None).collect());
        };
        if self.protocol != Protocol::Http {
            let decoded = self.decode_grpc_message(self.protocol, body, method, Side::Output)?;
            return Ok(paths.into_iter().map(|path| decoded.read(path)).collect());
        }
        let below = self.rest_response_body.as_deref().filter(|f| !f.is_empty());
        let mut checked = false;
        let mut values = Vec::new();
        for path in paths {
            let skip = match below {
                Some(field) => path.parts_below(field),
                None => Some(0),
            };
            let value = match skip {
                None => None,
                Some(skip) if checked => path.read_json_text_from(skip, body),
                Some(skip) => {
                    checked = true;
                    path.read_json_text_checked(skip, body)
                        .map_err(|e| BodyError::Json(e.to_string()))?
                }
            };
            values.push(value);
        }
        if !checked {
            serde_json::from_slice::<serde::de::IgnoredAny>(body)
                .map_err(|e| BodyError::Json(e.to_string()))?;
        }
        Ok(values)
    }

    /// The first message of a gRPC-family body, checked against the method's message.
    fn decode_grpc_message(
        &self,
        protocol: Protocol,
        body: &[u8],
        method: MethodId,
        side: Side,
    ) -> Result<Decoded, BodyError> {
        let decoded_text;
        let binary = if protocol == Protocol::GrpcWebText {
            decoded_text = grpc_web::decode_text(body)?;
            decoded_text.as_slice()
        } else {
            body
        };
        let Some(payload) = grpc::first_message(binary)? else {
            return Ok(Decoded::Nothing);
        };
        let message = self.catalog.message_of(method, side);
        self.catalog
            .schema()
            .check(message, payload)
            .map_err(|e| BodyError::Protobuf(e.to_string()))?;
        Ok(Decoded::Message(EncodedMessage {
            catalog: Arc::clone(&self.catalog),
            message,
            bytes: payload.to_vec(),
        }))
    }
}

/// A body checked to be JSON, to be read field by field without building the whole document.
fn json_text(body: &[u8]) -> Result<Decoded, BodyError> {
    serde_json::from_slice::<serde::de::IgnoredAny>(body)
        .map(|_| Decoded::JsonText(body.to_vec()))
        .map_err(|e| BodyError::Json(e.to_string()))
}

/// A protobuf message checked against its schema, read field by field.
#[derive(Debug, Clone)]
pub struct EncodedMessage {
    catalog: Arc<Catalog>,
    message: MessageId,
    bytes: Vec<u8>,
}

impl EncodedMessage {
    pub fn read(&self, path: &FieldPath) -> Option<String> {
        path.read_message(self.catalog.schema(), self.message, &self.bytes)
    }
}

/// A decoded body.
#[derive(Debug, Clone)]
pub enum Decoded {
    Message(EncodedMessage),
    /// Valid JSON text, read with [`FieldPath::read_json_text`].
    JsonText(Vec<u8>),
    Nothing,
}

impl Decoded {
    /// Reads a field of a decoded response (no bindings or query involved).
    pub fn read(&self, path: &FieldPath) -> Option<String> {
        match self {
            Self::Message(m) => m.read(path),
            Self::JsonText(text) => path.read_json_text(text),
            Self::Nothing => None,
        }
    }
}

/// Why a body was passed through unread (each is counted by the filters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("body larger than maxBodyBytes")]
    Oversized,
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("protobuf decode failed: {0}")]
    Protobuf(String),
    #[error("JSON decode failed: {0}")]
    Json(String),
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use prost::Message as _;

    use super::*;
    use crate::test_host::TestHost;

    fn target(headers: &[(&str, &str)]) -> Arc<RequestTarget> {
        let catalog = Catalog::shared(None).unwrap();
        RequestTarget::identify(&catalog, &TestHost::with_request(headers))
    }

    fn get_user_frame(id: &str) -> Vec<u8> {
        let msg = meshgate_proto::user::GetUserRequest { id: id.into() };
        grpc::message_frame(&msg.encode_to_vec())
    }

    #[test]
    fn grpc_request_fields() {
        let t = target(&[
            (":method", "POST"),
            (":path", "/user.UserService/GetUser"),
            ("content-type", "application/grpc"),
        ]);
        assert_eq!(t.method_name().as_deref(), Some("user.UserService/GetUser"));
        assert!(t.message_in_body());
        let decoded = t.decode_request(&get_user_frame("u-7")).unwrap();
        let id = FieldPath::parse("id").unwrap();
        assert_eq!(t.read_request_field(&decoded, &id).as_deref(), Some("u-7"));
    }

    #[test]
    fn grpc_web_text_request_fields() {
        let t = target(&[
            (":method", "POST"),
            (":path", "/user.UserService/GetUser"),
            ("content-type", "application/grpc-web-text"),
        ]);
        let body = base64::engine::general_purpose::STANDARD.encode(get_user_frame("u-8"));
        let decoded = t.decode_request(body.as_bytes()).unwrap();
        let id = FieldPath::parse("id").unwrap();
        assert_eq!(t.read_request_field(&decoded, &id).as_deref(), Some("u-8"));
    }

    #[test]
    fn rest_fields_from_path_query_and_json() {
        let t = target(&[(":method", "GET"), (":path", "/v1/users/u-9?x=1")]);
        assert_eq!(t.method_name().as_deref(), Some("user.UserService/GetUser"));
        assert!(!t.message_in_body());
        let id = FieldPath::parse("id").unwrap();
        assert_eq!(
            t.read_request_field(&Decoded::Nothing, &id).as_deref(),
            Some("u-9")
        );

        let t = target(&[(":method", "GET"), (":path", "/v1/users?page=3")]);
        let page = FieldPath::parse("page").unwrap();
        assert_eq!(
            t.read_request_field(&Decoded::Nothing, &page).as_deref(),
            Some("3")
        );

        let t = target(&[(":method", "POST"), (":path", "/v1/users")]);
        assert!(t.message_in_body());
        let decoded = t
            .decode_request(br#"{"email":"a@b.c","name":"A"}"#)
            .unwrap();
        let email = FieldPath::parse("email").unwrap();
        assert_eq!(
            t.read_request_field(&decoded, &email).as_deref(),
            Some("a@b.c")
        );
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        let t = target(&[
            (":method", "POST"),
            (":path", "/user.UserService/GetUser"),
            ("content-type", "application/grpc"),
        ]);
        assert!(matches!(
            t.decode_request(&[0, 0, 0, 0, 3, 0xff, 0xff, 0xff]),
            Err(BodyError::Protobuf(_))
        ));
        assert!(matches!(
            t.decode_request(&[0, 0]),
            Err(BodyError::Frame(_))
        ));
        let rest = target(&[(":method", "POST"), (":path", "/v1/users")]);
        assert!(matches!(
            rest.decode_request(b"{nope"),
            Err(BodyError::Json(_))
        ));
    }

    #[test]
    fn header_changes_after_identification_are_seen_newest_first() {
        let shared = target(&[
            (":method", "GET"),
            (":path", "/v1/users/1"),
            ("x-a", "1"),
            ("x-b", "2"),
        ]);
        let mut t = (*shared).clone();
        t.set_header("X-A", Some("3"));
        t.set_header("x-c", Some("4"));
        t.set_header("x-b", None);
        t.set_header("x-c", Some("5"));
        assert_eq!(t.header("x-a"), Some("3"));
        assert_eq!(t.header("X-B"), None);
        assert_eq!(t.header("x-c"), Some("5"));
        let mut all: Vec<_> = t.headers().collect();
        all.sort_unstable();
        assert_eq!(
            all,
            [
                (":method", "GET"),
                (":path", "/v1/users/1"),
                ("x-a", "3"),
                ("x-c", "5")
            ]
        );
        // The copy it was made from is unchanged.
        assert_eq!(shared.header("x-a"), Some("1"));
        assert_eq!(shared.headers().count(), 4);
    }

    #[test]
    fn unknown_requests_have_no_method() {
        let t = target(&[(":method", "GET"), (":path", "/healthz")]);
        assert!(t.method.is_none());
        let t = target(&[
            (":method", "POST"),
            (":path", "/other.Service/Call"),
            ("content-type", "application/grpc"),
        ]);
        assert!(t.method.is_none());
    }
}
