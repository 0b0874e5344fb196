#!/usr/bin/env bash
# Starts and stops a throwaway Consul dev agent for local runs.
#
#   agent.sh start DIR [--acl]   start an agent whose files live in DIR
#   agent.sh stop DIR            stop it (SIGTERM, then SIGKILL after 10s)
#
# The agent runs `consul agent -dev` bound to 127.0.0.1 only. Its HTTP port
# is KEEL_CONSUL_HTTP_PORT or a free one; the serf LAN and server RPC ports
# are free ones; DNS, gRPC, gRPC-TLS and serf WAN are disabled, so several
# agents can run side by side. DIR holds agent.hcl (ports and, with --acl,
# the management token; mode 0600), data/, consul.log, consul.pid and env.
#
# `start` waits until the agent has a raft leader (and, with --acl, accepts
# its token), then prints to stdout, and writes to DIR/env:
#
#   CONSUL_HTTP_ADDR=127.0.0.1:PORT
#   CONSUL_HTTP_TOKEN=...            (only with --acl)
#
# so `eval "$(consul/agent.sh start /tmp/keel-consul)"` or
# `set -a; . /tmp/keel-consul/env; set +a` configures a shell.
#
# With --acl, ACLs are enabled with default policy "deny" and a generated
# initial management token, which is also the agent's own token.
#
# Starting again on a DIR that holds an agent.hcl reuses its ports and
# token: services registered with the agent are restored from data/, but a
# dev agent keeps its raft state in memory, so the catalog and KV start
# empty. Progress goes to stderr. The binary comes from get-consul.sh
# (KEEL_CONSUL_BIN overrides it).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
	echo "usage: $0 start DIR [--acl] | stop DIR" >&2
	exit 2
}

log() { echo "consul-agent: $*" >&2; }

# port_in_use PORT succeeds when a socket uses 127.0.0.1:PORT (TCP or
# UDP, listening or connected).
port_in_use() {
	if command -v ss >/dev/null 2>&1; then
		[ -n "$(ss -Htuan "sport = :$1" 2>/dev/null)" ]
	else
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
	fi
}

# free_port prints a random unused port not in "$@", below the kernel's
# ephemeral range (where outgoing connections take their ports, so that
# one checked free now may be taken by a connection a moment later):
# 10000 up to the range's start, 20000-59999 if that leaves too few.
free_port() {
	local p taken low=32768 span
	if [ -r /proc/sys/net/ipv4/ip_local_port_range ]; then
		read -r low _ </proc/sys/net/ipv4/ip_local_port_range
	fi
	span=$((low - 10000))
	while :; do
		if [ "$span" -ge 5000 ]; then
			p=$((10000 + (RANDOM * 32768 + RANDOM) % span))
		else
			p=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
		fi
		taken=0
		for q in "$@"; do [ "$p" = "$q" ] && taken=1; done
		[ "$taken" = 0 ] && ! port_in_use "$p" && { echo "$p"; return; }
	done
}

new_token() {
	if [ -r /proc/sys/kernel/random/uuid ]; then
		cat /proc/sys/kernel/random/uuid
	else
		od -An -N16 -tx1 /dev/urandom | tr -d ' \n' |
			sed -E 's/^(.{8})(.{4})(.{4})(.{4})(.{12})$/\1-\2-\3-\4-\5/'
	fi
}

# alive reports whether pid runs and is not a zombie: where the agent was
# reparented to an init that does not reap, an exited agent stays a zombie.
alive() {
	local state
	kill -0 "$1" 2>/dev/null || return 1
	state="$(ps -o stat= -p "$1" 2>/dev/null || true)"
	[ -n "$state" ] && [ "${state#Z}" = "$state" ]
}

running_pid() {
	local pid
	[ -f "$1/consul.pid" ] || return 1
	pid="$(cat "$1/consul.pid")"
	[ -n "$pid" ] && alive "$pid" && echo "$pid"
}

write_config() {
	local dir=$1 acl=$2 http serf server token
	http="${KEEL_CONSUL_HTTP_PORT:-$(free_port)}"
	serf="$(free_port "$http")"
	server="$(free_port "$http" "$serf")"
	umask 077
	{
		echo "ports {"
		echo "  http = $http"
		echo "  serf_lan = $serf"
		echo "  server = $server"
		echo "  dns = -1"
		echo "  grpc = -1"
		echo "  grpc_tls = -1"
		echo "  serf_wan = -1"
		echo "}"
		if [ "$acl" = 1 ]; then
			token="$(new_token)"
			echo "acl {"
			echo "  enabled = true"
			echo "  default_policy = \"deny\""
			echo "  down_policy = \"extend-cache\""
			echo "  tokens {"
			echo "    initial_management = \"$token\""
			echo "    agent = \"$token\""
			echo "  }"
			echo "}"
		fi
	} >"$dir/agent.hcl"
}

# config_value KEY prints the first value of KEY in DIR/agent.hcl.
config_value() {
	sed -nE "s/^ *$2 = \"?([^\"]*)\"?$/\1/p" "$1/agent.hcl" | head -n1
}

start() {
	local dir=$1 acl=$2 bin pid port token leader i
	mkdir -p "$dir/data"
	dir="$(cd "$dir" && pwd)"
	if pid="$(running_pid "$dir")"; then
		log "already running (pid $pid) in $dir"
		cat "$dir/env"
		return
	fi
	if [ ! -f "$dir/agent.hcl" ] || { [ "$acl" = 1 ] && ! grep -q initial_management "$dir/agent.hcl"; }; then
		write_config "$dir" "$acl"
	fi
	port="$(config_value "$dir" http)"
	token="$(config_value "$dir" initial_management)"
	if [ -n "${KEEL_CONSUL_HTTP_PORT:-}" ] && [ "$KEEL_CONSUL_HTTP_PORT" != "$port" ]; then
		write_config "$dir" "$([ -n "$token" ] && echo 1 || echo 0)"
		port="$(config_value "$dir" http)"
		token="$(config_value "$dir" initial_management)"
	fi
	bin="${KEEL_CONSUL_BIN:-$("$here/get-consul.sh")}"
	local attempt
	for attempt in 1 2 3; do
		log "starting $bin on 127.0.0.1:$port (files in $dir)"
		# setsid: the agent outlives this script and ignores the shell's Ctrl-C.
		setsid "$bin" agent -dev \
			-bind 127.0.0.1 -client 127.0.0.1 -advertise 127.0.0.1 \
			-data-dir "$dir/data" -pid-file "$dir/consul.pid" \
			-config-file "$dir/agent.hcl" \
			</dev/null >"$dir/consul.log" 2>&1 &
		pid=$!
		for i in $(seq 1 300); do
			if ! kill -0 "$pid" 2>/dev/null; then
				break
			fi
			leader="$(curl -sf "http://127.0.0.1:$port/v1/status/leader" 2>/dev/null || true)"
			if [ -n "$leader" ] && [ "$leader" != '""' ]; then
				if [ -z "$token" ] || curl -sf -H "X-Consul-Token: $token" \
					"http://127.0.0.1:$port/v1/acl/token/self" >/dev/null 2>&1; then
					break
				fi
			fi
			sleep 0.1
		done
		kill -0 "$pid" 2>/dev/null && break
		# A free port chosen a moment ago can be taken by another process
		# before the agent binds it: choose others and try again, unless the
		# HTTP port was asked for.
		if [ "$attempt" -lt 3 ] && [ -z "${KEEL_CONSUL_HTTP_PORT:-}" ] && grep -q 'address already in use' "$dir/consul.log"; then
			log "a port was taken before the agent bound it; choosing others"
			write_config "$dir" "$([ -n "$token" ] && echo 1 || echo 0)"
			port="$(config_value "$dir" http)"
			token="$(config_value "$dir" initial_management)"
			continue
		fi
		log "agent exited during start; last log lines:"
		tail -n 20 "$dir/consul.log" >&2
		exit 1
	done
	if [ "$i" = 300 ]; then
		log "no leader after 30s; last log lines:"
		tail -n 20 "$dir/consul.log" >&2
		kill "$pid" 2>/dev/null || true
		exit 1
	fi
	umask 077
	{
		echo "CONSUL_HTTP_ADDR=127.0.0.1:$port"
		[ -z "$token" ] || echo "CONSUL_HTTP_TOKEN=$token"
	} >"$dir/env"
	log "ready (pid $pid, leader $leader${token:+, ACLs on, default deny})"
	cat "$dir/env"
}

stop() {
	local dir=$1 pid i
	if ! pid="$(running_pid "$dir")"; then
		log "not running in $dir"
		return
	fi
	log "stopping pid $pid"
	# SIGTERM shuts a server agent down cleanly without a cluster leave
	# (leave_on_terminate is off for servers); "consul leave" would spend
	# about 8s leaving a cluster of one.
	kill -TERM "$pid" 2>/dev/null || true
	for i in $(seq 1 100); do
		alive "$pid" || break
		sleep 0.1
	done
	if alive "$pid"; then
		log "still running after 10s; killing"
		kill -KILL "$pid" 2>/dev/null || true
	fi
	rm -f "$dir/consul.pid"
	log "stopped"
}

[ $# -ge 2 ] || usage
cmd=$1 dir=$2
shift 2
acl=0
for arg in "$@"; do
	case "$arg" in
	--acl) acl=1 ;;
	*) usage ;;
	esac
done
case "$cmd" in
start) start "$dir" "$acl" ;;
stop) stop "$dir" ;;
*) usage ;;
esac
