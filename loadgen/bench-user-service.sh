#!/usr/bin/env bash
# Benchmarks a release build of the user-service on PostgreSQL + Redis with meshgate-loadgen:
# scenarios get-hit, get-miss, create, list at concurrency 1, 16 and 64 (HTTP/2, loopback),
# then prints the peak RSS of the service.
#
#   loadgen/bench-user-service.sh            # DURATION=10 seconds per run
#   DURATION=5 CONCURRENCY="64" SCENARIOS="get-hit" loadgen/bench-user-service.sh
#   SERVICE_ARGS="--log-filter warn" loadgen/bench-user-service.sh   # extra service flags
#
# Uses DATABASE_URL (a server URL where a database may be created; default
# postgres://postgres@127.0.0.1:5432/test) and REDIS_URL (default redis://127.0.0.1:6379).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/wait.sh

server_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
redis_url=${REDIS_URL:-redis://127.0.0.1:6379}
duration=${DURATION:-10}
concurrency=${CONCURRENCY:-"1 16 64"}
scenarios=${SCENARIOS:-"get-hit get-miss create list"}
grpc_port=${BENCH_GRPC_PORT:-50551}
target_dir=${CARGO_TARGET_DIR:-target}

# The same package set as every benchmark script: cargo unifies features over the packages it
# builds, so another set would rebuild half the dependency tree in the same target dir.
cargo build --release -p user-service -p edge-gateway -p meshgate-loadgen >&2

database="bench_$(date +%s)_$$"
psql -q "$server_url" -c "CREATE DATABASE $database" >&2
database_url="${server_url%/*}/$database"

"$target_dir/release/user-service" \
  --database-url "$database_url" --redis-url "$redis_url" --cache-key-prefix "bench:$database:" \
  --grpc-addr "127.0.0.1:$grpc_port" --metrics-addr 127.0.0.1:0 \
  --migrate-on-start ${SERVICE_ARGS:-} >/dev/null &
service=$!
cleanup() {
  kill -TERM "$service" 2>/dev/null || true
  wait "$service" 2>/dev/null || true
  psql -q "$server_url" -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" >&2 || true
}
trap cleanup EXIT

wait_for_port "$grpc_port" user-service

echo "# $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for scenario in $scenarios; do
  for c in $concurrency; do
    "$target_dir/release/meshgate-loadgen" --target "http://127.0.0.1:$grpc_port" \
      --scenario "$scenario" --concurrency "$c" --duration "$duration"
    echo "#   service RSS now $(awk '/VmRSS/ {print $2, $3}' "/proc/$service/status"), peak $(awk '/VmHWM/ {print $2, $3}' "/proc/$service/status")"
  done
done
