#!/usr/bin/env bash
# Side-by-side benchmark: GetUser (cache hit) (a) straight to the user-service over gRPC,
# (b) REST through the gateway, (c) native gRPC through the gateway, (d) gRPC-web through the
# gateway; concurrency 1 and 64; then the gateway's RSS. Everything on loopback, one machine.
#
# Usage (from the repository root):
#   CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
#     cargo build --release -p edge-gateway -p user-service -p meshgate-loadgen
#   edge-gateway/bench/run.sh [seconds-per-run]
set -euo pipefail

SECONDS_PER_RUN="${1:-10}"
BIN="${CARGO_TARGET_DIR:-target}/release"
WORK="$(mktemp -d)"
USER_GRPC=127.0.0.1:50151
GATEWAY=127.0.0.1:8180

cleanup() {
  [[ -n "${GATEWAY_PID:-}" ]] && kill "$GATEWAY_PID" 2>/dev/null || true
  [[ -n "${USER_PID:-}" ]] && kill "$USER_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listening on $1" >&2
  return 1
}

"$BIN/user-service" --grpc-addr "$USER_GRPC" --metrics-addr 127.0.0.1:9190 \
  --sqlite-path "$WORK/users.db" --migrate-on-start true --log-format text --log-filter warn &
USER_PID=$!
wait_port "$USER_GRPC"

cat > "$WORK/gateway.yaml" <<YAML
server:
  version: 1
  threads: 2
  pid_file: $WORK/gateway.pid
  upgrade_sock: $WORK/gateway.sock
gateway:
  listen: $GATEWAY
  metrics_listen: 127.0.0.1:9191
  upstreams: [$USER_GRPC]
YAML
# Access log off (RUST_LOG=warn): the run measures the proxy path, not stdout.
RUST_LOG=warn "$BIN/edge-gateway" --config "$WORK/gateway.yaml" > "$WORK/gateway.log" 2>&1 &
GATEWAY_PID=$!
wait_port "$GATEWAY"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ticks_per_second=$(getconf CLK_TCK)

# One row: throughput and latency from the generator, plus the CPU each process spent per
# request (µs; from /proc, so it holds up better than req/s on a shared machine).
run() {
  local label=$1 target=$2 transport=$3 concurrency=$4
  local line service_before gateway_before service_after gateway_after requests
  service_before=$(cpu_ticks "$USER_PID")
  gateway_before=$(cpu_ticks "$GATEWAY_PID")
  line=$("$BIN/meshgate-loadgen" --target "$target" --scenario get-hit --transport "$transport" \
    --concurrency "$concurrency" --connections 4 --seed-users 200 --duration "$SECONDS_PER_RUN")
  service_after=$(cpu_ticks "$USER_PID")
  gateway_after=$(cpu_ticks "$GATEWAY_PID")
  requests=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")
  per_request() { awk -v t="$1" -v n="$requests" -v hz="$ticks_per_second" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }'; }
  local gateway_cpu="-"
  [[ $target == "http://$GATEWAY" ]] && gateway_cpu=$(per_request $((gateway_after - gateway_before)))
  echo "| $label | $concurrency | $(sed -E 's/.*throughput=([0-9]+).*/\1/' <<<"$line") \
| $(sed -E 's/.*p50=([0-9.]+) ms.*/\1/' <<<"$line") | $(sed -E 's/.*p99=([0-9.]+) ms.*/\1/' <<<"$line") \
| $(sed -E 's/.*errors=([0-9]+).*/\1/' <<<"$line") \
| $(sed -E 's/.*client_cpu_us_per_request=([0-9.na\/]+).*/\1/' <<<"$line") \
| $(per_request $((service_after - service_before))) | $gateway_cpu |"
}

echo "| path | concurrency | req/s | p50 ms | p99 ms | errors | client CPU µs/req | service CPU µs/req | gateway CPU µs/req |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
for concurrency in 1 64; do
  run "(a) gRPC direct to user-service" "http://$USER_GRPC" grpc "$concurrency"
  run "(b) REST via gateway" "http://$GATEWAY" rest "$concurrency"
  run "(c) gRPC via gateway" "http://$GATEWAY" grpc "$concurrency"
  run "(d) gRPC-web via gateway" "http://$GATEWAY" grpc-web "$concurrency"
done
echo
grep -E '^(VmRSS|VmHWM)' "/proc/$GATEWAY_PID/status" | sed 's/^/gateway /'
