#!/usr/bin/env bash
# The browser test: needs Chromium (/usr/bin/chromium, Debian's `chromium` package; the
# top-level test script installs it) and a built gateway (GATEWAY_BIN).
set -euo pipefail
cd "$(dirname "$0")"
stamp=node_modules/.package-lock.json
if [ ! -d node_modules ] || [ ! -f "$stamp" ] || [ package-lock.json -nt "$stamp" ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
exec node --test --test-concurrency=1 demo-page.test.mjs
