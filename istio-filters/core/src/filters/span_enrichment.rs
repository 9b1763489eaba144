//! span-enrichment: gRPC service/method/status and configured message fields, exposed as
//! request headers (`x-meshgate-*`, turned into span tags by Istio Telemetry `customTags`) and
//! as filter state (`meshgate.*` via `set_property`).
//!
//! Invariants: incoming `x-meshgate-*` headers are removed first (clients cannot forge span
//! tags); trace headers (`traceparent`, `b3`, `x-b3-*`) are read, never written; response
//! values (fields, `grpc-status`) go to filter state only, since the request headers are gone
//! by then.

use std::sync::Arc;

use meshgate_wire::content_type::Protocol;
use meshgate_wire::grpc::{self, status};
use meshgate_wire::{grpc_web, trace};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::catalog::Catalog;
use crate::fields::FieldPath;
use crate::filter::{self, ConfigError, Filter, Stream};
use crate::host::{Action, Counters, Host, LogLevel};
use crate::inspect::{Decoded, RequestTarget};

pub const HEADER_PREFIX: &str = "x-meshgate-";
/// Longest header / filter-state value written; longer values are cut (span tags are small).
const MAX_VALUE_LEN: usize = 256;

// === config ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SpanEnrichmentConfig {
    pub descriptor_set: Option<String>,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u32,
    #[serde(default)]
    pub fields: Vec<FieldConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FieldConfig {
    pub path: String,
    /// Which message the path is read from.
    #[serde(default)]
    pub from: Direction,
    /// `package.Service/Method`s whose message has the field; absent = every method whose
    /// message has it.
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub redact: Redaction,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Direction {
    #[default]
    Request,
    Response,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Redaction {
    /// The value as is.
    #[default]
    None,
    /// Never emitted: the field is listed only to record the decision (and any forged header
    /// for it is still stripped).
    Drop,
    /// `sha256:<hex>` of the value: joinable across spans, not reversible for PII like emails.
    Sha256,
}

fn default_max_body() -> u32 {
    filter::DEFAULT_MAX_BODY_BYTES
}

// === compiled ===

#[derive(Debug)]
struct Field {
    path: FieldPath,
    from: Direction,
    /// Qualified names of the methods this field applies to (resolved at configure time).
    methods: Vec<String>,
    redact: Redaction,
    /// `x-meshgate-field-<path>` and `meshgate.<side>.<path>`, spelled once at configure time.
    header_name: String,
    state_key: String,
}

impl Field {
    fn new(path: FieldPath, from: Direction, methods: Vec<String>, redact: Redaction) -> Self {
        let side = match from {
            Direction::Request => "request",
            Direction::Response => "response",
        };
        Self {
            header_name: format!("{HEADER_PREFIX}field-{}", path.dashed()),
            state_key: format!("meshgate.{side}.{}", path.as_str()),
            path,
            from,
            methods,
            redact,
        }
    }
}

pub struct SpanEnrichment {
    catalog: Arc<Catalog>,
    max_body: usize,
    fields: Vec<Field>,
    counters: Counters,
}

const COUNTERS: &[&str] = &["enriched", "fields", "body_skipped"];

impl SpanEnrichment {
    pub fn compile(config: SpanEnrichmentConfig, host: &mut dyn Host) -> Result<Self, ConfigError> {
        let catalog = Catalog::shared(config.descriptor_set.as_deref())
            .map_err(|e| ConfigError::at("descriptorSet", e))?;
        let max_body = filter::check_max_body(config.max_body_bytes)?;
        let mut fields: Vec<Field> = Vec::new();
        for (i, field) in config.fields.into_iter().enumerate() {
            let at = |name: &str| format!("fields[{i}].{name}");
            let path = FieldPath::parse(&field.path).map_err(|e| ConfigError::at(at("path"), e))?;
            if fields
                .iter()
                .any(|f| f.path == path && f.from == field.from)
            {
                return Err(ConfigError::at(
                    at("path"),
                    format!("{:?} listed twice", field.path),
                ));
            }
            let message_of = |m: &prost_reflect::MethodDescriptor| match field.from {
                Direction::Request => m.input(),
                Direction::Response => m.output(),
            };
            let mut methods = Vec::new();
            if field.methods.is_empty() {
                // Every method whose message has the field.
                for route_method in catalog
                    .pool()
                    .services()
                    .flat_map(|s| s.methods().collect::<Vec<_>>())
                {
                    if path.validate(&message_of(&route_method)).is_ok() {
                        methods.push(crate::catalog::qualified_name(&route_method));
                    }
                }
                if methods.is_empty() {
                    return Err(ConfigError::at(
                        at("path"),
                        format!(
                            "no method's {:?} message has a scalar field {:?}",
                            field.from, field.path
                        ),
                    ));
                }
            } else {
                for name in &field.methods {
                    let method = catalog.method_by_name(name).ok_or_else(|| {
                        ConfigError::at(at("methods"), format!("unknown method {name:?}"))
                    })?;
                    path.validate(&message_of(&method))
                        .map_err(|e| ConfigError::at(at("path"), e))?;
                    methods.push(name.clone());
                }
            }
            fields.push(Field::new(path, field.from, methods, field.redact));
        }
        Ok(Self {
            catalog,
            max_body,
            fields,
            counters: Counters::define(host, Self::NAME, COUNTERS),
        })
    }

    fn fields_for<'a>(
        &'a self,
        method: &'a str,
        from: Direction,
    ) -> impl Iterator<Item = &'a Field> + 'a {
        self.fields
            .iter()
            .filter(move |f| f.from == from && f.methods.iter().any(|m| m == method))
    }
}

impl Filter for SpanEnrichment {
    type Stream = SpanEnrichmentStream;
    const NAME: &'static str = "meshgate_span_enrichment";

    fn configure(config: &[u8], host: &mut dyn Host) -> Result<Self, ConfigError> {
        Self::compile(filter::parse_config(config)?, host)
    }

    fn new_stream(self: &Arc<Self>) -> SpanEnrichmentStream {
        SpanEnrichmentStream {
            root: Arc::clone(self),
            target: None,
            waiting_for_request: false,
            response_body: Vec::new(),
            response_skipped: false,
            status_recorded: false,
        }
    }
}

// === stream ===

pub struct SpanEnrichmentStream {
    root: Arc<SpanEnrichment>,
    target: Option<Arc<RequestTarget>>,
    waiting_for_request: bool,
    /// A copy of the response body (the response itself streams on unheld).
    response_body: Vec<u8>,
    response_skipped: bool,
    status_recorded: bool,
}

impl Stream for SpanEnrichmentStream {
    fn on_request_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Action {
        let target = RequestTarget::identify(&self.root.catalog, host);
        let forged: Vec<&str> = target
            .headers()
            .map(|(name, _)| name)
            .filter(|name| {
                name.get(..HEADER_PREFIX.len())
                    .is_some_and(|p| p.eq_ignore_ascii_case(HEADER_PREFIX))
            })
            .collect();
        for name in forged {
            host.set_request_header(name, None);
        }
        if let Some(found) = trace::incoming(|name| target.header(name)) {
            host.set_property(&["meshgate.trace_id"], found.trace_id.as_bytes());
            host.set_property(&["meshgate.trace_format"], found.format.as_str().as_bytes());
        }
        let Some(method) = target.method.clone() else {
            return Action::Continue;
        };
        let service = method.parent_service().full_name().to_owned();
        emit(host, SERVICE_HEADER, "meshgate.grpc_service", &service);
        emit(host, METHOD_HEADER, "meshgate.grpc_method", method.name());
        self.root.counters.increment(host, "enriched");
        let qualified = crate::catalog::qualified_name(&method);
        let wants_body = self
            .root
            .fields_for(&qualified, Direction::Request)
            .next()
            .is_some()
            && target.message_in_body();
        let fits = target
            .content_length()
            .is_none_or(|len| len <= self.root.max_body);
        self.target = Some(target);
        if wants_body && !end_of_stream && fits {
            self.waiting_for_request = true;
            return Action::Pause;
        }
        if wants_body && !fits {
            self.root.counters.increment(host, "body_skipped");
        }
        self.emit_request_fields(host, &Decoded::Nothing);
        Action::Continue
    }

    fn on_request_body(
        &mut self,
        host: &mut dyn Host,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        if !self.waiting_for_request {
            return Action::Continue;
        }
        if body_size > self.root.max_body {
            self.waiting_for_request = false;
            self.root.counters.increment(host, "body_skipped");
            self.emit_request_fields(host, &Decoded::Nothing);
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.waiting_for_request = false;
        let decoded = match (&self.target, host.request_body(0, body_size)) {
            (Some(target), Some(body)) => target.decode_request(&body).unwrap_or_else(|problem| {
                self.root.counters.increment(host, "body_skipped");
                host.log(
                    LogLevel::Debug,
                    &format!("span-enrichment: request body passed through: {problem}"),
                );
                Decoded::Nothing
            }),
            _ => Decoded::Nothing,
        };
        self.emit_request_fields(host, &decoded);
        Action::Continue
    }

    fn on_response_headers(&mut self, host: &mut dyn Host, _end_of_stream: bool) -> Action {
        // Trailers-only responses carry grpc-status in the headers.
        if let Some(code) = host.response_header("grpc-status") {
            self.record_status(host, &code);
        }
        Action::Continue
    }

    fn on_response_body(
        &mut self,
        host: &mut dyn Host,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        let Some(target) = &self.target else {
            return Action::Continue;
        };
        let Some(method) = target.method_name() else {
            return Action::Continue;
        };
        // gRPC-web carries its status in a trailer frame at the end of the body.
        let web = matches!(target.protocol, Protocol::GrpcWeb | Protocol::GrpcWebText);
        let wants_fields = self
            .root
            .fields_for(&method, Direction::Response)
            .next()
            .is_some();
        if self.response_skipped || !(wants_fields || web) {
            return Action::Continue;
        }
        // body_size is this chunk when the proxy is not buffering (we never pause here).
        if self.response_body.len() + body_size > self.root.max_body {
            self.response_skipped = true;
            self.response_body = Vec::new();
            self.root.counters.increment(host, "body_skipped");
            return Action::Continue;
        }
        if let Some(chunk) = host.response_body(0, body_size) {
            self.response_body.extend_from_slice(&chunk);
        }
        if end_of_stream {
            if web {
                self.record_web_status(host);
            }
            if wants_fields {
                self.emit_response_fields(host, &method);
            }
        }
        Action::Continue
    }

    fn on_response_trailers(&mut self, host: &mut dyn Host) -> Action {
        if let Some(code) = host.response_trailer("grpc-status") {
            self.record_status(host, &code);
        }
        if let Some(method) = self.target.as_ref().and_then(|t| t.method_name())
            && !self.response_skipped
            && !self.response_body.is_empty()
        {
            self.emit_response_fields(host, &method);
        }
        Action::Continue
    }
}

impl SpanEnrichmentStream {
    fn emit_request_fields(&self, host: &mut dyn Host, decoded: &Decoded) {
        let (Some(target), root) = (&self.target, &self.root) else {
            return;
        };
        let Some(method) = target.method_name() else {
            return;
        };
        for field in root.fields_for(&method, Direction::Request) {
            let Some(value) = target.read_request_field(decoded, &field.path) else {
                continue;
            };
            let Some(value) = redact(field.redact, &value) else {
                continue;
            };
            emit(host, &field.header_name, &field.state_key, &value);
            root.counters.increment(host, "fields");
        }
    }

    fn emit_response_fields(&mut self, host: &mut dyn Host, method: &str) {
        let body = std::mem::take(&mut self.response_body);
        let Some(target) = &self.target else {
            return;
        };
        let decoded = match target.decode_response(&body) {
            Ok(decoded) => decoded,
            Err(problem) => {
                self.root.counters.increment(host, "body_skipped");
                host.log(
                    LogLevel::Debug,
                    &format!("span-enrichment: response body passed through: {problem}"),
                );
                return;
            }
        };
        for field in self.root.fields_for(method, Direction::Response) {
            if let Some(value) = target
                .read_response_field(&decoded, &field.path)
                .and_then(|v| redact(field.redact, &v))
            {
                host.set_property(&[&field.state_key], clip(&value).as_bytes());
                self.root.counters.increment(host, "fields");
            }
        }
    }

    fn record_web_status(&mut self, host: &mut dyn Host) {
        let text_body;
        let body = match self.target.as_ref().map(|t| t.protocol) {
            Some(Protocol::GrpcWebText) => {
                let Ok(decoded) = grpc_web::decode_text(&self.response_body) else {
                    return;
                };
                text_body = decoded;
                &text_body
            }
            _ => &self.response_body,
        };
        if let Some(code) = grpc::trailer_frame_status(body) {
            self.record_status(host, &code.to_string());
        }
    }

    fn record_status(&mut self, host: &mut dyn Host, code: &str) {
        if self.status_recorded {
            return;
        }
        if let Ok(code) = code.trim().parse::<u32>() {
            self.status_recorded = true;
            host.set_property(&["meshgate.grpc_status"], status::name(code).as_bytes());
            host.set_property(&["meshgate.grpc_status_code"], code.to_string().as_bytes());
        }
    }
}

const SERVICE_HEADER: &str = "x-meshgate-grpc-service";
const METHOD_HEADER: &str = "x-meshgate-grpc-method";

/// Writes the request header `header` and the filter state `key`.
fn emit(host: &mut dyn Host, header: &str, key: &str, value: &str) {
    let value = clip(value);
    host.set_request_header(header, Some(&value));
    host.set_property(&[key], value.as_bytes());
}

/// Applies the field's redaction; `None` = do not emit.
fn redact(redaction: Redaction, value: &str) -> Option<String> {
    match redaction {
        Redaction::None => Some(value.to_owned()),
        Redaction::Drop => None,
        Redaction::Sha256 => Some(format!(
            "sha256:{}",
            hex::encode(Sha256::digest(value.as_bytes()))
        )),
    }
}

/// Header-safe and bounded: control characters become spaces, long values are cut.
fn clip(value: &str) -> String {
    if value.len() <= MAX_VALUE_LEN && !value.chars().any(char::is_control) {
        return value.to_owned();
    }
    value
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .scan(0usize, |len, c| {
            *len += c.len_utf8();
            (*len <= MAX_VALUE_LEN).then_some(c)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::test_host::TestHost;
    use meshgate_wire::grpc::message_frame as encode_frame;

    const CONFIG: &str = r#"{"fields":[
        {"path":"id"},
        {"path":"email","methods":["user.UserService/CreateUser"],"redact":"sha256"},
        {"path":"name","methods":["user.UserService/CreateUser"],"redact":"drop"},
        {"path":"user.email","from":"response","redact":"sha256"}
    ]}"#;

    fn run(request: &[(&str, &str)], body: &[u8]) -> TestHost {
        let mut host = TestHost::with_request(request);
        let root = Arc::new(SpanEnrichment::configure(CONFIG.as_bytes(), &mut host).unwrap());
        let mut stream = root.new_stream();
        host.request_body = body.to_vec();
        let action = stream.on_request_headers(&mut host, body.is_empty());
        if action == Action::Pause {
            assert_eq!(
                stream.on_request_body(&mut host, body.len(), true),
                Action::Continue
            );
        }
        host
    }

    fn sha(value: &str) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(value.as_bytes())))
    }

    #[test]
    fn grpc_method_and_fields_become_headers_and_state() {
        let body =
            encode_frame(&meshgate_proto::user::GetUserRequest { id: "u1".into() }.encode_to_vec());
        let host = run(
            &[
                (":method", "POST"),
                (":path", "/user.UserService/GetUser"),
                ("content-type", "application/grpc"),
                ("x-meshgate-field-id", "forged"),
            ],
            &body,
        );
        assert_eq!(
            host.request_header("x-meshgate-grpc-service").as_deref(),
            Some("user.UserService")
        );
        assert_eq!(
            host.request_header("x-meshgate-grpc-method").as_deref(),
            Some("GetUser")
        );
        assert_eq!(
            host.request_header("x-meshgate-field-id").as_deref(),
            Some("u1")
        );
        assert_eq!(
            host.filter_state
                .get("meshgate.request.id")
                .map(Vec::as_slice),
            Some(&b"u1"[..])
        );
    }

    #[test]
    fn rest_json_fields_are_redacted() {
        let host = run(
            &[
                (":method", "POST"),
                (":path", "/v1/users"),
                ("content-type", "application/json"),
            ],
            br#"{"name":"Ada","email":"ada@example.com"}"#,
        );
        assert_eq!(
            host.request_header("x-meshgate-grpc-method").as_deref(),
            Some("CreateUser")
        );
        assert_eq!(
            host.request_header("x-meshgate-field-email"),
            Some(sha("ada@example.com"))
        );
        assert_eq!(
            host.request_header("x-meshgate-field-name"),
            None,
            "dropped"
        );
    }

    #[test]
    fn forged_headers_are_removed_even_without_a_method() {
        let host = run(
            &[
                (":method", "GET"),
                (":path", "/healthz"),
                ("X-Meshgate-Grpc-Method", "Evil"),
            ],
            b"",
        );
        assert_eq!(host.request_header("x-meshgate-grpc-method"), None);
    }

    #[test]
    fn trace_headers_are_read_not_written() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let host = run(
            &[
                (":method", "GET"),
                (":path", "/v1/users/1"),
                ("traceparent", traceparent),
            ],
            b"",
        );
        assert_eq!(
            host.request_header("traceparent").as_deref(),
            Some(traceparent)
        );
        assert_eq!(
            host.filter_state
                .get("meshgate.trace_id")
                .map(Vec::as_slice),
            Some(&b"4bf92f3577b34da6a3ce929d0e0e4736"[..])
        );
    }

    #[test]
    fn response_fields_and_status_go_to_filter_state() {
        let mut host = TestHost::with_request(&[
            (":method", "POST"),
            (":path", "/user.UserService/GetUser"),
            ("content-type", "application/grpc"),
        ]);
        let root = Arc::new(SpanEnrichment::configure(CONFIG.as_bytes(), &mut host).unwrap());
        let mut stream = root.new_stream();
        stream.on_request_headers(&mut host, true);
        let response = meshgate_proto::user::GetUserResponse {
            user: Some(meshgate_proto::user::User {
                email: "a@b.c".into(),
                ..Default::default()
            }),
            message: String::new(),
        };
        host.response_body = encode_frame(&response.encode_to_vec());
        stream.on_response_headers(&mut host, false);
        let size = host.response_body.len();
        stream.on_response_body(&mut host, size, false);
        host.response_trailers = vec![("grpc-status".into(), "5".into())];
        stream.on_response_trailers(&mut host);
        assert_eq!(
            host.filter_state.get("meshgate.response.user.email"),
            Some(&sha("a@b.c").into_bytes())
        );
        assert_eq!(
            host.filter_state
                .get("meshgate.grpc_status")
                .map(Vec::as_slice),
            Some(&b"NOT_FOUND"[..])
        );
    }

    #[test]
    fn grpc_web_status_comes_from_the_trailer_frame() {
        let mut host = TestHost::with_request(&[
            (":method", "POST"),
            (":path", "/user.UserService/DeleteUser"),
            ("content-type", "application/grpc-web+proto"),
        ]);
        let root = Arc::new(SpanEnrichment::configure(CONFIG.as_bytes(), &mut host).unwrap());
        let mut stream = root.new_stream();
        stream.on_request_headers(&mut host, true);
        let trailer = b"grpc-status: 7\r\n";
        let mut body = vec![0x80];
        body.extend_from_slice(&(trailer.len() as u32).to_be_bytes());
        body.extend_from_slice(trailer);
        host.response_body = body;
        stream.on_response_headers(&mut host, false);
        let size = host.response_body.len();
        stream.on_response_body(&mut host, size, true);
        assert_eq!(
            host.filter_state
                .get("meshgate.grpc_status")
                .map(Vec::as_slice),
            Some(&b"PERMISSION_DENIED"[..])
        );
    }

    #[test]
    fn malformed_protobuf_passes_through() {
        let host = run(
            &[
                (":method", "POST"),
                (":path", "/user.UserService/GetUser"),
                ("content-type", "application/grpc"),
            ],
            &[0, 0, 0, 0, 2, 0x0a, 0x09],
        );
        assert_eq!(
            host.request_header("x-meshgate-grpc-method").as_deref(),
            Some("GetUser")
        );
        assert_eq!(host.request_header("x-meshgate-field-id"), None);
        assert_eq!(host.counter("meshgate_span_enrichment_body_skipped"), 1);
    }

    #[test]
    fn rejects_bad_configs() {
        let cases = [
            (r#"{"fields":[{"path":"nope"}]}"#, "no method's"),
            (
                r#"{"fields":[{"path":"id","redact":"mask"}]}"#,
                "unknown variant `mask`",
            ),
            (
                r#"{"fields":[{"path":"id"},{"path":"id"}]}"#,
                "listed twice",
            ),
            (
                r#"{"fields":[{"path":"user","from":"response","methods":["user.UserService/GetUser"]}]}"#,
                "singular scalar",
            ),
            (r#"{"fields":[{"path":"a..b"}]}"#, "empty segment"),
            (r#"{"maxBodyBytes":0}"#, "maxBodyBytes"),
            (r#"{"extra":true}"#, "unknown field `extra`"),
            ("[1]", "pluginConfig"),
        ];
        for (json, expected) in cases {
            let error = SpanEnrichment::configure(json.as_bytes(), &mut TestHost::default())
                .err()
                .unwrap_or_else(|| panic!("accepted {json}"));
            assert!(error.0.contains(expected), "{json}: {error}");
        }
    }

    #[test]
    fn clips_values() {
        assert_eq!(clip("a\r\nb"), "a  b");
        assert_eq!(clip(&"x".repeat(1000)).len(), MAX_VALUE_LEN);
    }
}
