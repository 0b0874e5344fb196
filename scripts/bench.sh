#!/usr/bin/env bash
# Measures the edge hop in one run: the same read (GetUser) sent straight
# to its upstream ("direct"), through Keel's edge, and through nginx as a
# reference proxy, three ways:
#
#   connect  a unary Connect JSON POST, over HTTP/1.1 keep-alive (wrk, 32
#            connections) and h2c (h2load, 16 connections x 16 streams);
#   rest     GET /v1/users/{id} at the edge (transcoded from the
#            contract's google.api.http route), beside the same read as a
#            Connect GET direct and through nginx (wrk, HTTP/1.1);
#   grpc     a gRPC call over h2c (h2load; nginx with grpc_pass);
#
# against two upstreams:
#
#   zero  an upstream that costs nothing (scripts/zeroupstream: a plain
#         net/http handler answering a fixed message), so the hop itself
#         is what is measured;
#   user  the real user service (SQLite), as users see it.
#
# Every policy is on, as configured in consul/kv/test (balancing,
# breakers, retry budget, throttle, deadlines, load shedding, metrics),
# login is checked (every call carries a bearer token the edge verifies,
# and the edge vouches for the caller to the service; the calls that go
# straight to the service, or through nginx, carry the identity the edge
# would forward, which the service verifies), a per-user rate
# limit is on with a limit no call reaches (its cost is measured, not its
# refusals), and tracing exports to a local Jaeger with 1% of traces
# sampled. Before measuring, every target answers a few calls of every
# kind correctly (gRPC: grpc-status 0).
# BENCH_ROUNDS rounds (default 3) alternate the targets, so drift in the
# machine hits all of them alike; the table gives each round and the
# median, and the ratios of the medians. Then the latency the edge adds:
# scripts/loadgen holds half the edge's measured maximum rate (open loop)
# against direct and the edge for each kind of call, and prints p50/p99.
#
# Beside them, for the HTTP/1.1 Connect call to the zero upstream, two
# reference proxies in Go (scripts/refproxy) show what Go itself allows
# here: "go-bytes" copies requests and responses as bytes over a dedicated
# upstream connection (the floor of any Go proxy), "go-nethttp" is
# net/http's server in front of the edge's pooled client, deciding
# nothing (BENCH_REFERENCE=0 leaves them out).
#
# BENCH_CALLS and BENCH_UPSTREAMS narrow a run to some call kinds and
# upstreams (e.g. BENCH_CALLS=connect-h1 BENCH_UPSTREAMS=zero);
# BENCH_OPEN_LOOP=0 skips the latency part. BENCH_PROFILE=<dir> saves a
# CPU profile of the edge taken during its first run of each kind.
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
go build -o "$tmp/refproxy" ./scripts/refproxy
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

# The test environment's settings, with a per-user rate limit on every
# method that no call of this benchmark reaches.
mkdir -p "$tmp/kv"
cp -r "$root/consul/kv/test" "$tmp/kv/test"
sed -i 's/^  groups: {}$/  groups: {default: {rate: 1000000, per: 1s, burst: 1000000}}/' "$tmp/kv/test/edge.yaml"
grep -q '^  groups: {default:' "$tmp/kv/test/edge.yaml" || { echo "no rate_limits/groups in consul/kv/test/edge.yaml to set" >&2; exit 1; }
export KEEL_ENV=test KEEL_CONFIG_DIR="$tmp/kv" KEEL_LOG_LEVEL=warn
KEEL_TOKEN_KEY="$(head -c 32 /dev/urandom | base64)"
KEEL_IDENTITY_KEY="$(head -c 32 /dev/urandom | base64)"
export KEEL_TOKEN_KEY KEEL_IDENTITY_KEY
export OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$otlp" OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.01

zero="127.0.0.1:$(port)"
"$tmp/zero" -addr "$zero" >/dev/null &
pids+=($!)
user="127.0.0.1:$(port)"
KEEL_SERVER_ADDR="$user" KEEL_DATABASE_DATA_DIR="$tmp/data" "$tmp/user" 2>"$tmp/user.err" &
pids+=($!)
wait_port "${zero#*:}"
wait_port "${user#*:}"

# One edge per upstream and per edge build, each with its own static
# discovery (KEEL_PEERS).
declare -A addr proc
proc[zero/direct]="${pids[-2]}"
proc[user/direct]="${pids[-1]}"
addr[zero/direct]="$zero"
addr[user/direct]="$user"
for t in "${targets[@]}"; do
	bin="$tmp/$t"
	kv="$tmp/kv"
	[ "$t" = edge-before ] && kv="$tmp/base/consul/kv"
	for up in zero user; do
		a="127.0.0.1:$(port)"
		upstream="${addr[$up/direct]}"
		KEEL_CONFIG_DIR="$kv" KEEL_PEERS="user=$upstream" KEEL_SERVER_ADDR="$a" "$bin" 2>"$tmp/$t-$up.err" &
		pids+=($!)
		proc[$up/$t]=$!
		wait_port "${a#*:}"
		addr[$up/$t]="$a"
	done
done

# The reference proxies, in front of the zero upstream.
for mode in bytes nethttp; do
	a="127.0.0.1:$(port)"
	"$tmp/refproxy" -mode "$mode" -addr "$a" -upstream "$zero" >/dev/null &
	pids+=($!)
	proc[zero/go-$mode]=$!
	wait_port "${a#*:}"
	addr[zero/go-$mode]="$a"
done

# nginx, one worker, keep-alive upstreams, a port per upstream and
# protocol: HTTP/1.1, h2c proxied over HTTP/1.1, and gRPC (grpc_pass).
declare -A nport
for up in zero user; do for proto in h1 h2 grpc; do nport[$up/$proto]="$(port)"; done; done
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
  server { listen 127.0.0.1:${nport[zero/h1]}; location / { proxy_pass http://zero; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:${nport[zero/h2]} http2; location / { proxy_pass http://zero; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:${nport[zero/grpc]} http2; location / { grpc_pass grpc://zero; } }
  server { listen 127.0.0.1:${nport[user/h1]}; location / { proxy_pass http://user; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:${nport[user/h2]} http2; location / { proxy_pass http://user; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:${nport[user/grpc]} http2; location / { grpc_pass grpc://user; } }
}
NGINX
nginx -c "$tmp/nginx.conf" -p "$tmp"
wait_port "${nport[user/grpc]}"

edge="${addr[user/edge]}"
curl -sf -X POST "http://$edge/shop.user.v1.UserService/Register" -H 'Content-Type: application/json' \
	-d '{"email":"bench@example.com","password":"correct horse","displayName":"Bench"}' >"$tmp/register.json"
login="$(curl -sf -X POST "http://$edge/shop.user.v1.UserService/Login" -H 'Content-Type: application/json' \
	-d '{"email":"bench@example.com","password":"correct horse"}')"
id="$(sed -n 's/.*"id":"\([^"]*\)".*/\1/p' "$tmp/register.json")"
token="$(printf '%s' "$login" | sed -n 's/.*"accessToken":"\([^"]*\)".*/\1/p')"
[ -n "$id" ] && [ -n "$token" ] || { echo "could not register and log in the bench user" >&2; exit 1; }
auth="Authorization: Bearer $token"
# What the edge forwards for the user, for the calls that go straight to
# the user service or through nginx: services believe only an identity
# signed with the environment's key (the edge replaces a caller's own).
identity="$(python3 - "$KEEL_IDENTITY_KEY" "$id" <<'PY'
import base64, hashlib, hmac, json, sys, time
key, sub = sys.argv[1].encode(), sys.argv[2]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
now = int(time.time())
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
claims = b64(json.dumps({"iss": "keel-edge", "sub": sub, "iat": now, "exp": now + 3600}).encode())
sig = b64(hmac.new(key, (head + "." + claims).encode(), hashlib.sha256).digest())
print(head + "." + claims + "." + sig)
PY
)"
vouched="Keel-Identity: $identity"
body="{\"id\":\"$id\"}"
printf '%s' "$body" >"$tmp/body.json"
# GetUserRequest{id} in protobuf binary (field 1, length-delimited), and
# framed as one gRPC message.
grpc_hex="0a$(printf '%02x' "${#id}")$(printf '%s' "$id" | od -An -tx1 | tr -d ' \n')"
python3 -c 'import sys; sys.stdout.buffer.write(bytes.fromhex(sys.argv[1]))' "00$(printf '%08x' $((${#grpc_hex} / 2)))$grpc_hex" >"$tmp/grpc.bin"
path=/shop.user.v1.UserService/GetUser
connect_get="$path?connect=v1&encoding=json&message=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$body")"
rest_get="/v1/users/$id"
cat >"$tmp/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $token"
wrk.headers["Keel-Identity"] = "$identity"
wrk.body = '$body'
LUA
cat >"$tmp/get.lua" <<LUA
wrk.method = "GET"
wrk.headers["Authorization"] = "Bearer $token"
wrk.headers["Keel-Identity"] = "$identity"
LUA

# url UP NAME CALL prints the URL the call kind CALL takes to target NAME.
url() {
	local a="${addr[$1/$2]:-}"
	case "$2/$3" in
		nginx/connect-h1 | nginx/rest) a="127.0.0.1:${nport[$1/h1]}" ;;
		nginx/connect-h2) a="127.0.0.1:${nport[$1/h2]}" ;;
		nginx/grpc) a="127.0.0.1:${nport[$1/grpc]}" ;;
	esac
	case "$2/$3" in
		edge*/rest) echo "http://$a$rest_get" ;;
		*/rest) echo "http://$a$connect_get" ;;
		*) echo "http://$a$path" ;;
	esac
}

# load CALL URL prints "goodput p99 refused": successful calls per second,
# wrk's p99 (h2load gives none: "-") and how many calls were not answered
# 2xx (a server shedding load refuses some under this much concurrency: 32
# connections, or 16 x 16 streams).
load() {
	case "$1" in
		connect-h1 | rest)
			local script="$tmp/post.lua"
			[ "$1" = rest ] && script="$tmp/get.lua"
			wrk -t 2 -c 32 -d "${seconds}s" --latency -s "$script" "$2" 2>&1 |
				awk -v d="$seconds" '/requests in/ {n=$1} /Non-2xx/ {bad=$NF} / 99%/ {p=$2}
					END {printf "%.0f %s %d\n", (n - bad) / d, (p == "" ? "-" : p), bad}'
			;;
		connect-h2 | grpc)
			local args=(-d "$tmp/body.json" -H 'Content-Type: application/json')
			[ "$1" = grpc ] && args=(-d "$tmp/grpc.bin" -H 'Content-Type: application/grpc' -H 'te: trailers')
			h2load -D "$seconds" -c 16 -m 16 "${args[@]}" -H "$auth" -H "$vouched" "$2" 2>&1 |
				awk -v d="$seconds" '/^requests:/ {errored=$12} /^status codes:/ {ok=$3; bad=$7+$9} END {printf "%.0f - %d\n", ok / d, bad + errored}'
			;;
	esac
}

# loadgen_flags CALL sets flags to loadgen's flags for the call kind CALL.
loadgen_flags() {
	flags=(-H "$auth" -H "$vouched")
	case "$1" in
		connect-h1) flags+=(-body "$body") ;;
		connect-h2) flags+=(-body "$body" -h2c) ;;
		rest) flags+=(-method GET) ;;
		grpc) flags+=(-grpc -h2c -body "$grpc_hex") ;;
	esac
}

# check UP NAME CALL: a few calls, every one answered correctly.
check() {
	local flags out
	loadgen_flags "$3"
	out="$("$tmp/loadgen" -url "$(url "$1" "$2" "$3")" -rate 20 -duration 1s "${flags[@]}")"
	case "$out" in
		*" failed=0 "*) ;;
		*) echo "$1 $2 $3 does not answer correctly: $out" >&2; exit 1 ;;
	esac
}

names=(direct "${targets[@]}" nginx)
read -r -a calls <<<"${BENCH_CALLS:-connect-h1 connect-h2 rest grpc}"
read -r -a ups <<<"${BENCH_UPSTREAMS:-zero user}"
for up in "${ups[@]}"; do for call in "${calls[@]}"; do for name in "${names[@]}"; do check "$up" "$name" "$call"; done; done; done

declare -A rps p99
profiling=()
for round in $(seq 1 "$rounds"); do
	for up in "${ups[@]}"; do
		for call in "${calls[@]}"; do
			for name in "${names[@]}"; do
				if [ -n "${BENCH_PROFILE:-}" ] && [ "$round" = 1 ] && [ "$name" = edge ]; then
					mkdir -p "$BENCH_PROFILE"
					curl -sf -o "$BENCH_PROFILE/$up-$call.pprof" "http://${addr[$up/edge]}/debug/pprof/profile?seconds=$((seconds > 2 ? seconds - 1 : 1))" &
					profiling+=($!)
				fi
				read -r r p refused < <(load "$call" "$(url "$up" "$name" "$call")")
				rps[$up/$call/$name]+="$r "
				p99[$up/$call/$name]+="$p "
				printf 'round %s %-4s %-10s %-11s %10s req/s  p99 %-8s not 2xx %s\n' "$round" "$up" "$call" "$name" "$r" "$p" "$refused" >&2
			done
		done
	done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {if (NR == 0) print 0; else print a[int((NR+1)/2)]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "-"}'; }
echo
echo "GetUser, successful calls/s, ${seconds}s x ${rounds} rounds each, all on this machine ($(nproc) cores); every policy on, login checked, rate limit on, 1% of traces sampled"
echo "(rest: GET /v1/users/{id} at the edge, the same read as a Connect GET direct and through nginx)"
printf '%-6s %-10s' upstream call
for name in "${names[@]}"; do printf ' %22s' "$name req/s (rounds)"; done
printf ' %10s %10s\n' "edge/dir" "edge/nginx"
for up in "${ups[@]}"; do
	for call in "${calls[@]}"; do
		printf '%-6s %-10s' "$up" "$call"
		declare -A med
		for name in "${names[@]}"; do
			med[$name]="$(echo "${rps[$up/$call/$name]}" | median)"
			printf ' %8.0f (%s)' "${med[$name]}" "$(echo "${rps[$up/$call/$name]}" | awk '{for (i=1;i<=NF;i++) printf "%s%.0f", (i>1?"/":""), $i/1000} END {print "k"}')"
		done
		printf ' %10s %10s\n' "$(ratio "${med[edge]}" "${med[direct]}")" "$(ratio "${med[edge]}" "${med[nginx]}")"
		if [ -n "${BASE_REF:-}" ]; then
			printf '%-17s edge/edge-before %s\n' '' "$(ratio "${med[edge]}" "${med[edge-before]}")"
		fi
	done
done
for pid in "${profiling[@]}"; do wait "$pid" || true; done

if [ "${BENCH_REFERENCE:-1}" = 1 ]; then
	refs=(go-bytes go-nethttp edge nginx)
	for name in go-bytes go-nethttp; do check zero "$name" connect-h1; done
	declare -A ref
	for round in $(seq 1 "$rounds"); do
		for name in "${refs[@]}"; do
			read -r r _ _ < <(load connect-h1 "$(url zero "$name" connect-h1)")
			ref[$name]+="$r "
			printf 'reference round %s %-10s %10s req/s\n' "$round" "$name" "$r" >&2
		done
	done
	echo
	echo "What Go allows: connect-h1 to the zero upstream, successful calls/s, median of ${rounds} rounds, and the ratio to nginx"
	for name in "${refs[@]}"; do
		m="$(echo "${ref[$name]}" | median)"
		printf '  %-10s %8.0f  %s x nginx\n' "$name" "$m" "$(ratio "$m" "$(echo "${ref[nginx]}" | median)")"
	done
fi
[ "${BENCH_OPEN_LOOP:-1}" = 0 ] && exit 0
echo
for call in connect-h1 rest; do
	[ -n "${p99[zero/$call/edge]:-}" ] || continue
	printf "p99 under wrk's full load (HTTP/1.1, zero upstream), %-10s direct %s| edge %s| nginx %s\n" "$call:" "${p99[zero/$call/direct]}" "${p99[zero/$call/edge]}" "${p99[zero/$call/nginx]}"
done

# cputicks NAME prints the CPU time (user + system, in clock ticks) the
# process serving target NAME (zero upstream) has used so far: the
# upstream itself for direct, nginx's worker, the edge or a reference
# proxy.
cputicks() {
	local pid="${proc[zero/$1]:-}"
	[ "$1" = nginx ] && pid="$(pgrep -P "$(cat "$tmp/nginx.pid")" | head -1)"
	awk '{print $14 + $15}' "/proc/$pid/stat"
}
hz="$(getconf CLK_TCK)"

# Latency the edge adds at half its maximum rate, open loop, and what one
# call costs each process in CPU at that rate (a measure that holds still
# on a shared machine, where throughput swings): for direct, the zero
# upstream's own cost; for the others, the proxy's alone.
for call in "${calls[@]}"; do
	max="$(echo "${rps[zero/$call/edge]}" | median)"
	half="$(awk -v m="$max" 'BEGIN {printf "%d", m / 2}')"
	loadgen_flags "$call"
	echo
	echo "open loop at half the edge's maximum ($half req/s), $call, zero upstream, ${seconds}s; CPU per call of the process answering:"
	names=(direct "${targets[@]}" nginx)
	[ "$call" = connect-h1 ] && [ "${BENCH_REFERENCE:-1}" = 1 ] && names+=(go-bytes go-nethttp)
	for name in "${names[@]}"; do
		printf '  %-10s ' "$name"
		before="$(cputicks "$name")"
		out="$("$tmp/loadgen" -url "$(url zero "$name" "$call")" -rate "$half" -duration "${seconds}s" "${flags[@]}")"
		after="$(cputicks "$name")"
		sent="$(printf '%s' "$out" | sed -n 's/.* sent=\([0-9]*\) .*/\1/p')"
		printf '%s cpu/call=%sµs\n' "$out" "$(awk -v t="$((after - before))" -v hz="$hz" -v n="$sent" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')"
	done
done
