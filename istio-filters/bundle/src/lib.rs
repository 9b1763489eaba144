//! The `meshgate_filters.wasm` proxy-wasm module: span-enrichment, rate-limit and cache-headers
//! in one stream context ([`meshgate_filter_core::filters::bundle`]), configured by one
//! pluginConfig with a key per filter. One module and one context per request instead of
//! three: see the bundle's docs for why and for the chain semantics it keeps.

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    meshgate_filter_wasm::register::<meshgate_filter_core::filters::bundle::Bundle>();
}}
