#!/usr/bin/env bash
# Measures the edge hop in one run: the same unary Connect JSON call
# (GetUser) sent straight to its upstream ("direct"), through Keel's edge,
# and through nginx as a reference proxy, over HTTP/1.1 keep-alive (wrk,
# 32 connections) and h2c (h2load, 16 connections x 16 streams), against
# two upstreams:
#
#   zero  an upstream that costs nothing (scripts/zeroupstream: a plain
#         net/http handler answering a fixed message), so the hop itself
#         is what is measured;
#   user  the real user service (SQLite), as users see it.
#
# Every policy is on, as configured in consul/kv/test (balancing,
# breakers, retry budget, throttle, deadlines, load shedding, metrics), and
# tracing exports to a local Jaeger with 1% of traces sampled.
# BENCH_ROUNDS rounds (default 3) alternate the targets, so drift in the
# machine hits all of them alike; the table gives each round and the
# median, and the ratios of the medians. Then the latency the edge adds:
# scripts/loadgen holds half the edge's measured maximum rate (open loop)
# against direct and the edge, and prints p50/p99 of both.
#
# BASE_REF=<git ref> also builds the edge of that commit and measures it
# beside the current one ("before"). BENCH_SECONDS sets each run's length
# (default 10). Installs wrk, h2load and nginx from Debian if missing.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
seconds="${BENCH_SECONDS:-10}"
rounds="${BENCH_ROUNDS:-3}"
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

echo "building..." >&2
go build -o "$tmp/edge" ./cmd/edge
go build -o "$tmp/user" ./services/user
go build -o "$tmp/zero" ./scripts/zeroupstream
go build -o "$tmp/loadgen" ./scripts/loadgen
targets=(edge)
if [ -n "${BASE_REF:-}" ]; then
	git worktree add -q --detach "$tmp/base" "$BASE_REF"
	(cd "$tmp/base" && go build -o "$tmp/edge-before" ./cmd/edge)
	targets+=(edge-before)
fi
jaeger_bin="$(./scripts/get-jaeger.sh)"

# free port
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
wait_port() { for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing listens on $1" >&2; return 1; }

# Jaeger, for the 1% of traces sampled.
otlp="$(port)"; jq="$(port)"; jg="$(port)"; og="$(port)"; hc="$(port)"
cat >"$tmp/jaeger.yaml" <<YAML
service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces: {receivers: [otlp], processors: [batch], exporters: [jaeger_storage_exporter]}
  telemetry: {metrics: {level: none}, traces: {level: none}}
extensions:
  healthcheckv2: {use_v2: true, http: {endpoint: "127.0.0.1:$hc"}}
  jaeger_query: {storage: {traces: mem}, http: {endpoint: "127.0.0.1:$jq"}, grpc: {endpoint: "127.0.0.1:$jg"}, enable_tracing: false}
  jaeger_storage: {backends: {mem: {memory: {max_traces: 100000}}}}
receivers:
  otlp: {protocols: {http: {endpoint: "127.0.0.1:$otlp"}, grpc: {endpoint: "127.0.0.1:$og"}}}
processors:
  batch: {}
exporters:
  jaeger_storage_exporter: {trace_storage: mem}
YAML
"$jaeger_bin" --config "file:$tmp/jaeger.yaml" >"$tmp/jaeger.log" 2>&1 &
pids+=($!)
wait_port "$otlp"

export KEEL_ENV=test KEEL_CONFIG_DIR="$root/consul/kv" KEEL_LOG_LEVEL=warn
export OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$otlp" OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.01

zero="127.0.0.1:$(port)"
"$tmp/zero" -addr "$zero" >/dev/null &
pids+=($!)
user="127.0.0.1:$(port)"
KEEL_SERVER_ADDR="$user" KEEL_DATABASE_DATA_DIR="$tmp/data" KEEL_TOKEN_KEY="$(head -c 32 /dev/urandom | base64)" "$tmp/user" 2>"$tmp/user.err" &
pids+=($!)
wait_port "${zero#*:}"
wait_port "${user#*:}"

# One edge per upstream and per edge build, each with its own static
# discovery (KEEL_PEERS).
declare -A addr
addr[zero/direct]="$zero"
addr[user/direct]="$user"
for t in "${targets[@]}"; do
	bin="$tmp/$t"
	kv="$root/consul/kv"
	[ "$t" = edge-before ] && kv="$tmp/base/consul/kv"
	for up in zero user; do
		a="127.0.0.1:$(port)"
		upstream="${addr[$up/direct]}"
		KEEL_CONFIG_DIR="$kv" KEEL_PEERS="user=$upstream" KEEL_SERVER_ADDR="$a" "$bin" 2>"$tmp/$t-$up.err" &
		pids+=($!)
		wait_port "${a#*:}"
		addr[$up/$t]="$a"
	done
done

# nginx, one worker, keep-alive upstreams, a port per upstream and protocol.
n_zero1="$(port)"; n_zero2="$(port)"; n_user1="$(port)"; n_user2="$(port)"
cat >"$tmp/nginx.conf" <<NGINX
worker_processes 1;
pid $tmp/nginx.pid;
error_log $tmp/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream zero { server $zero; keepalive 64; }
  upstream user { server $user; keepalive 64; }
  server { listen 127.0.0.1:$n_zero1; location / { proxy_pass http://zero; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:$n_zero2 http2; location / { proxy_pass http://zero; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:$n_user1; location / { proxy_pass http://user; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:$n_user2 http2; location / { proxy_pass http://user; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
NGINX
nginx -c "$tmp/nginx.conf" -p "$tmp"
wait_port "$n_user2"

id="$(curl -sf -X POST "http://${addr[user/edge]}/shop.user.v1.UserService/Register" -H 'Content-Type: application/json' \
	-d '{"email":"bench@example.com","password":"correct horse","displayName":"Bench"}' |
	sed -n 's/.*"id":"\([^"]*\)".*/\1/p')"
[ -n "$id" ] || { echo "could not register the bench user" >&2; exit 1; }
body="{\"id\":\"$id\"}"
printf '%s' "$body" >"$tmp/body.json"
cat >"$tmp/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '$body'
LUA
path=/shop.user.v1.UserService/GetUser

# h1 ADDR and h2 ADDR print "goodput p99 refused": successful calls per
# second, wrk's p99 (h2load gives none: "-") and how many calls were not
# answered 2xx (a server shedding load refuses some under this much
# concurrency: 32 connections, or 16 x 16 streams).
h1() {
	wrk -t 2 -c 32 -d "${seconds}s" --latency -s "$tmp/post.lua" "http://$1$path" 2>&1 |
		awk -v d="$seconds" '/requests in/ {n=$1} /Non-2xx/ {bad=$NF} / 99%/ {p=$2}
			END {printf "%.0f %s %d\n", (n - bad) / d, (p == "" ? "-" : p), bad}'
}
h2() {
	h2load -D "$seconds" -c 16 -m 16 -d "$tmp/body.json" -H 'Content-Type: application/json' "http://$1$path" 2>&1 |
		awk -v d="$seconds" '/^requests:/ {errored=$12} /^status codes:/ {ok=$3; bad=$7+$9} END {printf "%.0f - %d\n", ok / d, bad + errored}'
}

declare -A rps p99
names=(direct "${targets[@]}" nginx)
addr[zero/nginx/h1]="127.0.0.1:$n_zero1"; addr[zero/nginx/h2]="127.0.0.1:$n_zero2"
addr[user/nginx/h1]="127.0.0.1:$n_user1"; addr[user/nginx/h2]="127.0.0.1:$n_user2"
for round in $(seq 1 "$rounds"); do
	for up in zero user; do
		for proto in h1 h2; do
			for name in "${names[@]}"; do
				a="${addr[$up/$name]:-}"
				[ "$name" = nginx ] && a="${addr[$up/nginx/$proto]}"
				read -r r p refused < <("$proto" "$a")
				rps[$up/$proto/$name]+="$r "
				p99[$up/$proto/$name]+="$p "
				printf 'round %s %-4s %-2s %-11s %10s req/s  p99 %-8s not 2xx %s\n' "$round" "$up" "$proto" "$name" "$r" "$p" "$refused" >&2
			done
		done
	done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR == 0) print 0; else print a[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "-"}'; }
echo
echo "GetUser, Connect JSON, successful calls/s, ${seconds}s x ${rounds} rounds each, all on this machine ($(nproc) cores); every policy on, 1% of traces sampled"
printf '%-6s %-4s' upstream proto
for name in "${names[@]}"; do printf ' %22s' "$name req/s (rounds)"; done
printf ' %10s %10s\n' "edge/dir" "edge/nginx"
for up in zero user; do
	for proto in h1 h2; do
		printf '%-6s %-4s' "$up" "$proto"
		declare -A med
		for name in "${names[@]}"; do
			med[$name]="$(echo "${rps[$up/$proto/$name]}" | median)"
			printf ' %8.0f (%s)' "${med[$name]}" "$(echo "${rps[$up/$proto/$name]}" | awk '{for (i=1;i<=NF;i++) printf "%s%.0f", (i>1?"/":""), $i/1000} END {print "k"}')"
		done
		printf ' %10s %10s\n' "$(ratio "${med[edge]}" "${med[direct]}")" "$(ratio "${med[edge]}" "${med[nginx]}")"
		if [ -n "${BASE_REF:-}" ]; then
			printf '%-11s edge/edge-before %s\n' '' "$(ratio "${med[edge]}" "${med[edge-before]}")"
		fi
	done
done
echo
echo "p99 under wrk's full load (HTTP/1.1, zero upstream): direct ${p99[zero/h1/direct]}| edge ${p99[zero/h1/edge]}| nginx ${p99[zero/h1/nginx]}"

# Latency the edge adds at half its maximum rate, open loop.
for proto in h1 h2; do
	max="$(echo "${rps[zero/$proto/edge]}" | median)"
	half="$(awk -v m="$max" 'BEGIN {printf "%d", m / 2}')"
	flag=""
	[ "$proto" = h2 ] && flag="-h2c"
	echo
	echo "open loop at half the edge's maximum ($half req/s), $proto, zero upstream, ${seconds}s:"
	for name in direct edge nginx; do
		a="${addr[zero/$name]:-}"
		[ "$name" = nginx ] && a="${addr[zero/nginx/$proto]}"
		printf '  %-6s ' "$name"
		"$tmp/loadgen" -url "http://$a$path" -body "$body" -rate "$half" -duration "${seconds}s" $flag
	done
done
