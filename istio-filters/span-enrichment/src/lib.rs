//! The `meshgate_span_enrichment.wasm` proxy-wasm module: [`meshgate_filter_core::filters::span_enrichment`]
//! behind the proxy-wasm adapter. All logic and its config schema live in the core crate.

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    meshgate_filter_wasm::register::<meshgate_filter_core::filters::span_enrichment::SpanEnrichment>();
}}
