#!/usr/bin/env bash
# The edge gateway's REST throughput with the three istio-filters filters (span-enrichment,
# rate-limit, cache-headers) vs no filters, side by side: release gateways in front of one
# release user-service (PostgreSQL + Redis), driven in turn by meshgate-loadgen (REST over h2c,
# get-hit = GetUser served from Redis), loopback only, ROUNDS alternating runs per cell.
# Variants: plain (no filters), native (the three configs as the built-in bundle, run natively:
# the gateway's default), bundle (the same in meshgate_filters.wasm on wasmtime), filtered (the
# three modules on wasmtime, one plugin each).
#
#   loadgen/bench-gateway-filters.sh     # DURATION=10 s, CONCURRENCY="16 64", ROUNDS=2, VARIANTS="plain native bundle"
#   DURATION=5 CONCURRENCY=64 ROUNDS=1 VARIANTS="plain native bundle filtered" FILTER_WORKERS=1 loadgen/bench-gateway-filters.sh
#
# DATABASE_URL (server URL where a database may be created; default
# postgres://postgres@127.0.0.1:5432/test) and REDIS_URL (default redis://127.0.0.1:6379).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/wait.sh
source edge-gateway/bench/filter-configs.sh

server_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
redis_url=${REDIS_URL:-redis://127.0.0.1:6379}
duration=${DURATION:-10}
concurrency=${CONCURRENCY:-"16 64"}
rounds=${ROUNDS:-2}
grpc_port=${BENCH_GRPC_PORT:-50561}
plain_port=${BENCH_PLAIN_PORT:-18081}
filtered_port=${BENCH_FILTERED_PORT:-18082}
bundle_port=${BENCH_BUNDLE_PORT:-18083}
native_port=${BENCH_NATIVE_PORT:-18084}
target_dir=$(realpath "${CARGO_TARGET_DIR:-target}")

cargo build --release -p user-service -p edge-gateway -p meshgate-loadgen >&2
cargo build --profile wasm --target wasm32-wasip1 \
  -p meshgate-rate-limit -p meshgate-cache-headers -p meshgate-span-enrichment -p meshgate-filters >&2
wasm="$target_dir/wasm32-wasip1/wasm"

work=$(mktemp -d)
database="bench_gwf_$(date +%s)_$$"
psql -q "$server_url" -c "CREATE DATABASE $database" >&2
database_url="${server_url%/*}/$database"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  psql -q "$server_url" -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" >&2 || true
  rm -rf "$work"
}
trap cleanup EXIT

"$target_dir/release/user-service" \
  --database-url "$database_url" --redis-url "$redis_url" --cache-key-prefix "bench:$database:" \
  --grpc-addr "127.0.0.1:$grpc_port" --metrics-addr 127.0.0.1:0 \
  --migrate-on-start --log-filter warn >/dev/null &
pids+=($!)

gateway_config() { # port, filters (YAML flow sequence)
  cat <<YAML
server: {version: 1, threads: 2, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 1}
gateway:
  listen: 127.0.0.1:$1
  metrics_listen: ""
  upstreams: [127.0.0.1:$grpc_port]
  filters: $2
YAML
}
port_of() {
  case $1 in
    plain) echo "$plain_port" ;;
    filtered) echo "$filtered_port" ;;
    bundle) echo "$bundle_port" ;;
    native) echo "$native_port" ;;
    *) echo "unknown variant $1 (plain, native, bundle, filtered)" >&2; exit 2 ;;
  esac
}
# FILTER_WORKERS sets the workers (VMs, or native roots) per filter (the gateway's default is 4).
workers=${FILTER_WORKERS:-4}
for variant in plain filtered bundle native; do
  gateway_config "$(port_of "$variant")" "$(gateway_filters "$variant" "$wasm" "$workers")" >"$work/$variant.yaml"
done
declare -A gateway_pid
variants=${VARIANTS:-"plain native bundle"}
for variant in $variants; do
  port_of "$variant" >/dev/null
  RUST_LOG=warn "$target_dir/release/edge-gateway" --config "$work/$variant.yaml" >/dev/null &
  pids+=($!)
  gateway_pid[$variant]=$!
done
# The gateway's own CPU per request (µs, from /proc): steadier than req/s on a shared machine.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

for port in "$grpc_port" $(for variant in $variants; do port_of "$variant"; done); do
  wait_for_port "$port" "user-service or a gateway" 20
done
sleep 1 # first health check of the upstream

echo "# $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for c in $concurrency; do
  for round in $(seq "$rounds"); do
    for variant in $variants; do
      port=$(port_of "$variant")
      echo "## concurrency $c, round $round, gateway $variant (:$port)"
      before=$(cpu_ticks "${gateway_pid[$variant]}")
      line=$("$target_dir/release/meshgate-loadgen" --target "http://127.0.0.1:$port" --transport rest \
        --scenario get-hit --concurrency "$c" --duration "$duration" --seed-users 200)
      after=$(cpu_ticks "${gateway_pid[$variant]}")
      requests=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")
      echo "$line gateway_cpu_us_per_request=$(awk -v t=$((after - before)) -v n="$requests" \
        -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }')"
    done
  done
done
