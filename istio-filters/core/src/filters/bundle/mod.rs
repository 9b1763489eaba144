//! bundle: the three filters in one stream context, for one module (`meshgate_filters.wasm`)
//! configured once.
//!
//! Envoy runs each WasmPlugin as its own HTTP filter: per request and filter it creates a stream
//! context, calls every callback and ends the context, and each filter fetches the request
//! headers again. Those crossings of the wasm boundary are most of a small filter's cost, so
//! three filters cost three times the fixed price. The bundle pays it once: one context, one
//! callback per phase, one header fetch, and runs the members inside.
//!
//! The members run in the mesh's order — span-enrichment, rate-limit, cache-headers on the
//! request, reversed on the response — with Envoy's filter-chain semantics:
//! - a member that pauses holds the members after it (they get their headers and body once it
//!   continues, as later filters in an Envoy chain would);
//! - each member sees the body from where it last continued: a member that streams sees each
//!   chunk once, a member that buffers sees the whole buffer, through an offset view;
//! - a local reply ends the request phase; its response phase reaches only the members before
//!   the one that replied, as Envoy sends a local reply through the filters nearer the client.
//!
//! Config: `{"spanEnrichment": {..}, "rateLimit": {..}, "cacheHeaders": {..}}`, each the
//! member's own pluginConfig, at least one present; a member's config error names its key.
//!
//! - `stream`: the members' stream contexts run as one, with the chain semantics above.
//! - `member_host`: the host as one member sees it (reads fetched once per callback and
//!   shared, its own view of the body, its local reply noted).

mod member_host;
mod stream;

use std::sync::Arc;

use serde::Deserialize;

pub use self::stream::BundleStream;
use self::stream::Member;
use crate::filter::{self, ConfigError, Filter};
use crate::filters::cache_headers::CacheHeaders;
use crate::filters::rate_limit::RateLimit;
use crate::filters::span_enrichment::SpanEnrichment;
use crate::host::Host;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BundleConfig {
    pub span_enrichment: Option<serde_json::Value>,
    pub rate_limit: Option<serde_json::Value>,
    pub cache_headers: Option<serde_json::Value>,
}

/// The configured members, in request order.
pub struct Bundle {
    span_enrichment: Option<Arc<SpanEnrichment>>,
    rate_limit: Option<Arc<RateLimit>>,
    cache_headers: Option<Arc<CacheHeaders>>,
}

fn member<F: Filter>(
    key: &str,
    config: Option<serde_json::Value>,
    host: &mut dyn Host,
) -> Result<Option<Arc<F>>, ConfigError> {
    let Some(config) = config else {
        return Ok(None);
    };
    let bytes = serde_json::to_vec(&config).map_err(|e| ConfigError::at(key, e))?;
    F::configure(&bytes, host)
        .map(|filter| Some(Arc::new(filter)))
        .map_err(|e| ConfigError::at(key, e))
}

impl Filter for Bundle {
    type Stream = BundleStream;
    const NAME: &'static str = "meshgate_filters";

    fn configure(config: &[u8], host: &mut dyn Host) -> Result<Self, ConfigError> {
        let config: BundleConfig = filter::parse_config(config)?;
        let bundle = Self {
            span_enrichment: member("spanEnrichment", config.span_enrichment, host)?,
            rate_limit: member("rateLimit", config.rate_limit, host)?,
            cache_headers: member("cacheHeaders", config.cache_headers, host)?,
        };
        if bundle.span_enrichment.is_none()
            && bundle.rate_limit.is_none()
            && bundle.cache_headers.is_none()
        {
            return Err(ConfigError(
                "pluginConfig: no filter configured: set spanEnrichment, rateLimit and/or \
                 cacheHeaders"
                    .into(),
            ));
        }
        Ok(bundle)
    }

    fn new_stream(self: &Arc<Self>) -> BundleStream {
        let mut members: Vec<Member> = Vec::with_capacity(3);
        if let Some(f) = &self.span_enrichment {
            members.push(Member::new(Box::new(f.new_stream())));
        }
        if let Some(f) = &self.rate_limit {
            members.push(Member::new(Box::new(f.new_stream())));
        }
        if let Some(f) = &self.cache_headers {
            members.push(Member::new(Box::new(f.new_stream())));
        }
        BundleStream::of(members)
    }
}

#[cfg(test)]
mod tests;
