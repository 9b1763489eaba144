# shellcheck shell=bash
# Finds or starts the PostgreSQL, Redis and NATS servers the tests need. Sourced by scripts/test.

die() { echo "error: $*" >&2; exit 1; }

_services_tmp=""
_started_pg=""
_started_redis=""
_started_nats=""

# Called in the current shell (not in $(...)) so the directory is created once.
_init_tmpdir() {
  [ -n "$_services_tmp" ] || _services_tmp="$(mktemp -d -t meshgate-services.XXXXXX)"
}

# port_answers, wait_for_port
source "$(dirname "${BASH_SOURCE[0]}")/wait.sh"

_free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

_find_pg_bin() {
  local name=$1 dir
  if command -v "$name" >/dev/null; then command -v "$name"; return; fi
  for dir in /usr/lib/postgresql/*/bin /usr/local/pgsql/bin /opt/homebrew/bin; do
    [ -x "$dir/$name" ] && { echo "$dir/$name"; return; }
  done
  return 1
}

ensure_postgres() {
  if [ -n "${DATABASE_URL:-}" ]; then return; fi
  local url="postgres://postgres@127.0.0.1:5432/test"
  if port_answers 5432; then
    if ! command -v psql >/dev/null || psql "$url" -qAtc 'select 1' >/dev/null 2>&1; then
      DATABASE_URL="$url"; return
    fi
    echo "note: a PostgreSQL on 127.0.0.1:5432 answers but refuses $url; starting a throwaway one" >&2
  fi
  local initdb pg_ctl
  initdb=$(_find_pg_bin initdb) && pg_ctl=$(_find_pg_bin pg_ctl) || die "PostgreSQL is needed: set DATABASE_URL, run one on 127.0.0.1:5432 (user postgres, trust auth, database test), or install the server binaries (Debian/Ubuntu: apt-get install -y postgresql; macOS: brew install postgresql)"
  local dir port as=()
  _init_tmpdir
  dir="$_services_tmp/pg"; port=$(_free_port)
  mkdir -p "$dir"
  # initdb refuses to run as root: run the throwaway cluster as an unprivileged user.
  if [ "$(id -u)" = 0 ]; then
    local user=postgres
    id "$user" >/dev/null 2>&1 || user=nobody
    chown -R "$user" "$_services_tmp"; chmod 755 "$_services_tmp"
    as=(runuser -u "$user" --)
  fi
  echo "starting a throwaway PostgreSQL on 127.0.0.1:$port ($dir)"
  "${as[@]}" "$initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log"; die "initdb failed"; }
  "${as[@]}" "$pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null \
    || { cat "$dir/server.log"; die "pg_ctl start failed"; }
  _started_pg="$dir/data"
  _pg_as=("${as[@]}"); _pg_ctl="$pg_ctl"
  local psql
  psql=$(_find_pg_bin psql) || die "psql not found next to the PostgreSQL server binaries"
  "$psql" -h 127.0.0.1 -p "$port" -U postgres -qc 'create database test' postgres >/dev/null
  DATABASE_URL="postgres://postgres@127.0.0.1:$port/test"
}

ensure_redis() {
  if [ -n "${REDIS_URL:-}" ]; then return; fi
  if port_answers 6379; then REDIS_URL="redis://127.0.0.1:6379"; return; fi
  local server
  server=$(command -v valkey-server || command -v redis-server) || die "Redis or Valkey is needed: set REDIS_URL, run one on 127.0.0.1:6379, or install a server (Debian/Ubuntu: apt-get install -y redis-server or valkey-server; macOS: brew install redis)"
  local dir port
  _init_tmpdir
  dir="$_services_tmp/redis"; port=$(_free_port)
  mkdir -p "$dir"
  echo "starting a throwaway $(basename "$server") on 127.0.0.1:$port"
  "$server" --bind 127.0.0.1 --port "$port" --save '' --appendonly no --dir "$dir" \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
  wait_for_port "$port" "$(basename "$server")" 5 || { cat "$dir/redis.log"; die "the throwaway Redis did not start"; }
  _started_redis="$dir/redis.pid"
  REDIS_URL="redis://127.0.0.1:$port"
}

_find_nats_server() {
  command -v nats-server || { [ -x /usr/sbin/nats-server ] && echo /usr/sbin/nats-server; }
}

# NATS with JetStream. The fault tests also start throwaway nats-servers of their own (they
# kill and restart them), so the binary is needed even when NATS_URL points elsewhere.
ensure_nats() {
  local server
  server=$(_find_nats_server) || die "nats-server is needed (the event tests start and kill their own): Debian/Ubuntu: apt-get install -y nats-server; macOS: brew install nats-server"
  if [ -n "${NATS_URL:-}" ]; then return; fi
  if port_answers 4222; then NATS_URL="nats://127.0.0.1:4222"; return; fi
  local dir port
  _init_tmpdir
  dir="$_services_tmp/nats"; port=$(_free_port)
  mkdir -p "$dir"
  echo "starting a throwaway nats-server -js on 127.0.0.1:$port"
  "$server" -js -a 127.0.0.1 -p "$port" -sd "$dir/store" -P "$dir/nats.pid" -l "$dir/nats.log" &
  wait_for_port "$port" nats-server 5 || { cat "$dir/nats.log" 2>/dev/null; die "nats-server did not start"; }
  _started_nats="$dir/nats.pid"
  NATS_URL="nats://127.0.0.1:$port"
}

stop_services() {
  if [ -n "$_started_pg" ]; then "${_pg_as[@]}" "$_pg_ctl" -D "$_started_pg" -m fast stop >/dev/null 2>&1 || true; fi
  if [ -n "$_started_redis" ] && [ -f "$_started_redis" ]; then kill "$(cat "$_started_redis")" 2>/dev/null || true; fi
  if [ -n "$_started_nats" ] && [ -f "$_started_nats" ]; then kill "$(cat "$_started_nats")" 2>/dev/null || true; fi
  if [ -n "$_services_tmp" ]; then rm -rf "$_services_tmp"; fi
}
