#!/usr/bin/env bash
# Prints the path of a Consul agent binary, building it first when it is not
# cached. Consul is not packaged for Debian; v1.14.11 (MPL-2.0) builds from
# the Go module proxy as a dependency of a scratch module. The binary is
# cached under ${KEEL_CACHE:-~/.cache/keel}, so only the first run is slow
# (about 12 minutes on 2 cores); progress goes to stderr.
set -euo pipefail

CONSUL_VERSION=1.14.11
cache="${KEEL_CACHE:-$HOME/.cache/keel}/consul/$CONSUL_VERSION"
bin="$cache/consul"

# Read the whole version output before matching: with pipefail, "grep -q"
# exiting early makes the pipe fail with SIGPIPE and forces a rebuild.
if [ -x "$bin" ] && [[ "$("$bin" version 2>/dev/null)" == *"v$CONSUL_VERSION"* ]]; then
	echo "$bin"
	exit 0
fi

mkdir -p "$cache"
# One build at a time: test packages run in parallel and may all get here.
if command -v flock >/dev/null 2>&1; then
	exec 9>"$cache/.build.lock"
	flock 9
	if [ -x "$bin" ] && [[ "$("$bin" version 2>/dev/null)" == *"v$CONSUL_VERSION"* ]]; then
		echo "$bin"
		exit 0
	fi
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
echo "consul: building v$CONSUL_VERSION from source into $cache (first run only, takes minutes)" >&2
go mod init keel.local/consulbuild >/dev/null 2>&1
# consul's own go.mod pins these through replace directives that do not
# apply to a dependent module, so name them explicitly.
go get "github.com/hashicorp/consul@v$CONSUL_VERSION" \
	github.com/hashicorp/consul/api@v1.18.1 \
	github.com/hashicorp/consul/proto-public@v0.2.1 \
	github.com/hashicorp/consul/sdk@v0.13.0 >&2
cat > tools.go <<'GO'
//go:build tools

package consulbuild

import _ "github.com/hashicorp/consul"
GO
start=$SECONDS
go build -o "$bin.tmp" github.com/hashicorp/consul >&2 &
pid=$!
while kill -0 "$pid" 2>/dev/null; do
	sleep 30
	kill -0 "$pid" 2>/dev/null && echo "consul: still building ($((SECONDS - start))s)" >&2
done
wait "$pid"
mv "$bin.tmp" "$bin"
echo "consul: built in $((SECONDS - start))s" >&2
echo "$bin"
