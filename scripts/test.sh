#!/usr/bin/env bash
# Keel's whole gate, the command behind `make test` and .ci/run: tools,
# lint, generated-code drift, the breaking-change check, then every Go test
# against real servers on loopback. It installs what the tests need on a
# fresh machine (the tests start the servers themselves).
#
# `scripts/test.sh go` runs only the Go tests (`make gotest`), on a machine
# the whole gate has prepared.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
start=$SECONDS
step() { printf '\n== %s (%ss)\n' "$*" "$((SECONDS - start))"; }

# The packages whose tests run under the race detector: every one that
# starts goroutines or shares memory between them, which is all of the
# runtime, the Consul adapter, the edge, the CLI (it runs the whole
# platform in process) and the services. Any other package (the
# repository-wide checks at the root, generated code) runs without it;
# a new top-level directory lands there until it is added here.
race_packages=(./internal/... ./consul/... ./edge/... ./cmd/... ./services/...)

# gotest runs every Go test once, the race-enabled packages first, and
# fails if any failed. Output also goes to $TMPDIR/keel-gotest.log.
gotest() {
	local log="${TMPDIR:-/tmp}/keel-gotest.log" status=0 began=$SECONDS race plain
	race="$(go list "${race_packages[@]}")"
	plain="$(go list ./... | grep -vxF -e "$race" || true)"
	: >"$log"
	# shellcheck disable=SC2086 # package lists: one word each
	go test -race -count=1 -timeout 25m $race 2>&1 | tee -a "$log" || status=1
	printf 'go test -race: %ss\n' "$((SECONDS - began))" | tee -a "$log"
	if [ -n "$plain" ]; then
		began=$SECONDS
		# shellcheck disable=SC2086
		go test -count=1 -timeout 25m $plain 2>&1 | tee -a "$log" || status=1
		printf 'go test: %ss\n' "$((SECONDS - began))" | tee -a "$log"
	fi
	return "$status"
}

if [ "${1:-}" = go ]; then
	gotest
	exit
elif [ $# -gt 0 ]; then
	echo "usage: $0 [go]" >&2
	exit 2
fi

step "tools"
./scripts/third-party.sh
./scripts/test-deps.sh
# grpcurl, which the README's examples and the tests run through the edge's
# reflection, pinned in its own module: built once here, cached after.
go tool -modfile=tools/grpcurl/go.mod grpcurl -version >/dev/null 2>&1
# The Consul agent and the Jaeger the tests run: each cached after its
# first build (minutes).
KEEL_CONSUL_BIN="$(./consul/get-consul.sh)"
KEEL_JAEGER_BIN="$(./scripts/get-jaeger.sh)"
export KEEL_CONSUL_BIN KEEL_JAEGER_BIN

step "lint"
make --no-print-directory lint
# The contracts' dependency graph: no cycle, and every service's code
# calls exactly the peers its contract declares.
go run ./cmd/keel graph --check

step "checkgenerate"
make --no-print-directory checkgenerate

step "breaking"
make --no-print-directory breaking

step "web"
# The browser client's bundle, which the browser end-to-end test serves.
# npm ci only when the lockfile changed since the last install.
(
	cd web
	if ! cmp -s package-lock.json node_modules/.keel-package-lock.json; then
		npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
		cp package-lock.json node_modules/.keel-package-lock.json
	fi
	npm run --silent typecheck
	npm run --silent build
)

step "go test"
gotest

printf '\nmake test: gate passed in %ss\n' "$((SECONDS - start))"
