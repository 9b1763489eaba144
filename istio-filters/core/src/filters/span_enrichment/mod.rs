//! span-enrichment: gRPC service/method/status and configured message fields, exposed as
//! request headers (`x-meshgate-*`, turned into span tags by Istio Telemetry `customTags`) and
//! as filter state (`meshgate.*` via `set_property`).
//!
//! Invariants: incoming `x-meshgate-*` headers are removed first (clients cannot forge span
//! tags); trace headers (`traceparent`, `b3`, `x-b3-*`) are read, never written; response
//! values (fields, `grpc-status`) go to filter state only, since the request headers are gone
//! by then.
//!
//! - `config`: the pluginConfig as written (serde); compiled here into [`SpanEnrichment`]
//!   (each field resolved to the methods whose message has it).
//! - `stream`: a request's and its response's values read and written.
//! - `values`: how a value is written: redacted, clipped, as header and filter state.

mod config;
mod stream;
mod values;

use std::sync::Arc;

use meshgate_wire::routes::Side;

pub use self::config::{Direction, FieldConfig, Redaction, SpanEnrichmentConfig};
pub use self::stream::SpanEnrichmentStream;
use self::values::clip;
use crate::catalog::{Catalog, MethodId};
use crate::fields::FieldPath;
use crate::filter::{self, ConfigError, Filter};
use crate::host::{Counters, Host};

pub const HEADER_PREFIX: &str = "x-meshgate-";

#[derive(Debug)]
struct Field {
    path: FieldPath,
    from: Direction,
    /// The methods this field applies to (resolved at configure time, compared by id).
    methods: Vec<MethodId>,
    redact: Redaction,
    /// `x-meshgate-field-<path>` and `meshgate.<side>.<path>`, spelled once at configure time.
    header_name: String,
    state_key: String,
}

impl Field {
    fn new(path: FieldPath, from: Direction, methods: Vec<MethodId>, redact: Redaction) -> Self {
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
    /// Each method's service and method name as written (clipped once, at configure time).
    method_values: Vec<(String, String)>,
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
            let side = match field.from {
                Direction::Request => Side::Input,
                Direction::Response => Side::Output,
            };
            let schema = catalog.schema();
            let mut methods = Vec::new();
            if field.methods.is_empty() {
                // Every method whose message has the field.
                for method in 0..schema.methods.len() {
                    if path
                        .validate(schema, catalog.message_of(method, side))
                        .is_ok()
                    {
                        methods.push(method);
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
                    path.validate(schema, catalog.message_of(method, side))
                        .map_err(|e| ConfigError::at(at("path"), e))?;
                    methods.push(method);
                }
            }
            fields.push(Field::new(path, field.from, methods, field.redact));
        }
        let method_values = catalog
            .schema()
            .methods
            .iter()
            .map(|m| (clip(&m.service).into_owned(), clip(&m.name).into_owned()))
            .collect();
        Ok(Self {
            catalog,
            max_body,
            fields,
            method_values,
            counters: Counters::define(host, Self::NAME, COUNTERS),
        })
    }

    fn fields_for(&self, method: MethodId, from: Direction) -> impl Iterator<Item = &Field> {
        self.fields
            .iter()
            .filter(move |f| f.from == from && f.methods.contains(&method))
    }
}

impl Filter for SpanEnrichment {
    type Stream = SpanEnrichmentStream;
    const NAME: &'static str = "meshgate_span_enrichment";

    fn configure(config: &[u8], host: &mut dyn Host) -> Result<Self, ConfigError> {
        Self::compile(filter::parse_config(config)?, host)
    }

    fn new_stream(self: &Arc<Self>) -> SpanEnrichmentStream {
        SpanEnrichmentStream::new(Arc::clone(self))
    }
}

#[cfg(test)]
mod tests;
