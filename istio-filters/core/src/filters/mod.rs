//! The three filters, each a [`crate::filter::Filter`] with its config schema.

pub mod cache_headers;
pub mod rate_limit;
pub mod span_enrichment;
