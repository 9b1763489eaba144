#!/usr/bin/env bash
# Side-by-side benchmark of GetUser (a cache hit in the user-service), every row in one run on
# one machine, all over loopback:
#   (a) native gRPC straight to the user-service,
#   (b) REST through the gateway,
#   (c) native gRPC through the gateway (pass-through),
#   (n) native gRPC through nginx `grpc_pass` (2 workers): the reference for (c),
#   (d) gRPC-web (binary) through the gateway,
#   (w) gRPC-web (binary) straight to the user-service (tonic-web): the reference for (d);
# at concurrency 1 and 64; then the gateway's RSS. Each row prints the CPU every process spent
# per request (client, user-service, gateway, nginx: utime + stime from /proc over the row ÷
# requests), which holds up far better than req/s on a shared machine, and the proxy's system
# calls and context switches per request (perf's kernel counters, when perf can count them).
#
# Usage (from the repository root):
#   CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
#     cargo build --release -p edge-gateway -p user-service -p meshgate-loadgen
#   edge-gateway/bench/run.sh [seconds-per-run] [concurrency ...]
# Needs nginx with the http_v2 module (Debian: apt-get install nginx-light); NGINX=path overrides.
set -euo pipefail
# wait_for_port
source "$(dirname "$0")/../../scripts/lib/wait.sh"
# nginx_grpc_config
source "$(dirname "$0")/nginx-config.sh"

SECONDS_PER_RUN="${1:-10}"
shift || true
CONCURRENCIES=("$@")
[[ ${#CONCURRENCIES[@]} -eq 0 ]] && CONCURRENCIES=(1 64)
BIN="${CARGO_TARGET_DIR:-target}/release"
# GATEWAY_BIN=path runs another gateway build (e.g. a copy of the binary before a change).
GATEWAY_BIN="${GATEWAY_BIN:-$BIN/edge-gateway}"
# pingora's worker threads and whether they steal each other's tasks (the gateway's defaults).
GATEWAY_THREADS="${GATEWAY_THREADS:-2}"
WORK_STEALING="${WORK_STEALING:-true}"
NGINX="${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}"
WORK="$(mktemp -d)"
# nginx's workers run as an unprivileged user when started as root: they must reach the config.
chmod 755 "$WORK"
USER_GRPC=127.0.0.1:50151
GATEWAY=127.0.0.1:8180
NGINX_ADDR=127.0.0.1:8182

cleanup() {
  [[ -n "${NGINX_PID:-}" ]] && kill "$NGINX_PID" 2>/dev/null || true
  [[ -n "${GATEWAY_PID:-}" ]] && kill "$GATEWAY_PID" 2>/dev/null || true
  [[ -n "${USER_PID:-}" ]] && kill "$USER_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT


# gRPC-web served by the service itself (tonic-web) for row (w); native gRPC is unaffected.
"$BIN/user-service" --grpc-addr "$USER_GRPC" --metrics-addr 127.0.0.1:9190 \
  --sqlite-path "$WORK/users.db" --migrate-on-start true --log-format text --log-filter warn \
  --grpc-web true &
USER_PID=$!
wait_for_port "${USER_GRPC#*:}" USER_GRPC 10 "${USER_GRPC%:*}"

cat > "$WORK/gateway.yaml" <<YAML
server:
  version: 1
  threads: $GATEWAY_THREADS
  work_stealing: $WORK_STEALING
  pid_file: $WORK/gateway.pid
  upgrade_sock: $WORK/gateway.sock
gateway:
  listen: $GATEWAY
  metrics_listen: 127.0.0.1:9191
  upstreams: [$USER_GRPC]
YAML
# Access log off (RUST_LOG=warn): the run measures the proxy path, not stdout.
RUST_LOG=warn "$GATEWAY_BIN" --config "$WORK/gateway.yaml" > "$WORK/gateway.log" 2>&1 &
GATEWAY_PID=$!
wait_for_port "${GATEWAY#*:}" GATEWAY 10 "${GATEWAY%:*}"

# nginx as a plain gRPC proxy: h2c in, h2c out over kept-alive upstream connections, no logs.
mkdir -p "$WORK/nginx"
nginx_grpc_config "$WORK/nginx" "$NGINX_ADDR" "$USER_GRPC" 2 > "$WORK/nginx/nginx.conf"
"$NGINX" -e stderr -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
NGINX_PID=$!
wait_for_port "${NGINX_ADDR#*:}" NGINX_ADDR 10 "${NGINX_ADDR%:*}"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# nginx: the master and its workers.
nginx_ticks() {
  local total=0 pid
  for pid in "$NGINX_PID" $(pgrep -P "$NGINX_PID"); do
    total=$((total + $(cpu_ticks "$pid")))
  done
  echo "$total"
}
ticks_per_second=$(getconf CLK_TCK)
# Kernel work callgrind cannot see and CPU time reads noisily: system calls and context switches
# of the proxy (gateway or nginx) per request, counted by the kernel (perf tracepoints; "-" where
# perf cannot count them, e.g. without root).
PERF="${PERF:-$(command -v perf || true)}"
if [[ -n $PERF ]] && ! "$PERF" stat -e raw_syscalls:sys_enter,context-switches -- true >/dev/null 2>&1; then
  PERF=""
fi

# One row: throughput and latency from the generator, plus the CPU each process on the path
# spent per request (µs); "-" for a process the row does not go through.
run() {
  local label=$1 target=$2 transport=$3 concurrency=$4
  local line requests service_before gateway_before nginx_before
  service_before=$(cpu_ticks "$USER_PID")
  gateway_before=$(cpu_ticks "$GATEWAY_PID")
  nginx_before=$(nginx_ticks)
  local proxy_pids="" perf_pid=""
  [[ $target == "http://$GATEWAY" ]] && proxy_pids=$GATEWAY_PID
  [[ $target == "http://$NGINX_ADDR" ]] && proxy_pids=$(pgrep -P "$NGINX_PID" | paste -sd,)
  if [[ -n $PERF && -n $proxy_pids ]]; then
    "$PERF" stat -x, -e raw_syscalls:sys_enter,context-switches -p "$proxy_pids" \
      -o "$WORK/perf.csv" 2>/dev/null &
    perf_pid=$!
  fi
  line=$("$BIN/meshgate-loadgen" --target "$target" --scenario get-hit --transport "$transport" \
    --concurrency "$concurrency" --connections 4 --seed-users 200 --duration "$SECONDS_PER_RUN")
  local service_cpu=$(($(cpu_ticks "$USER_PID") - service_before))
  local gateway_cpu=$(($(cpu_ticks "$GATEWAY_PID") - gateway_before))
  local nginx_cpu=$(($(nginx_ticks) - nginx_before))
  requests=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")
  local syscalls="-" switches="-"
  if [[ -n $perf_pid ]]; then
    kill -INT "$perf_pid"
    wait "$perf_pid" 2>/dev/null || true
    count() { awk -F, -v e="$1" -v n="$requests" '$3 == e { printf "%.1f", $1 / n }' "$WORK/perf.csv"; }
    syscalls=$(count raw_syscalls:sys_enter)
    switches=$(count context-switches)
  fi
  per_request() { awk -v t="$1" -v n="$requests" -v hz="$ticks_per_second" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }'; }
  local gateway_column="-" nginx_column="-"
  [[ $target == "http://$GATEWAY" ]] && gateway_column=$(per_request "$gateway_cpu")
  [[ $target == "http://$NGINX_ADDR" ]] && nginx_column=$(per_request "$nginx_cpu")
  echo "| $label | $concurrency | $(sed -E 's/.*throughput=([0-9]+).*/\1/' <<<"$line") \
| $(sed -E 's/.*p50=([0-9.]+) ms.*/\1/' <<<"$line") | $(sed -E 's/.*p99=([0-9.]+) ms.*/\1/' <<<"$line") \
| $(sed -E 's/.*errors=([0-9]+).*/\1/' <<<"$line") \
| $(sed -E 's/.*client_cpu_us_per_request=([0-9.na\/]+).*/\1/' <<<"$line") \
| $(per_request "$service_cpu") | $gateway_column | $nginx_column | $syscalls | $switches |"
}

echo "| path | concurrency | req/s | p50 ms | p99 ms | errors | client CPU µs/req | service CPU µs/req | gateway CPU µs/req | nginx CPU µs/req | proxy syscalls/req | proxy context switches/req |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for concurrency in "${CONCURRENCIES[@]}"; do
  run "(a) gRPC direct to user-service" "http://$USER_GRPC" grpc "$concurrency"
  run "(b) REST via gateway" "http://$GATEWAY" rest "$concurrency"
  run "(c) gRPC via gateway (pass-through)" "http://$GATEWAY" grpc "$concurrency"
  run "(n) gRPC via nginx grpc_pass" "http://$NGINX_ADDR" grpc "$concurrency"
  run "(d) gRPC-web via gateway" "http://$GATEWAY" grpc-web "$concurrency"
  run "(w) gRPC-web direct to user-service (tonic-web)" "http://$USER_GRPC" grpc-web "$concurrency"
done
echo
grep -E '^(VmRSS|VmHWM)' "/proc/$GATEWAY_PID/status" | sed 's/^/gateway /'
