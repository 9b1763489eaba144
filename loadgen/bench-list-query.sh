#!/usr/bin/env bash
# What one ListUsers page costs PostgreSQL, before and after the trigger-kept total (issue 12
# item 10): a throw-away database migrated by `user-service migrate`, ROWS users, then pgbench
# (one client, DURATION seconds each) on the query the service used to send (COUNT(*) OVER ())
# and the one it sends now (users_count), on pages 1-5 of 10 and on page 100 of 100; the plans
# with EXPLAIN (ANALYZE, BUFFERS); and what the count trigger adds to an INSERT (pgbench with the
# trigger enabled, then disabled, CLIENTS clients, ROUNDS alternating rounds).
#
#   loadgen/bench-list-query.sh                    # ROWS=37000 DURATION=10 CLIENTS="1 16" ROUNDS=3
#   ROWS=1000000 DURATION=5 loadgen/bench-list-query.sh
#
# Uses DATABASE_URL (a server URL where a database may be created; default
# postgres://postgres@127.0.0.1:5432/test) and pgbench/psql from PostgreSQL's client package.
set -euo pipefail
cd "$(dirname "$0")/.."

server_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}
rows=${ROWS:-37000}
duration=${DURATION:-10}
clients=${CLIENTS:-"1 16"}
rounds=${ROUNDS:-3}
target_dir=${CARGO_TARGET_DIR:-target}

# The migration's speed is not measured: the debug build will do.
cargo build -q -p user-service >&2

database="bench_list_$(date +%s)_$$"
psql -q "$server_url" -c "CREATE DATABASE $database" >&2
database_url="${server_url%/*}/$database"
work=$(mktemp -d)
cleanup() {
  rm -rf "$work"
  psql -q "$server_url" -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" >&2 || true
}
trap cleanup EXIT

DATABASE_URL="$database_url" LOG_FORMAT=text RUST_LOG=warn "$target_dir/debug/user-service" migrate >&2
psql -q "$database_url" -c "INSERT INTO users (name, email, age, created_at)
  SELECT 'User ' || n, 'user' || n || '@example.com', 20 + n % 80, now() - n * interval '1 second'
  FROM generate_series(1, $rows) AS n" -c "VACUUM ANALYZE users" >&2

columns="id, name::text AS name, email::text AS email, age,
  EXTRACT(EPOCH FROM created_at)::int8 AS created_at, EXTRACT(EPOCH FROM updated_at)::int8 AS updated_at"
before="SELECT $columns, COUNT(*) OVER () AS total FROM users
  ORDER BY users.created_at DESC, users.id DESC LIMIT :limit OFFSET :offset"
after="SELECT $columns, (SELECT COALESCE(sum(n), 0) FROM users_count)::int8 AS total FROM users
  ORDER BY users.created_at DESC, users.id DESC LIMIT :limit OFFSET :offset"

page() { # name limit first_page last_page query
  printf '\\set limit %s\n\\set offset (random(%s, %s) - 1) * %s\n%s;\n' "$2" "$3" "$4" "$2" "$5" > "$work/$1.sql"
}
page before-p1-5 10 1 5 "$before"
page after-p1-5 10 1 5 "$after"
page before-p100 100 100 100 "$before"
page after-p100 100 100 100 "$after"
printf "INSERT INTO users (name, email, age) VALUES ('Bench', 'b' || gen_random_uuid() || '@example.com', 30);\n" > "$work/insert.sql"

echo "# $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(psql -Atc 'SHOW server_version' "$database_url"), $rows users, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
for script in before-p1-5 after-p1-5 before-p100 after-p100; do
  summary=$(pgbench -n -c 1 -T "$duration" -f "$work/$script.sql" "$database_url" 2>/dev/null \
    | awk '/latency average/ {latency = $4} /^tps/ {tps = $3} END {printf "%s ms, %d pages/s", latency, tps}')
  echo "list $script: $summary"
done
for query in before after; do
  echo "# EXPLAIN (ANALYZE, BUFFERS), page 1 of 10, $query:"
  sql=${!query}
  sql=${sql//:limit/10}
  psql -Atc "EXPLAIN (ANALYZE, BUFFERS) ${sql//:offset/0}" "$database_url" \
    | grep -E 'Limit|WindowAgg|Sort|Scan|InitPlan|Buffers|Execution Time' | sed 's/^/#   /' || true
done
# Alternating rounds, with and without the trigger: the neighbours' load moves between rounds.
insert_tps() { # clients
  pgbench -n -c "$1" -j "$1" -T "$duration" -f "$work/insert.sql" "$database_url" 2>/dev/null | awk '/^tps/ {printf "%d", $3}'
}
for c in $clients; do
  for round in $(seq "$rounds"); do
    with=$(insert_tps "$c")
    psql -q "$database_url" -c "ALTER TABLE users DISABLE TRIGGER users_count_inserted"
    without=$(insert_tps "$c")
    psql -q "$database_url" -c "ALTER TABLE users ENABLE TRIGGER users_count_inserted"
    echo "insert c=$c round $round: $with rows/s with the count trigger, $without without (load $(cut -d' ' -f1 /proc/loadavg))"
  done
done
