//! span-enrichment's pluginConfig as written: serde types with their defaults.

use serde::Deserialize;

use crate::filter;

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
