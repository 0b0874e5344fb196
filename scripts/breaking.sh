#!/usr/bin/env bash
# Fails when the contracts under proto/ break the last accepted contracts.
#
# The accepted contracts are the commit named in proto/ACCEPTED. Only a
# deliberate step moves it (`make accept-contracts`, reviewed like any
# change), so a break cannot slip through because a later commit of the
# same push compared only with its predecessor. BASE_REF=<ref> compares
# with another commit instead. The baseline is checked out into a
# temporary worktree, its third-party imports are materialized by
# scripts/third-party.sh, and buf compares the workspace with that
# checkout, so no schema registry is needed. The checkout must hold the
# accepted commit (a clone with its history, not a shallow one).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
buf=(go tool -modfile="$root/tools/go.mod" buf)

base="${BASE_REF:-}"
origin="BASE_REF"
if [ -z "$base" ]; then
	if [ ! -s proto/ACCEPTED ]; then
		echo "breaking: proto/ACCEPTED names no accepted contracts; run 'make accept-contracts' once" >&2
		exit 1
	fi
	base="$(tr -d '[:space:]' <proto/ACCEPTED)"
	origin="proto/ACCEPTED"
fi
if ! base_sha="$(git rev-parse --verify -q "$base^{commit}")"; then
	echo "breaking: $origin names $base, which this clone does not have (fetch the full history)" >&2
	exit 1
fi

tmp="$(mktemp -d)"
cleanup() {
	git worktree remove --force "$tmp/base" >/dev/null 2>&1 || true
	rm -rf "$tmp"
}
trap cleanup EXIT

git worktree add --detach "$tmp/base" "$base_sha" >/dev/null 2>&1
if [ ! -f "$tmp/base/buf.yaml" ] || [ ! -d "$tmp/base/proto" ]; then
	echo "breaking: $base (${base_sha:0:12}) has no contracts yet; nothing to check"
	exit 0
fi
"$root/scripts/third-party.sh" "$tmp/base/third_party"

./scripts/third-party.sh
if "${buf[@]}" breaking --against "$tmp/base"; then
	echo "breaking: no breaking changes against the accepted contracts ($origin: ${base_sha:0:12})"
else
	echo "breaking: contracts break the accepted contracts ($origin: ${base_sha:0:12}); add a new version (v2) instead" >&2
	exit 1
fi
