# shellcheck shell=bash
# The gateway filter configs the benchmarks run (sourced by loadgen/bench-gateway-filters.sh and
# edge-gateway/bench/callgrind.sh, so both measure the same filters).
#
# gateway_filters VARIANT [WASM_DIR] [WORKERS]: prints the `gateway.filters` YAML flow sequence of
# VARIANT: plain (no filters), native (the three configs as the built-in bundle, run natively: the
# gateway's default), bundle (the same in meshgate_filters.wasm on wasmtime), filtered (the three
# modules on wasmtime, one plugin each). WORKERS: VMs, or native roots, per filter (default 4,
# the gateway's default).
#
# The configs are those of mesh/wasm-plugins, cut to what a GetUser touches; the rate limit
# applies to every request (per source address) but is never reached.
gateway_filters() {
  local variant=$1 wasm=${2:-} workers=${3:-4}
  local span_config="{fields: [
    {path: id}, {path: user.email, from: response, methods: [user.UserService/GetUser], redact: sha256}]}"
  local rate_config="{rules: [
    {name: per-client, key: [{type: sourceAddress}], requests: 100000000, periodSeconds: 1}]}"
  local cache_config="{policies: [
    {name: user-reads, methods: [user.UserService/GetUser], cacheControl: {scope: private, maxAge: 30},
     vary: [authorization], etag: true}]}"
  local bundle_config="{spanEnrichment: $span_config, rateLimit: $rate_config, cacheHeaders: $cache_config}"
  case $variant in
    plain) echo "[]" ;;
    native) echo "[{name: meshgate-filters, builtin: bundle, workers: $workers, config: $bundle_config}]" ;;
    bundle) echo "[{name: meshgate-filters, builtin: bundle, runtime: wasm, module: $wasm/meshgate_filters.wasm,
  workers: $workers, config: $bundle_config}]" ;;
    filtered) echo "[
  {name: span-enrichment, module: $wasm/meshgate_span_enrichment.wasm, workers: $workers, config: $span_config},
  {name: rate-limit, module: $wasm/meshgate_rate_limit.wasm, workers: $workers, config: $rate_config},
  {name: cache-headers, module: $wasm/meshgate_cache_headers.wasm, workers: $workers, config: $cache_config}]" ;;
    *) echo "unknown filter variant $variant (plain, native, bundle, filtered)" >&2; return 2 ;;
  esac
}
