#!/usr/bin/env bash
# Keel's whole gate, the command behind `make test` and .ci/run: tools,
# lint, generated-code drift, the breaking-change check, then every Go test
# against real servers on loopback. It installs what the tests need on a
# fresh machine (the tests start the servers themselves).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
start=$SECONDS
step() { printf '\n== %s (%ss)\n' "$*" "$((SECONDS - start))"; }

step "tools"
./scripts/third-party.sh
./scripts/test-deps.sh
# The Consul agent the tests run: cached after the first build (minutes).
KEEL_CONSUL_BIN="$(./consul/get-consul.sh)"
export KEEL_CONSUL_BIN

step "lint"
make --no-print-directory lint

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
go test -count=1 -timeout 25m ./... 2>&1 | tee "${TMPDIR:-/tmp}/keel-gotest.log"

printf '\nmake test: gate passed in %ss\n' "$((SECONDS - start))"
