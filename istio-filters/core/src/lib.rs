//! All logic of the meshgate proxy-wasm filters, with no proxy-wasm dependency.
//!
//! # Layout
//! - [`host`]: the [`host::Host`] trait, the only way the logic reaches the proxy.
//! - [`filter`]: the [`filter::Filter`] / [`filter::Stream`] shape and config helpers.
//! - [`filters`]: `rate_limit`, `cache_headers`, `span_enrichment` (config + stream logic).
//! - Protocol pieces: [`catalog`] (descriptors → REST routes), [`fields`] (field paths),
//!   [`inspect`] (what a request is and what it carries). The wire formats themselves (gRPC
//!   and gRPC-web framing, HttpRule templates and the route table, W3C/B3, content types,
//!   percent-encoding, ETag matching) are `meshgate_wire`'s, shared with the edge gateway.
//! - State and HTTP pieces: [`token_bucket`], [`bucket_table`] (bounded shared buckets with
//!   CAS), [`http_cache`] (Cache-Control, strong ETags).
//!
//! Invariant: nothing here panics on input; a body that cannot be read is passed on and
//! counted, never rejected.
#![forbid(unsafe_code)]
// A panic in a filter aborts the proxy's Wasm VM and fails every request it serves. Tests may
// unwrap (clippy.toml: allow-*-in-tests).
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod bucket_table;
pub mod catalog;
pub mod fields;
pub mod filter;
pub mod filters;
pub mod host;
pub mod http_cache;
pub mod inspect;
#[cfg(test)]
pub mod test_host;
pub mod token_bucket;
