#!/usr/bin/env bash
# Makes sure what Keel's tests start is installed: PostgreSQL 15 server
# binaries (the tests start a throwaway cluster), redis-server (the cache
# tests start throwaway servers: Redis 7, for RESP3 client-side caching),
# ps (the Consul agent
# script checks its process with it), Chromium (the browser end-to-end
# test drives it headless), and curl and jq (the test of the README's shop
# walkthrough runs its commands). Installs missing Debian packages;
# never starts anything itself. The Consul agent is built by
# consul/get-consul.sh, not installed.
set -euo pipefail

need=()
pg_bindir="$( (pg_config --bindir 2>/dev/null) || true)"
if ! { [ -x /usr/lib/postgresql/15/bin/initdb ] || [ -x "$pg_bindir/initdb" ]; }; then
	need+=(postgresql)
fi
[ -x /usr/bin/redis-server ] || command -v redis-server >/dev/null || need+=(redis-server)
command -v ps >/dev/null || need+=(procps)
[ -x /usr/bin/chromium ] || need+=(chromium)
command -v curl >/dev/null || need+=(curl)
command -v jq >/dev/null || need+=(jq)
if [ ${#need[@]} -gt 0 ]; then
	echo "test-deps: installing ${need[*]}"
	if [ "$(id -u)" -ne 0 ]; then
		echo "test-deps: need root (or sudo) to apt-get install ${need[*]}" >&2
		exit 1
	fi
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
