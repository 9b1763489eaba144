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

/// The request as the filters classify it at `on_request_headers`.
#[derive(Debug, Clone)]
pub struct RequestTarget {
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
    /// (each host call crosses the wasm boundary; a filter reads several headers). Shared, so
    /// a copy of the target for another filter does not copy them.
    headers: Arc<Vec<(String, String)>>,
    /// Changes made after identification (last one wins), over `headers`.
    changed: Vec<(String, Option<String>)>,
    /// `package.Service/Method`, worked out once.
    qualified: Option<String>,
}

impl RequestTarget {
    /// What the request is. A host that runs several filters on one stream (the bundle)
    /// hands back what an earlier filter with the same catalog worked out, so the headers are
    /// fetched and the route matched once per request.
    pub fn identify(catalog: &Arc<Catalog>, host: &dyn Host) -> Arc<Self> {
        if let Some(target) = host.shared_target(catalog) {
            return target;
        }
        let target = Arc::new(Self::inspect(Arc::clone(catalog), host));
        host.share_target(catalog, &target);
        target
    }

    fn inspect(catalog: Arc<Catalog>, host: &dyn Host) -> Self {
        let headers = host.request_headers();
        let get = |name: &str| header_value(&headers, name).map(str::to_owned);
        let protocol = Protocol::from_content_type(get("content-type").as_deref());
        let http_method = get(":method").unwrap_or_default();
        let path = get(":path").unwrap_or_default();
        let mut target = Self {
            protocol,
            http_method,
            path,
            method: None,
            catalog,
            rest_body: None,
            rest_response_body: None,
            bindings: Vec::new(),
            query: Vec::new(),
            headers: Arc::new(headers),
            changed: Vec::new(),
            qualified: None,
        };
        if protocol.is_grpc_family() {
            target.method = grpc::split_path(&target.path)
                .and_then(|(service, method)| target.catalog.method(service, method));
        } else if let Some((route, bindings)) =
            target.catalog.route(&target.http_method, &target.path)
        {
            target.method = Some(route.method);
            target.rest_body = Some(route.body.clone());
            target.rest_response_body = route.response_body.clone();
            target.bindings = bindings;
            target.query = query_pairs(&target.path);
        }
        target.qualified = target.method.map(|m| target.catalog.qualified_name(m));
        target
    }

    /// A request header from the snapshot taken at identification (with later changes).
    pub fn header(&self, name: &str) -> Option<&str> {
        if let Some((_, value)) = self
            .changed
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
        {
            return value.as_deref();
        }
        header_value(&self.headers, name)
    }

    /// The announced body length, if any.
    pub fn content_length(&self) -> Option<usize> {
        self.header("content-length")?.trim().parse().ok()
    }

    /// `package.Service/Method`, when known.
    pub fn method_name(&self) -> Option<String> {
        self.qualified.clone()
    }

    /// [`RequestTarget::method_name`] without the copy.
    pub fn qualified(&self) -> Option<&str> {
        self.qualified.as_deref()
    }

    /// Applies a request-header change made after identification, so filters that read the
    /// shared target later see the headers as they are now.
    pub fn set_header(&mut self, name: &str, value: Option<&str>) {
        self.changed.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.changed
            .push((name.to_ascii_lowercase(), value.map(str::to_owned)));
    }

    /// The request headers, with later changes applied.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        let changed = &self.changed;
        self.headers
            .iter()
            .filter(move |(k, _)| !changed.iter().any(|(c, _)| c.eq_ignore_ascii_case(k)))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(
                changed
                    .iter()
                    .filter_map(|(k, v)| Some((k.as_str(), v.as_deref()?))),
            )
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

    /// Decodes a complete request body into something fields can be read from.
    pub fn decode_request(&self, body: &[u8]) -> Result<Decoded, BodyError> {
        let Some(method) = self.method else {
            return Ok(Decoded::Nothing);
        };
        match self.protocol {
            Protocol::Http => {
                if body.is_empty() {
                    return Ok(Decoded::Nothing);
                }
                serde_json::from_slice(body)
                    .map(Decoded::Json)
                    .map_err(|e| BodyError::Json(e.to_string()))
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
            Decoded::Json(json) => {
                if let Some(value) = self.read_rest_json(json, path) {
                    return Some(value);
                }
            }
            Decoded::JsonText(text) => {
                if let Ok(json) = serde_json::from_slice(text)
                    && let Some(value) = self.read_rest_json(&json, path)
                {
                    return Some(value);
                }
            }
            Decoded::Nothing => {}
        }
        path.read_pairs(&self.query)
    }

    fn read_rest_json(&self, json: &serde_json::Value, path: &FieldPath) -> Option<String> {
        match &self.rest_body {
            Some(BodyTarget::Whole) => path.read_json(json),
            Some(BodyTarget::Field(field)) => {
                let rest = path
                    .as_str()
                    .strip_prefix(field.as_str())?
                    .strip_prefix('.')?;
                FieldPath::parse(rest).ok()?.read_json(json)
            }
            Some(BodyTarget::None) | None => None,
        }
    }

    /// Reads a field of the response message. A REST answer is the JSON of the rule's
    /// `response_body` field when it has one: paths below that field are read below the JSON's
    /// top level, and other paths are not in the answer.
    pub fn read_response_field(&self, decoded: &Decoded, path: &FieldPath) -> Option<String> {
        match (decoded, self.rest_response_body.as_deref()) {
            (Decoded::Json(_) | Decoded::JsonText(_), Some(field)) if !field.is_empty() => {
                let rest = path.as_str().strip_prefix(field)?.strip_prefix('.')?;
                decoded.read(&FieldPath::parse(rest).ok()?)
            }
            _ => decoded.read(path),
        }
    }

    /// Decodes a complete response body (gRPC family: the output message; REST: JSON).
    pub fn decode_response(&self, body: &[u8]) -> Result<Decoded, BodyError> {
        let Some(method) = self.method else {
            return Ok(Decoded::Nothing);
        };
        match self.protocol {
            // Checked here (a bad body is counted), read later field by field without
            // building the whole document.
            Protocol::Http => serde_json::from_slice::<serde::de::IgnoredAny>(body)
                .map(|_| Decoded::JsonText(body.to_vec()))
                .map_err(|e| BodyError::Json(e.to_string())),
            protocol => self.decode_grpc_message(protocol, body, method, Side::Output),
        }
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
    Json(serde_json::Value),
    /// Valid JSON text, read with [`FieldPath::read_json_text`].
    JsonText(Vec<u8>),
    Nothing,
}

impl Decoded {
    /// Reads a field of a decoded response (no bindings or query involved).
    pub fn read(&self, path: &FieldPath) -> Option<String> {
        match self {
            Self::Message(m) => m.read(path),
            Self::Json(j) => path.read_json(j),
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
