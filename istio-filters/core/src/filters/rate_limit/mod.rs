//! rate-limit: token buckets keyed by gRPC method, request header, source address, SPIFFE
//! principal and message field, shared by every worker VM.
//!
//! A rule whose key cannot be built for a request (header absent, field unset, body
//! unreadable) does not apply to that request, as with Envoy rate-limit descriptors.
//!
//! - `config`: the pluginConfig as written (serde); compiled here into [`RateLimit`], every
//!   problem naming its key.
//! - `stream`: a request's keys built and its buckets taken.
//! - `reply`: the answer to a limited request, in the request's protocol.

mod config;
mod reply;
mod stream;

use std::sync::Arc;

use meshgate_wire::routes::Side;
use sha2::{Digest, Sha256};

pub use self::config::{KeyPart, Mode, RateLimitConfig, RuleConfig};
pub use self::stream::RateLimitStream;
use crate::bucket_table::BucketTable;
use crate::catalog::{Catalog, MethodId};
use crate::fields::FieldPath;
use crate::filter::{self, ConfigError, Filter};
use crate::host::{Counters, Host};
use crate::token_bucket::BucketSpec;
use meshgate_wire::hex::push_hex;

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
    /// The methods it applies to (all when empty), resolved once: a request's method is
    /// compared by id, not by name.
    methods: Vec<MethodId>,
    parts: Vec<Part>,
    spec: BucketSpec,
    table: BucketTable,
}

impl Rule {
    fn applies_to(&self, method: Option<MethodId>) -> bool {
        self.methods.is_empty() || method.is_some_and(|m| self.methods.contains(&m))
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
            let mut id = String::with_capacity(12);
            push_hex(&mut id, &Sha256::digest(text.as_bytes())[..6]);
            id
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
            let mut methods = Vec::new();
            for method in &rule.methods {
                let descriptor = catalog.method_by_name(method).ok_or_else(|| {
                    ConfigError::at(at("methods"), format!("unknown method {method:?}"))
                })?;
                inputs.push(catalog.message_of(descriptor, Side::Input));
                methods.push(descriptor);
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
                                .validate(catalog.schema(), *input)
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
                methods,
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
        RateLimitStream::new(Arc::clone(self))
    }
}

#[cfg(test)]
mod tests;
