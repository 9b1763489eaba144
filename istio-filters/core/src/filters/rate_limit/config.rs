//! rate-limit's pluginConfig as written: serde types with their defaults.

use serde::Deserialize;

use crate::filter;

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
