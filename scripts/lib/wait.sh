# shellcheck shell=bash
# Waiting for a TCP port, written once for every script (sourced).

# port_answers PORT [HOST]: true when something accepts TCP connections on HOST:PORT.
port_answers() { (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null; }

# wait_for_port PORT WHAT [SECONDS] [HOST]: returns once HOST:PORT (default 127.0.0.1) accepts
# connections; after SECONDS (default 10) fails naming WHAT, so a script under `set -e` stops
# there instead of running on against nothing.
wait_for_port() {
  local port=$1 what=$2 seconds=${3:-10} host=${4:-127.0.0.1} tries
  for ((tries = seconds * 10; tries > 0; tries--)); do
    port_answers "$port" "$host" && return 0
    sleep 0.1
  done
  echo "error: nothing listens on $host:$port after ${seconds}s ($what)" >&2
  return 1
}
