#!/usr/bin/env bash
# What the transactional outbox costs a write, and how long an event takes from commit to the
# worker (issue 16).
#
# 1. Write throughput, outbox off vs on (PostgreSQL, pgbench, CLIENTS clients, DURATION s per
#    cell, ROUNDS alternating rounds): CreateUser's SQL before the outbox (one autocommitted
#    INSERT), the same INSERT in an explicit transaction (the round trips alone), and what the
#    service runs now (BEGIN, INSERT users, INSERT the outbox row with a real event's JSON, COMMIT).
# 2. End-to-end latency: the release `user-service` (serve, relaying to NATS) and
#    `user-service worker`, after a 1 s warm-up, `loadgen --scenario create` for DURATION s at
#    each CONCURRENCY; then, per event of that run, the worker's apply transaction start
#    (`user_events.recorded_at`) minus the write's time at the service (`occurred_at_ms`, taken
#    just before its commit): p50 / p99 / max.
#
#   loadgen/bench-outbox.sh        # DURATION=10 CLIENTS="1 16" ROUNDS=3 CONCURRENCY="1 16"
#
# Uses DATABASE_URL (default postgres://postgres@127.0.0.1:5432/test), REDIS_URL (default
# redis://127.0.0.1:6379), pgbench/psql and nats-server (a throwaway one on a free port).
set -euo pipefail
cd "$(dirname "$0")/.."

server_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
redis_url=${REDIS_URL:-redis://127.0.0.1:6379}
duration=${DURATION:-10}
clients=${CLIENTS:-"1 16"}
rounds=${ROUNDS:-3}
concurrency=${CONCURRENCY:-"1 16"}
target_dir=${CARGO_TARGET_DIR:-target}

# The same package set as every benchmark script: cargo unifies features over the packages it
# builds, so another set would rebuild half the dependency tree in the same target dir.
cargo build -q --release -p user-service -p edge-gateway -p meshgate-loadgen >&2

database="bench_outbox_$(date +%s)_$$"
psql -q "$server_url" -c "CREATE DATABASE $database" >&2
database_url="${server_url%/*}/$database"
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
  psql -q "$server_url" -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" >&2 || true
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

DATABASE_URL="$database_url" LOG_FORMAT=text RUST_LOG=warn "$target_dir/release/user-service" migrate >&2
echo "# $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(psql -Atc 'SHOW server_version' "$database_url"), load before: $(cut -d' ' -f1-3 /proc/loadavg)"

# 1. outbox off / on, the service's statements.
cat > "$work/off.sql" <<'SQL'
INSERT INTO users (id, name, email, age) VALUES (gen_random_uuid(), 'Bench', 'b' || gen_random_uuid() || '@example.com', 30);
SQL
# The same INSERT in an explicit transaction (the round trips the outbox adds, without its row).
cat > "$work/tx.sql" <<'SQL'
BEGIN;
INSERT INTO users (id, name, email, age) VALUES (gen_random_uuid(), 'Bench', 'b' || gen_random_uuid() || '@example.com', 30);
COMMIT;
SQL
# pgbench substitutes `:user_id` (set by \gset) textually, inside the literals too.
cat > "$work/on.sql" <<'SQL'
BEGIN;
INSERT INTO users (id, name, email, age) VALUES (gen_random_uuid(), 'Bench', 'b' || gen_random_uuid() || '@example.com', 30) RETURNING id AS user_id \gset
INSERT INTO user_outbox (event_id, user_id, event_type, version, payload) VALUES (gen_random_uuid(), ':user_id', 'user.created', 1,
  '{"event_id":"0b7e2c8e-4c1e-4d0e-9d43-1f1f0c3e0a11","type":"user.created","user_id":":user_id","version":1,"user":{"id":":user_id","name":"Bench","email":"bench@example.com","age":30,"created_at":1764500000,"updated_at":1764500000},"occurred_at_ms":1764500000000,"trace_parent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}');
COMMIT;
SQL
tps() { # script clients
  if ! pgbench -n -c "$2" -j "$2" -T "$duration" -f "$work/$1.sql" "$database_url" >"$work/pgbench.out" 2>&1; then
    echo "pgbench $1.sql (clients $2) failed:" >&2
    cat "$work/pgbench.out" >&2
    exit 1
  fi
  awk '/^tps/ {printf "%d", $3}' "$work/pgbench.out"
}
for c in $clients; do
  for round in $(seq "$rounds"); do
    off=$(tps off "$c")
    tx=$(tps tx "$c")
    on=$(tps on "$c")
    echo "writes/s clients=$c round=$round: outbox off $off, off in a transaction $tx, on $on (load $(cut -d' ' -f1 /proc/loadavg))"
  done
done
psql -q "$database_url" -c "TRUNCATE users, user_outbox" >&2

# 2. commit → worker.
nats_port=$(free_port)
nats-server -js -a 127.0.0.1 -p "$nats_port" -sd "$work/nats" >"$work/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.1; done
grpc_port=$(free_port)
env=(DATABASE_URL="$database_url" REDIS_URL="$redis_url" NATS_URL="nats://127.0.0.1:$nats_port"
  CACHE_KEY_PREFIX="bench-outbox-$$:" LOG_FORMAT=text RUST_LOG=warn)
env "${env[@]}" GRPC_ADDR="127.0.0.1:$grpc_port" METRICS_ADDR="127.0.0.1:$(free_port)" \
  "$target_dir/release/user-service" >"$work/serve.log" 2>&1 &
pids+=($!)
env "${env[@]}" METRICS_ADDR="127.0.0.1:$(free_port)" "$target_dir/release/user-service" worker >"$work/worker.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$grpc_port") 2>/dev/null && break; sleep 0.1; done
events_applied() { psql -Atc 'SELECT count(*) FROM user_events' "$database_url"; }
drain() { # waits until the worker has recorded every user's event (at most 60 s)
  local written
  written=$(psql -Atc "SELECT count(*) FROM users" "$database_url")
  for _ in $(seq 600); do
    [ "$(events_applied)" -ge "$written" ] && return 0
    sleep 0.1
  done
  echo "the worker recorded $(events_applied) of $written events within 60 s" >&2
  return 1
}
create_load() { # concurrency seconds
  "$target_dir/release/meshgate-loadgen" --target "http://127.0.0.1:$grpc_port" --scenario create \
    --concurrency "$1" --duration "$2"
}
# Warm-up (not counted): the relay's lease and stream, the worker's consumer, the connections.
create_load 1 1 >/dev/null
drain
for c in $concurrency; do
  since_ms=$(date +%s%3N)
  echo "## commit -> worker, CreateUser at c=$c for $duration s (load $(cut -d' ' -f1 /proc/loadavg))"
  create_load "$c" "$duration"
  # Where the lag is when the writes stop: rows the relay has not published yet, and events
  # published but not yet applied by the worker.
  psql -At "$database_url" -c "
    SELECT format('backlog when the writes stopped: %s in the outbox (relay), %s published but not applied (worker)',
      (SELECT count(*) FROM user_outbox),
      (SELECT count(*) FROM users) - (SELECT count(*) FROM user_events) - (SELECT count(*) FROM user_outbox))"
  drain
  psql -At "$database_url" -c "
    WITH latency AS (
      SELECT EXTRACT(EPOCH FROM recorded_at) * 1000 - (payload::jsonb ->> 'occurred_at_ms')::numeric AS ms
      FROM user_events WHERE (payload::jsonb ->> 'occurred_at_ms')::bigint >= $since_ms)
    SELECT format('commit -> worker (%s events at c=$c): p50 %s ms, p99 %s ms, max %s ms',
      count(*), round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1),
      round(percentile_cont(0.99) WITHIN GROUP (ORDER BY ms)::numeric, 1), round(max(ms), 1))
    FROM latency"
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
