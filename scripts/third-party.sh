#!/usr/bin/env bash
# Materializes the contracts Keel's protos import from outside (google/api,
# buf/validate) into third_party/ at pinned versions: google/api from the npm
# package google-proto-files (locked in tools/package-lock.json), buf/validate
# from the Go module github.com/bufbuild/protovalidate. third_party/ is not
# committed; every target that runs buf calls this first.
set -euo pipefail

PROTOVALIDATE_VERSION=v1.2.2

root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/third_party}"
tools="$root/tools"

if [ ! -x "$tools/node_modules/.bin/protoc-gen-es" ] || [ ! -d "$tools/node_modules/google-proto-files" ]; then
	(cd "$tools" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
fi

pv_dir="$(cd "$tools" && go mod download -json "github.com/bufbuild/protovalidate@$PROTOVALIDATE_VERSION" |
	sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
if [ -z "$pv_dir" ]; then
	echo "third-party: cannot locate github.com/bufbuild/protovalidate@$PROTOVALIDATE_VERSION" >&2
	exit 1
fi

mkdir -p "$out/google/api" "$out/buf/validate"
install -m 0644 "$tools/node_modules/google-proto-files/google/api/annotations.proto" "$out/google/api/"
install -m 0644 "$tools/node_modules/google-proto-files/google/api/http.proto" "$out/google/api/"
install -m 0644 "$pv_dir/proto/protovalidate/buf/validate/validate.proto" "$out/buf/validate/"
