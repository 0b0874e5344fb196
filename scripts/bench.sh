#!/usr/bin/env bash
# Measures the edge hop: the same Connect JSON call (GetUser) sent straight
# to the user service, through Keel's edge, and through nginx as a reference
# proxy, in one run, with h2load (h2c, 16 connections x 16 streams) and wrk
# (HTTP/1.1 keep-alive, 32 connections). Prints requests/s and the ratio of
# each proxy to direct. Installs h2load, wrk and nginx from Debian if needed.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
duration="${BENCH_SECONDS:-10}"
need=()
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
if [ ${#need[@]} -gt 0 ]; then
	apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

tmp="$(mktemp -d)"
pids=()
cleanup() {
	for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
	[ -f "$tmp/nginx.pid" ] && kill "$(cat "$tmp/nginx.pid")" 2>/dev/null || true
	wait 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT

go build -o "$tmp/keel" ./cmd/keel
KEEL_LOG_LEVEL=warn "$tmp/keel" up --env test --addr 127.0.0.1:0 --data-dir "$tmp/data" >"$tmp/up.out" 2>"$tmp/up.err" &
pids+=($!)
for _ in $(seq 1 100); do grep -q "edge at" "$tmp/up.out" 2>/dev/null && break; sleep 0.1; done
edge="$(sed -n 's/.*edge at http:\/\/\([0-9.:]*\).*/\1/p' "$tmp/up.out")"
user="$(sed -n 's/.*user@\([0-9.:]*\).*/\1/p' "$tmp/up.out")"
[ -n "$edge" ] && [ -n "$user" ] || { cat "$tmp/up.out" "$tmp/up.err"; exit 1; }

cat >"$tmp/nginx.conf" <<NGINX
worker_processes 1;
pid $tmp/nginx.pid;
error_log $tmp/nginx.err;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream user { server $user; keepalive 64; }
  server {
    listen 127.0.0.1:18090 http2;
    listen 127.0.0.1:18091;
    location / {
      proxy_pass http://user;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
NGINX
nginx -c "$tmp/nginx.conf" -p "$tmp"

id="$(curl -sf -X POST "http://$edge/shop.user.v1.UserService/Register" -H 'Content-Type: application/json' \
	-d '{"email":"bench@example.com","password":"correct horse","displayName":"Bench"}' |
	sed -n 's/.*"id":"\([^"]*\)".*/\1/p')"
printf '{"id":"%s"}' "$id" >"$tmp/body.json"
cat >"$tmp/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"id":"$id"}'
LUA
path=/shop.user.v1.UserService/GetUser

h2() {
	h2load -D "$duration" -c 16 -m 16 -d "$tmp/body.json" -H 'Content-Type: application/json' "http://$1$path" 2>&1 |
		awk '/^finished/ {print $4} /^requests:/ {failed=$10} END {if (failed != "0") print "FAILED:" failed}'
}
h1() {
	wrk -t 2 -c 32 -d "${duration}s" -s "$tmp/post.lua" "http://$1$path" 2>&1 | awk '/Requests\/sec/ {print $2} /Non-2xx/ {print "FAILED:" $0}'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }

echo "GetUser, Connect JSON, ${duration}s each, all on this machine"
direct2="$(h2 "$user")"; edge2="$(h2 "$edge")"; nginx2="$(h2 127.0.0.1:18090)"
echo "h2c (h2load -c16 -m16): direct $direct2 req/s | edge $edge2 ($(ratio "$edge2" "$direct2")x) | nginx $nginx2 ($(ratio "$nginx2" "$direct2")x)"
direct1="$(h1 "$user")"; edge1="$(h1 "$edge")"; nginx1="$(h1 127.0.0.1:18091)"
echo "HTTP/1.1 (wrk -c32): direct $direct1 req/s | edge $edge1 ($(ratio "$edge1" "$direct1")x) | nginx $nginx1 ($(ratio "$nginx1" "$direct1")x)"
