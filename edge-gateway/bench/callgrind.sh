#!/usr/bin/env bash
# Instructions the gateway executes per request, by kind (REST GET, native gRPC pass-through,
# gRPC-web), counted by `valgrind --tool=callgrind` on the release gateway. Unlike CPU time these
# counts do not move with a shared machine's noise, so before/after comparisons of a change can
# be read from one run each.
#
# Each kind runs GetUser (a cache hit in the user-service) twice through the gateway, with
# $SHORT and $LONG requests; counters are zeroed before and dumped after each run, so
# (Ir(LONG) - Ir(SHORT)) / (LONG - SHORT) is the steady-state cost of one request: connection
# setup, seeding and warm-up cancel out.
#
# Usage (from the repository root, after the release build of edge-gateway/bench/run.sh):
#   edge-gateway/bench/callgrind.sh [concurrency ...]      # default: 1 16
# KEEP=dir keeps the callgrind dumps there (for callgrind_annotate).
# FILTERS=native runs the gateway with the built-in filters of loadgen/bench-gateway-filters.sh
# (edge-gateway/bench/filter-configs.sh; default plain: none); KINDS="rest" picks the kinds.
# Kind `nginx` is the reference for `grpc`: the same calls through nginx `grpc_pass`
# (edge-gateway/bench/nginx-config.sh, one process: `master_process off`), its instructions
# counted the same way; in the default kinds when nginx is installed (NGINX=path overrides).
set -euo pipefail
# wait_for_port
source "$(dirname "$0")/../../scripts/lib/wait.sh"
# gateway_filters
source "$(dirname "$0")/filter-configs.sh"
# nginx_grpc_config
source "$(dirname "$0")/nginx-config.sh"

CONCURRENCIES=("$@")
[[ ${#CONCURRENCIES[@]} -eq 0 ]] && CONCURRENCIES=(1 16)
SHORT="${SHORT:-300}"
LONG="${LONG:-1300}"
BIN="${CARGO_TARGET_DIR:-target}/release"
# GATEWAY_BIN=path runs another gateway build (e.g. a copy of the binary before a change).
GATEWAY_BIN="${GATEWAY_BIN:-$BIN/edge-gateway}"
# pingora's worker threads and whether they steal each other's tasks (the gateway's defaults).
GATEWAY_THREADS="${GATEWAY_THREADS:-2}"
WORK_STEALING="${WORK_STEALING:-true}"
FILTERS="${FILTERS:-plain}"
NGINX="${NGINX:-$(command -v nginx || true)}"
KINDS="${KINDS:-rest grpc grpc-web${NGINX:+ nginx}}"
WORK="$(mktemp -d)"
USER_GRPC=127.0.0.1:50161
GATEWAY=127.0.0.1:8190
NGINX_ADDR=127.0.0.1:8192

cleanup() {
  [[ -n "${NGINX_PID:-}" ]] && kill "$NGINX_PID" 2>/dev/null || true
  [[ -n "${GATEWAY_PID:-}" ]] && kill "$GATEWAY_PID" 2>/dev/null || true
  [[ -n "${USER_PID:-}" ]] && kill "$USER_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  if [[ -n "${KEEP:-}" ]]; then mkdir -p "$KEEP" && cp "$WORK"/callgrind.out* "$WORK"/nginx.out* "$KEEP"/ 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT


"$BIN/user-service" --grpc-addr "$USER_GRPC" --metrics-addr 127.0.0.1:0 \
  --sqlite-path "$WORK/users.db" --migrate-on-start true --log-format text --log-filter warn &
USER_PID=$!
wait_for_port "${USER_GRPC#*:}" USER_GRPC 60 "${USER_GRPC%:*}"

cat > "$WORK/gateway.yaml" <<YAML
server:
  version: 1
  threads: $GATEWAY_THREADS
  work_stealing: $WORK_STEALING
  pid_file: $WORK/gateway.pid
  upgrade_sock: $WORK/gateway.sock
gateway:
  listen: $GATEWAY
  upstreams: [$USER_GRPC]
  filters: $(gateway_filters "$FILTERS")
YAML
RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" \
  "$GATEWAY_BIN" --config "$WORK/gateway.yaml" > "$WORK/gateway.log" 2>&1 &
GATEWAY_PID=$!
wait_for_port "${GATEWAY#*:}" GATEWAY 60 "${GATEWAY%:*}"

if [[ " $KINDS " == *" nginx "* ]]; then
  mkdir -p "$WORK/nginx"
  nginx_grpc_config "$WORK/nginx" "$NGINX_ADDR" "$USER_GRPC" 1 > "$WORK/nginx/nginx.conf"
  valgrind --tool=callgrind --callgrind-out-file="$WORK/nginx.out" \
    "$NGINX" -e stderr -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" \
    -g 'daemon off; master_process off;' > "$WORK/nginx.log" 2>&1 &
  NGINX_PID=$!
  wait_for_port "${NGINX_ADDR#*:}" NGINX_ADDR 60 "${NGINX_ADDR%:*}"
fi

# Dumps taken so far, per process under callgrind.
declare -A dumps=()
# Sets IR to the instructions process PID (its dumps named OUT.N) executed since the last
# zeroing, read from a fresh dump (not in a subshell: the dump count must persist).
instructions() {
  local pid=$1 out=$2
  callgrind_control -d "$pid" >/dev/null 2>&1
  dumps[$out]=$((${dumps[$out]:-0} + 1))
  local file="$out.${dumps[$out]}"
  for _ in $(seq 1 300); do
    grep -q '^totals:' "$file" 2>/dev/null && break
    sleep 0.1
  done
  IR=$(awk '/^totals:/ {print $2}' "$file")
}

load() {
  "$BIN/meshgate-loadgen" --target "http://$1" --scenario get-hit --transport "$2" \
    --concurrency "$3" --connections 4 --seed-users 20 --requests "$4" >/dev/null
}

echo "| kind | concurrency | proxy instructions per request |"
echo "| --- | ---: | ---: |"
for concurrency in "${CONCURRENCIES[@]}"; do
  for kind in $KINDS; do
    target=$GATEWAY transport=$kind pid=$GATEWAY_PID out=$WORK/callgrind.out
    if [[ $kind == nginx ]]; then
      target=$NGINX_ADDR transport=grpc pid=$NGINX_PID out=$WORK/nginx.out
    fi
    callgrind_control -z "$pid" >/dev/null 2>&1
    load "$target" "$transport" "$concurrency" "$SHORT"
    instructions "$pid" "$out"
    short=$IR
    callgrind_control -z "$pid" >/dev/null 2>&1
    load "$target" "$transport" "$concurrency" "$LONG"
    instructions "$pid" "$out"
    long=$IR
    echo "| $kind | $concurrency | $(( (long - short) / (LONG - SHORT) )) |"
  done
done
