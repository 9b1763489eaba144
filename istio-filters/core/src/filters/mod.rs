//! The three filters (and [`bundle`], all three in one stream context), each a [`crate::filter::Filter`] with its config schema.

pub mod bundle;
pub mod cache_headers;
pub mod rate_limit;
pub mod span_enrichment;
