#!/usr/bin/env bash
# Service CPU time per GetUser cache hit (user+system ticks of the user-service process from
# /proc over 100,000 requests at concurrency 16). Less sensitive to a busy machine than req/s.
#
#   loadgen/cpu-per-request.sh info    # default log filter: spans on
#   loadgen/cpu-per-request.sh warn    # spans filtered out
#
# Expects release binaries (loadgen/bench-user-service.sh builds them), DATABASE_URL/REDIS_URL
# as in that script.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/wait.sh
filter=${1:-info}
server_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
redis_url=${REDIS_URL:-redis://127.0.0.1:6379}
port=${BENCH_GRPC_PORT:-50552}
target_dir=${CARGO_TARGET_DIR:-target}
database="bench_cpu_$(date +%s)_$$"
psql -q "$server_url" -c "CREATE DATABASE $database"
"$target_dir/release/user-service" --database-url "${server_url%/*}/$database" \
  --redis-url "$redis_url" --cache-key-prefix "cpu:$database:" \
  --grpc-addr "127.0.0.1:$port" --metrics-addr 127.0.0.1:0 --migrate-on-start \
  --log-filter "$filter" >/dev/null &
service=$!
cleanup() {
  kill -TERM "$service" 2>/dev/null || true
  wait "$service" 2>/dev/null || true
  psql -q "$server_url" -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" || true
}
trap cleanup EXIT
wait_for_port "$port" "the server under test"
loadgen="$target_dir/release/meshgate-loadgen --target http://127.0.0.1:$port --scenario get-hit --concurrency 16"
$loadgen --requests 1 --seed-users 200 >/dev/null   # warm connections and the cache
ticks_per_second=$(getconf CLK_TCK)
before=$(awk '{print $14 + $15}' "/proc/$service/stat")
$loadgen --requests 100000 --seed-users 1
after=$(awk '{print $14 + $15}' "/proc/$service/stat")
echo "filter=$filter service CPU: $(( (after - before) * 1000000 / ticks_per_second / 100000 )) µs per request"
