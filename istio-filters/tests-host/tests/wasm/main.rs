//! The real `.wasm` modules in `proxy-wasm-host` (wasmtime), driven through the embed crate
//! `meshgate-filter-host`. Build the modules first (`scripts/build-filters`).

mod bundle;
mod cache_headers;
mod common;
mod configs;
mod envoy_abi;
mod full_chain;
mod guest_cost;
mod module_size;
mod rate_limit;
mod span_enrichment;
