#!/usr/bin/env bash
# Fails when the contracts under proto/ break the last accepted contracts.
# The baseline is BASE_REF when set; otherwise, on main, the previous commit
# of main, and on any other branch, its merge-base with main. The baseline is
# checked out into a temporary worktree, its third-party imports are
# materialized by scripts/third-party.sh, and buf compares the workspace with
# that checkout, so no schema registry is needed.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
buf=(go tool -modfile="$root/tools/go.mod" buf)

base="${BASE_REF:-}"
if [ -z "$base" ]; then
	branch="$(git rev-parse --abbrev-ref HEAD)"
	if [ "$branch" != "main" ] && git rev-parse --verify -q main >/dev/null; then
		base="$(git merge-base HEAD main)"
	elif git rev-parse --verify -q HEAD~1 >/dev/null; then
		base="HEAD~1"
	else
		echo "breaking: no earlier commit to compare against; nothing to check"
		exit 0
	fi
fi
base_sha="$(git rev-parse --verify "$base^{commit}")"

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
	echo "breaking: no breaking changes against $base (${base_sha:0:12})"
else
	echo "breaking: contracts break $base (${base_sha:0:12}); add a new version (v2) instead" >&2
	exit 1
fi
