#!/usr/bin/env bash
# Node.js interop tests for maven-gateway.
# Needs the binaries built beforehand (this script never builds):
#   target/debug/maven-gateway and target/debug/examples/conformance
#   (override with GATEWAY_BIN / CONFORMANCE_BIN).
# Usage: tests/interop/node/run.sh [test files...]   (default: *.test.mjs)
set -euo pipefail
cd "$(dirname "$0")"

# npm ci only when node_modules is missing or older than the lockfile.
stamp=node_modules/.package-lock.json
if [ ! -d node_modules ] || [ ! -f "$stamp" ] || [ package-lock.json -nt "$stamp" ] || [ package.json -nt "$stamp" ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi

if [ "$#" -eq 0 ]; then
  set -- *.test.mjs
fi
exec node --test --test-concurrency=1 --test-timeout=120000 "$@"
