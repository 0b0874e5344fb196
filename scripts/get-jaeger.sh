#!/usr/bin/env bash
# Prints the path of a Jaeger binary, building it first when it is not
# cached. Jaeger v1.75.0 (Apache-2.0), the approved release, builds from the
# Go module proxy as a Go tool of a scratch module
# (`go get -tool .../cmd/jaeger@v1.75.0`); v1.76.0 is served too but is not
# an approved release, so it is not used. Its
# cmd/jaeger is the OpenTelemetry-collector-based "v2" binary, configured
# with a YAML file (--config). The binary is cached under
# ${KEEL_CACHE:-~/.cache/keel}, so only the first run is slow: with an
# empty Go build cache on 2 cores it took 25 minutes (13.5 CPU-minutes, on
# a machine busy with other builds), about 45 seconds with a warm one;
# progress goes to stderr.
#
# The module zip carries no built Jaeger UI (upstream's release builds it
# from the jaeger-ui repository with npm first), so this binary serves
# Jaeger's placeholder page at / ; the query HTTP API (/api/...) is complete.
set -euo pipefail

JAEGER_VERSION=1.75.0
# The version and the module's publication time, as upstream stamps them
# into release builds; `jaeger version` prints them back, which is how the
# cache is checked. The module proxy does not give the tag's commit, so the
# build stamps the version in its place.
JAEGER_COMMIT=v$JAEGER_VERSION
JAEGER_DATE=2025-11-13T16:44:30Z
cache="${KEEL_CACHE:-$HOME/.cache/keel}/jaeger/$JAEGER_VERSION"
bin="$cache/jaeger"

# Read the whole version output before matching: with pipefail, "grep -q"
# exiting early makes the pipe fail with SIGPIPE and forces a rebuild.
cached() {
	[ -x "$bin" ] && [[ "$("$bin" version 2>/dev/null)" == *"\"gitVersion\":\"v$JAEGER_VERSION\""* ]]
}

if cached; then
	echo "$bin"
	exit 0
fi

mkdir -p "$cache"
# One build at a time: test packages run in parallel and may all get here.
if command -v flock >/dev/null 2>&1; then
	exec 9>"$cache/.build.lock"
	flock 9
	if cached; then
		echo "$bin"
		exit 0
	fi
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
echo "jaeger: building v$JAEGER_VERSION from source into $cache (first run only, takes minutes)" >&2
go mod init keel.local/jaegerbuild >/dev/null 2>&1
# jaeger's own go.mod has this replace directive, which does not apply to a
# dependent module: repeat it so the build matches upstream's.
go mod edit -replace github.com/Shopify/sarama=github.com/Shopify/sarama@v1.33.0
go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@v$JAEGER_VERSION" >&2
pkg=github.com/jaegertracing/jaeger/internal/version
start=$SECONDS
# Flags as upstream's release build (scripts/makefiles/BuildBinaries.mk).
CGO_ENABLED=0 go build -trimpath \
	-ldflags "-X $pkg.latestVersion=v$JAEGER_VERSION -X $pkg.commitSHA=$JAEGER_COMMIT -X $pkg.date=$JAEGER_DATE" \
	-o "$bin.tmp" github.com/jaegertracing/jaeger/cmd/jaeger >&2 &
pid=$!
while kill -0 "$pid" 2>/dev/null; do
	sleep 30
	kill -0 "$pid" 2>/dev/null && echo "jaeger: still building ($((SECONDS - start))s)" >&2
done
wait "$pid"
mv "$bin.tmp" "$bin"
if ! cached; then
	echo "jaeger: built $bin but \"$bin version\" does not report v$JAEGER_VERSION" >&2
	exit 1
fi
echo "jaeger: built in $((SECONDS - start))s" >&2
echo "$bin"
