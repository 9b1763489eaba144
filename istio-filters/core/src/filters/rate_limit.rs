//! rate-limit: token buckets keyed by gRPC method, request header, source address, SPIFFE
//! principal and message field, shared by every worker VM.
//!
//! A rule whose key cannot be built for a request (header absent, field unset, body
//! unreadable) does not apply to that request, as with Envoy rate-limit descriptors.

use std::sync::Arc;

use meshgate_wire::content_type::Protocol;
use meshgate_wire::grpc::status;
use meshgate_wire::grpc_headers;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::bucket_table::{BucketTable, Outcome};
use crate::catalog::Catalog;
use crate::fields::FieldPath;
use crate::filter::{self, ConfigError, Filter, Stream};
use crate::host::{Action, Counters, Host, LocalReply, LogLevel};
use crate::inspect::{Decoded, RequestTarget};
use crate::token_bucket::{BucketSpec, Verdict};

// === config ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimitConfig {
    #[serde(default)]
    pub mode: Mode,
    pub descriptor_set: Option<String>,
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u32,
    /// Slots per rule: the bound on distinct keys tracked at once.
    #[serde(default = "default_max_keys")]
    pub max_keys: u32,
    #[serde(default = "default_cas_retries")]
    pub cas_retries: u32,
    pub rules: Vec<RuleConfig>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    #[default]
    Enforce,
    /// Dry run: count and log what would be limited, let everything through.
    Shadow,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleConfig {
    pub name: String,
    /// `package.Service/Method` names the rule applies to; absent = every request.
    #[serde(default)]
    pub methods: Vec<String>,
    pub key: Vec<KeyPart>,
    pub requests: u32,
    pub period_seconds: u32,
    /// Bucket size; defaults to `requests`.
    pub burst: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", tag = "type")]
pub enum KeyPart {
    GrpcMethod,
    Header {
        name: String,
    },
    SourceAddress,
    /// The SPIFFE id of the mTLS peer (`connection.uri_san_peer_certificate`).
    Principal,
    Field {
        path: String,
    },
}

fn default_max_body() -> u32 {
    filter::DEFAULT_MAX_BODY_BYTES
}
fn default_max_keys() -> u32 {
    1024
}
fn default_cas_retries() -> u32 {
    16
}

// === compiled ===

#[derive(Debug)]
enum Part {
    GrpcMethod,
    Header(String),
    SourceAddress,
    Principal,
    Field(FieldPath),
}

#[derive(Debug)]
struct Rule {
    name: String,
    methods: Vec<String>,
    parts: Vec<Part>,
    spec: BucketSpec,
    table: BucketTable,
}

impl Rule {
    fn applies_to(&self, method: Option<&str>) -> bool {
        self.methods.is_empty() || method.is_some_and(|m| self.methods.iter().any(|x| x == m))
    }
    fn needs_body(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Field(_)))
    }
    fn window_secs(&self) -> u64 {
        self.spec.period_nanos / 1_000_000_000
    }
}

pub struct RateLimit {
    mode: Mode,
    catalog: Arc<Catalog>,
    max_body: usize,
    rules: Vec<Rule>,
    counters: Counters,
}

const COUNTERS: &[&str] = &[
    "allowed",
    "limited",
    "shadow_limited",
    "cas_retries",
    "failed_open",
    "body_skipped",
];

impl RateLimit {
    pub fn compile(config: RateLimitConfig, host: &mut dyn Host) -> Result<Self, ConfigError> {
        let catalog = Catalog::shared(config.descriptor_set.as_deref())
            .map_err(|e| ConfigError::at("descriptorSet", e))?;
        let max_body = filter::check_max_body(config.max_body_bytes)?;
        if !(16..=1 << 20).contains(&config.max_keys) {
            return Err(ConfigError::at("maxKeys", "must be between 16 and 1048576"));
        }
        if !(1..=64).contains(&config.cas_retries) {
            return Err(ConfigError::at("casRetries", "must be between 1 and 64"));
        }
        if config.rules.is_empty() {
            return Err(ConfigError::at("rules", "at least one rule is required"));
        }
        // The shared-data prefix changes with the config, so a reconfigured limit starts fresh
        // instead of reading buckets laid out for other rules.
        let config_id = {
            let text = format!("{:?}", config.rules);
            hex::encode(&Sha256::digest(text.as_bytes())[..6])
        };
        let mut rules = Vec::new();
        for (i, rule) in config.rules.into_iter().enumerate() {
            let at = |field: &str| format!("rules[{i}].{field}");
            let valid_name = !rule.name.is_empty()
                && rule
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !valid_name {
                return Err(ConfigError::at(
                    at("name"),
                    "must be non-empty [A-Za-z0-9_-]",
                ));
            }
            if rules.iter().any(|r: &Rule| r.name == rule.name) {
                return Err(ConfigError::at(
                    at("name"),
                    format!("duplicate rule {:?}", rule.name),
                ));
            }
            if rule.requests == 0 {
                return Err(ConfigError::at(at("requests"), "must be > 0"));
            }
            if !(1..=86_400).contains(&rule.period_seconds) {
                return Err(ConfigError::at(
                    at("periodSeconds"),
                    "must be between 1 and 86400",
                ));
            }
            if rule.burst == Some(0) {
                return Err(ConfigError::at(at("burst"), "must be > 0"));
            }
            let mut inputs = Vec::new();
            for method in &rule.methods {
                let descriptor = catalog.method_by_name(method).ok_or_else(|| {
                    ConfigError::at(at("methods"), format!("unknown method {method:?}"))
                })?;
                inputs.push(descriptor.input());
            }
            if rule.key.is_empty() {
                return Err(ConfigError::at(
                    at("key"),
                    "at least one key part is required",
                ));
            }
            let mut parts = Vec::new();
            for part in rule.key {
                parts.push(match part {
                    KeyPart::GrpcMethod => Part::GrpcMethod,
                    KeyPart::SourceAddress => Part::SourceAddress,
                    KeyPart::Principal => Part::Principal,
                    KeyPart::Header { name } => {
                        filter::check_header_name(&at("key.header.name"), &name)?;
                        Part::Header(name)
                    }
                    KeyPart::Field { path } => {
                        let field = FieldPath::parse(&path)
                            .map_err(|e| ConfigError::at(at("key.field.path"), e))?;
                        if inputs.is_empty() {
                            return Err(ConfigError::at(
                                at("key.field"),
                                "a field key needs `methods` (the field is looked up in their request messages)",
                            ));
                        }
                        for input in &inputs {
                            field
                                .validate(input)
                                .map_err(|e| ConfigError::at(at("key.field.path"), e))?;
                        }
                        Part::Field(field)
                    }
                });
            }
            let spec = BucketSpec {
                burst: u64::from(rule.burst.unwrap_or(rule.requests)),
                requests: u64::from(rule.requests),
                period_nanos: u64::from(rule.period_seconds) * 1_000_000_000,
            };
            let table = BucketTable::new(
                format!("meshgate-rl/{config_id}/{}", rule.name),
                config.max_keys,
                config.cas_retries,
            );
            rules.push(Rule {
                name: rule.name,
                methods: rule.methods,
                parts,
                spec,
                table,
            });
        }
        for rule in &rules {
            rule.table.create_pages(host);
        }
        Ok(Self {
            mode: config.mode,
            catalog,
            max_body,
            rules,
            counters: Counters::define(host, Self::NAME, COUNTERS),
        })
    }
}

impl Filter for RateLimit {
    type Stream = RateLimitStream;
    const NAME: &'static str = "meshgate_rate_limit";

    fn configure(config: &[u8], host: &mut dyn Host) -> Result<Self, ConfigError> {
        Self::compile(filter::parse_config(config)?, host)
    }

    fn new_stream(self: &Arc<Self>) -> RateLimitStream {
        RateLimitStream {
            root: Arc::clone(self),
            target: None,
            waiting_for_body: false,
        }
    }
}

// === stream ===

pub struct RateLimitStream {
    root: Arc<RateLimit>,
    target: Option<Arc<RequestTarget>>,
    waiting_for_body: bool,
}

impl Stream for RateLimitStream {
    fn on_request_headers(&mut self, host: &mut dyn Host, end_of_stream: bool) -> Action {
        let target = RequestTarget::identify(&self.root.catalog, host);
        let method = target.method_name();
        let needs_body = self
            .root
            .rules
            .iter()
            .any(|r| r.applies_to(method.as_deref()) && r.needs_body());
        let body_fits = target
            .content_length()
            .is_none_or(|len| len <= self.root.max_body);
        let wait = needs_body && !end_of_stream && target.message_in_body() && body_fits;
        if needs_body && !end_of_stream && !body_fits {
            self.root.counters.increment(host, "body_skipped");
        }
        self.target = Some(target);
        if wait {
            self.waiting_for_body = true;
            return Action::Pause;
        }
        self.decide(host, &Decoded::Nothing)
    }

    fn on_request_body(
        &mut self,
        host: &mut dyn Host,
        body_size: usize,
        end_of_stream: bool,
    ) -> Action {
        if !self.waiting_for_body {
            return Action::Continue;
        }
        if body_size > self.root.max_body {
            self.waiting_for_body = false;
            self.root.counters.increment(host, "body_skipped");
            return self.decide(host, &Decoded::Nothing);
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.waiting_for_body = false;
        let decoded = match (&self.target, host.request_body(0, body_size)) {
            (Some(target), Some(body)) => match target.decode_request(&body) {
                Ok(decoded) => decoded,
                Err(problem) => {
                    self.root.counters.increment(host, "body_skipped");
                    host.log(
                        LogLevel::Debug,
                        &format!("rate-limit: body passed through: {problem}"),
                    );
                    Decoded::Nothing
                }
            },
            _ => Decoded::Nothing,
        };
        self.decide(host, &decoded)
    }
}

impl RateLimitStream {
    fn key(
        &self,
        rule: &Rule,
        host: &dyn Host,
        target: &RequestTarget,
        decoded: &Decoded,
    ) -> Option<Vec<u8>> {
        let mut key = Vec::new();
        for part in &rule.parts {
            let value = match part {
                Part::GrpcMethod => target.method_name()?,
                Part::Header(name) => target.header(name)?.to_owned(),
                Part::SourceAddress => strip_port(&text(host.property(&["source", "address"])?)),
                Part::Principal => {
                    text(host.property(&["connection", "uri_san_peer_certificate"])?)
                }
                Part::Field(path) => target.read_request_field(decoded, path)?,
            };
            // Unit separator between parts: ("a", "bc") and ("ab", "c") stay distinct.
            key.extend_from_slice(value.as_bytes());
            key.push(0x1f);
        }
        Some(key)
    }

    fn decide(&mut self, host: &mut dyn Host, decoded: &Decoded) -> Action {
        let Some(target) = self.target.take() else {
            return Action::Continue;
        };
        let root = Arc::clone(&self.root);
        let method = target.method_name();
        let now = host.now_nanos();
        let mut limited: Option<(&Rule, Verdict)> = None;
        for rule in root
            .rules
            .iter()
            .filter(|r| r.applies_to(method.as_deref()))
        {
            let Some(key) = self.key(rule, host, &target, decoded) else {
                continue;
            };
            match rule.table.take(host, &rule.spec, &key, now) {
                Outcome::Decided { verdict, retries } => {
                    if retries > 0 {
                        add(host, &root.counters, "cas_retries", retries);
                    }
                    if !verdict.allowed && limited.is_none() {
                        limited = Some((rule, verdict));
                    }
                }
                Outcome::FailedOpen { retries } => {
                    add(host, &root.counters, "cas_retries", retries);
                    root.counters.increment(host, "failed_open");
                    host.log(
                        LogLevel::Warn,
                        &format!(
                            "rate-limit: rule {} failed open after {retries} CAS retries",
                            rule.name
                        ),
                    );
                }
            }
        }
        let Some((rule, verdict)) = limited else {
            root.counters.increment(host, "allowed");
            return Action::Continue;
        };
        if root.mode == Mode::Shadow {
            root.counters.increment(host, "shadow_limited");
            host.log(
                LogLevel::Info,
                &format!(
                    "rate-limit (shadow): rule {} would limit {}",
                    rule.name, target.path
                ),
            );
            return Action::Continue;
        }
        root.counters.increment(host, "limited");
        host.send_local_reply(limited_reply(rule, &verdict, &target));
        Action::Pause
    }
}

fn add(host: &mut dyn Host, counters: &Counters, name: &str, times: u32) {
    for _ in 0..times {
        counters.increment(host, name);
    }
}

/// 429 with RateLimit headers over HTTP; RESOURCE_EXHAUSTED (trailers-only) for gRPC family.
fn limited_reply(rule: &Rule, verdict: &Verdict, target: &RequestTarget) -> LocalReply {
    let retry_after = verdict.retry_after_secs.max(1);
    let message = format!(
        "rate limit exceeded (rule {}); retry after {retry_after}s",
        rule.name
    );
    match target.protocol {
        Protocol::Http => LocalReply {
            status: 429,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                ("retry-after".into(), retry_after.to_string()),
                (
                    "ratelimit-policy".into(),
                    format!(
                        "\"{}\";q={};w={}",
                        rule.name,
                        rule.spec.burst,
                        rule.window_secs()
                    ),
                ),
                (
                    "ratelimit".into(),
                    format!(
                        "\"{}\";r={};t={}",
                        rule.name, verdict.remaining, verdict.reset_secs
                    ),
                ),
            ],
            body: serde_json::json!({"error": "RESOURCE_EXHAUSTED", "message": message})
                .to_string()
                .into_bytes(),
            grpc_status: None,
        },
        // Envoy turns a local reply with a gRPC status into a trailers-only response with
        // `grpc-status` and the body as `grpc-message`.
        Protocol::Grpc => LocalReply {
            status: 200,
            headers: vec![("retry-after".into(), retry_after.to_string())],
            body: message.into_bytes(),
            grpc_status: Some(status::RESOURCE_EXHAUSTED),
        },
        // gRPC-web: the trailers-only form is a header-only 200 with the status in headers
        // (Envoy's gRPC local-reply path does not recognise grpc-web content types).
        Protocol::GrpcWeb | Protocol::GrpcWebText => LocalReply {
            status: 200,
            headers: vec![
                (
                    "content-type".into(),
                    target
                        .header("content-type")
                        .unwrap_or("application/grpc-web+proto")
                        .to_owned(),
                ),
                ("grpc-status".into(), status::RESOURCE_EXHAUSTED.to_string()),
                (
                    "grpc-message".into(),
                    grpc_headers::encode_message(&message),
                ),
                ("retry-after".into(), retry_after.to_string()),
            ],
            body: Vec::new(),
            grpc_status: None,
        },
    }
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `10.0.0.1:5555` → `10.0.0.1`, `[::1]:5555` → `::1`.
fn strip_port(address: &str) -> String {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default().to_owned();
    }
    match address.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            host.to_owned()
        }
        _ => address.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::test_host::TestHost;
    use meshgate_wire::grpc::message_frame as encode_frame;

    fn configure(json: &str) -> Result<Arc<RateLimit>, ConfigError> {
        RateLimit::configure(json.as_bytes(), &mut TestHost::default()).map(Arc::new)
    }

    fn run(root: &Arc<RateLimit>, host: &mut TestHost) -> Action {
        let mut stream = root.new_stream();
        let eos = host.request_body.is_empty();
        let action = stream.on_request_headers(host, eos);
        if eos || action == Action::Continue {
            return action;
        }
        let size = host.request_body.len();
        stream.on_request_body(host, size, true)
    }

    const PER_HEADER: &str = r#"{"rules":[{"name":"per-key","key":[{"type":"header","name":"x-api-key"}],"requests":2,"periodSeconds":60}]}"#;

    #[test]
    fn limits_per_header_and_skips_requests_without_it() {
        let root = configure(PER_HEADER).unwrap();
        let mut host = TestHost::default();
        root.rules[0].table.create_pages(&mut host);
        let mut results = Vec::new();
        for _ in 0..3 {
            host.request_headers = vec![
                (":path".into(), "/x".into()),
                ("x-api-key".into(), "k1".into()),
            ];
            host.reply = None;
            results.push(run(&root, &mut host));
        }
        assert_eq!(results, [Action::Continue, Action::Continue, Action::Pause]);
        let reply = host.reply.clone().unwrap();
        assert_eq!(reply.status, 429);
        let header = |n: &str| {
            reply
                .headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(header("retry-after").as_deref(), Some("30"));
        assert_eq!(
            header("ratelimit-policy").as_deref(),
            Some("\"per-key\";q=2;w=60")
        );
        assert_eq!(header("ratelimit").as_deref(), Some("\"per-key\";r=0;t=60"));

        host.request_headers = vec![(":path".into(), "/x".into())];
        host.reply = None;
        assert_eq!(
            run(&root, &mut host),
            Action::Continue,
            "no key, rule does not apply"
        );
        assert!(host.reply.is_none());
    }

    #[test]
    fn limits_grpc_by_message_field_with_resource_exhausted() {
        let root = configure(
            r#"{"rules":[{"name":"per-user","methods":["user.UserService/GetUser"],
                "key":[{"type":"grpcMethod"},{"type":"field","path":"id"}],"requests":1,"periodSeconds":10}]}"#,
        )
        .unwrap();
        let mut host = TestHost::default();
        let request = |host: &mut TestHost, id: &str| {
            host.request_headers = vec![
                (":method".into(), "POST".into()),
                (":path".into(), "/user.UserService/GetUser".into()),
                ("content-type".into(), "application/grpc".into()),
            ];
            host.request_body = encode_frame(
                &meshgate_proto::user::GetUserRequest { id: id.into() }.encode_to_vec(),
            );
            host.reply = None;
            run(&root, host)
        };
        assert_eq!(request(&mut host, "a"), Action::Continue);
        assert_eq!(request(&mut host, "b"), Action::Continue);
        assert_eq!(request(&mut host, "a"), Action::Pause);
        let reply = host.reply.clone().unwrap();
        assert_eq!(reply.grpc_status, Some(status::RESOURCE_EXHAUSTED));
        host.now = 10_000_000_000;
        assert_eq!(
            request(&mut host, "a"),
            Action::Continue,
            "refilled after the period"
        );
    }

    #[test]
    fn shadow_mode_counts_but_lets_through() {
        let json = r#"{"mode":"shadow","rules":[{"name":"all","key":[{"type":"sourceAddress"}],"requests":1,"periodSeconds":60}]}"#;
        let mut host = TestHost::default();
        host.properties
            .insert("source.address".into(), b"10.1.2.3:4444".to_vec());
        let root = Arc::new(RateLimit::configure(json.as_bytes(), &mut host).unwrap());
        for _ in 0..3 {
            host.request_headers = vec![(":path".into(), "/x".into())];
            assert_eq!(run(&root, &mut host), Action::Continue);
        }
        assert!(host.reply.is_none());
        assert_eq!(host.counter("meshgate_rate_limit_shadow_limited"), 2);
        assert_eq!(host.counter("meshgate_rate_limit_allowed"), 1);
    }

    #[test]
    fn malformed_bodies_pass_and_are_counted() {
        let json = r#"{"rules":[{"name":"per-user","methods":["user.UserService/GetUser"],
                "key":[{"type":"field","path":"id"}],"requests":1,"periodSeconds":10}]}"#;
        let mut host = TestHost::default();
        let root = Arc::new(RateLimit::configure(json.as_bytes(), &mut host).unwrap());
        for _ in 0..3 {
            host.request_headers = vec![
                (":path".into(), "/user.UserService/GetUser".into()),
                ("content-type".into(), "application/grpc".into()),
            ];
            host.request_body = vec![0, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff];
            assert_eq!(run(&root, &mut host), Action::Continue);
        }
        assert_eq!(host.counter("meshgate_rate_limit_body_skipped"), 3);
    }

    #[test]
    fn rejects_bad_configs_with_a_precise_message() {
        let cases = [
            ("", "pluginConfig is empty"),
            (r#"{"rules":[],"x":1}"#, "unknown field `x`"),
            (r#"{"rules":[]}"#, "rules: at least one rule"),
            (
                r#"{"rules":[{"name":"a","key":[],"requests":1,"periodSeconds":1}]}"#,
                "rules[0].key",
            ),
            (
                r#"{"rules":[{"name":"a","key":[{"type":"grpcMethod"}],"requests":0,"periodSeconds":1}]}"#,
                "rules[0].requests",
            ),
            (
                r#"{"rules":[{"name":"a","key":[{"type":"grpcMethod"}],"requests":1,"periodSeconds":0}]}"#,
                "rules[0].periodSeconds",
            ),
            (
                r#"{"rules":[{"name":"a","key":[{"type":"header","name":"X-Key"}],"requests":1,"periodSeconds":1}]}"#,
                "lower-case header",
            ),
            (
                r#"{"rules":[{"name":"a","key":[{"type":"field","path":"id"}],"requests":1,"periodSeconds":1}]}"#,
                "needs `methods`",
            ),
            (
                r#"{"rules":[{"name":"a","methods":["user.UserService/GetUser"],"key":[{"type":"field","path":"email"}],"requests":1,"periodSeconds":1}]}"#,
                "no field \"email\"",
            ),
            (
                r#"{"rules":[{"name":"a","methods":["x.Y/Z"],"key":[{"type":"grpcMethod"}],"requests":1,"periodSeconds":1}]}"#,
                "unknown method",
            ),
            (
                r#"{"rules":[{"name":"a","key":[{"type":"ip"}],"requests":1,"periodSeconds":1}]}"#,
                "unknown variant `ip`",
            ),
            (r#"{"mode":"dry","rules":[]}"#, "unknown variant `dry`"),
            (
                r#"{"maxKeys":1,"rules":[{"name":"a","key":[{"type":"grpcMethod"}],"requests":1,"periodSeconds":1}]}"#,
                "maxKeys",
            ),
            (
                r#"{"descriptorSet":"%%%","rules":[{"name":"a","key":[{"type":"grpcMethod"}],"requests":1,"periodSeconds":1}]}"#,
                "descriptorSet",
            ),
            (
                r#"{"rules":[{"name":"a","key":[{"type":"grpcMethod"}],"requests":1,"periodSeconds":1},{"name":"a","key":[{"type":"grpcMethod"}],"requests":1,"periodSeconds":1}]}"#,
                "duplicate rule",
            ),
        ];
        for (json, expected) in cases {
            let error = configure(json)
                .err()
                .unwrap_or_else(|| panic!("accepted {json}"));
            assert!(error.0.contains(expected), "{json}: {error}");
        }
    }

    #[test]
    fn strips_ports() {
        assert_eq!(strip_port("10.0.0.1:80"), "10.0.0.1");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("10.0.0.1"), "10.0.0.1");
    }
}
