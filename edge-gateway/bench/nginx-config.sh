# shellcheck shell=bash
# The nginx reference the benchmarks compare the gateway's gRPC pass-through with (sourced by
# edge-gateway/bench/run.sh and edge-gateway/bench/callgrind.sh, so both measure the same proxy).
#
# nginx_grpc_config DIR LISTEN UPSTREAM WORKERS: prints an nginx.conf for a plain gRPC proxy:
# h2c in on LISTEN, h2c out to UPSTREAM over kept-alive connections, no logs, WORKERS worker
# processes, its pid, logs and temporary files under DIR.
nginx_grpc_config() {
  local dir=$1 listen=$2 upstream=$3 workers=$4
  cat <<NGINX
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  # nginx closes a connection after keepalive_requests (default 1000) requests, failing the
  # calls in flight on it: far more than a run sends, as the gateway has no such limit.
  keepalive_requests 10000000;
  upstream users { server $upstream; keepalive 64; keepalive_requests 10000000; }
  server {
    listen $listen http2;
    http2_max_concurrent_streams 128;
    location / { grpc_pass grpc://users; }
  }
}
NGINX
}
