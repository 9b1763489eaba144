#!/usr/bin/env bash
# Throughput of GetUser while Redis is down, as a fraction of normal: a release user-service on
# PostgreSQL + a throwaway Redis of this script's own (never the shared one), meshgate-loadgen at
# one concurrency, four runs: get-hit with Redis up (normal); get-miss with Redis up (every
# request reads PostgreSQL: what any read costs without a cache, the ceiling during an outage);
# get-hit with Redis frozen (SIGSTOP: every call to it would time out); get-hit with Redis
# killed (SIGKILL: every connect is refused).
#
#   loadgen/bench-redis-outage.sh                      # DURATION=10, CONCURRENCY=16
#   DURATION=5 CONCURRENCY=64 loadgen/bench-redis-outage.sh
#   SERVICE_ARGS="--log-filter warn" loadgen/bench-redis-outage.sh
#
# Uses DATABASE_URL (a server URL where a database may be created; default
# postgres://postgres@127.0.0.1:5432/test).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/wait.sh

server_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
duration=${DURATION:-10}
concurrency=${CONCURRENCY:-16}
target_dir=${CARGO_TARGET_DIR:-target}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The same package set as every benchmark script: cargo unifies features over the packages it
# builds, so another set would rebuild half the dependency tree in the same target dir.
cargo build --release -p user-service -p edge-gateway -p meshgate-loadgen >&2

database="bench_outage_$(date +%s)_$$"
psql -q "$server_url" -c "CREATE DATABASE $database" >&2
database_url="${server_url%/*}/$database"
redis_port=$(free_port)
redis_dir=$(mktemp -d)
redis=""
service=""
start_redis() {
  redis-server --bind 127.0.0.1 --port "$redis_port" --save '' --appendonly no --dir "$redis_dir" >/dev/null &
  redis=$!
  wait_for_port "$redis_port" redis-server
}
stop_service() {
  if [ -n "$service" ]; then kill -TERM "$service" 2>/dev/null || true; wait "$service" 2>/dev/null || true; fi
  service=""
}
cleanup() {
  stop_service
  if [ -n "$redis" ]; then kill -CONT "$redis" 2>/dev/null || true; kill -KILL "$redis" 2>/dev/null || true; fi
  rm -rf "$redis_dir"
  psql -q "$server_url" -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" >&2 || true
}
trap cleanup EXIT

run() { # scenario label
  local line
  line=$("$target_dir/release/meshgate-loadgen" --target "http://127.0.0.1:$grpc_port" \
    --scenario "$1" --concurrency "$concurrency" --duration "$duration")
  echo "$2: $line"
  rate=$(sed -E 's/.*throughput=([0-9]+).*/\1/' <<<"$line")
}

echo "# $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load before: $(cut -d' ' -f1-3 /proc/loadavg)"
start_redis
grpc_port=$(free_port)
"$target_dir/release/user-service" \
  --database-url "$database_url" --redis-url "redis://127.0.0.1:$redis_port" \
  --cache-key-prefix "bench:$database:" --grpc-addr "127.0.0.1:$grpc_port" \
  --metrics-addr 127.0.0.1:0 --drain-delay-ms 0 --migrate-on-start ${SERVICE_ARGS:-} >/dev/null &
service=$!
wait_for_port "$grpc_port" user-service

run get-hit "redis up"; normal=$rate
run get-miss "redis up, every read from PostgreSQL"; database_only=$rate
kill -STOP "$redis"
run get-hit "redis frozen (SIGSTOP)"; frozen=$rate
kill -CONT "$redis"
kill -KILL "$redis"; wait "$redis" 2>/dev/null || true; redis=""
run get-hit "redis killed (SIGKILL)"; killed=$rate
echo "of normal: frozen $((100 * frozen / normal))%, killed $((100 * killed / normal))%;" \
  "of the PostgreSQL-only read rate: frozen $((100 * frozen / database_only))%, killed $((100 * killed / database_only))%"
