#!/usr/bin/env bash
# Runs every test of the project, installing what the tests need first.
#   scripts/test-all.sh
# Needs: cargo (stable and nightly), node + npm, python3, root for apt-get. Installs npm and
# PyPI packages locally (tests/, demo/), cargo-fuzz when missing, and Debian's chromium and
# redis-server when missing. FUZZ_SECONDS (default 30) bounds each fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# System packages the tests need: Chromium for the browser test, redis-server for the cluster
# tests (each test starts its own on a free port; nothing is left running).
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
if [ "${#missing[@]}" -gt 0 ]; then
  step "installing ${missing[*]} (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
  # The package starts a server on the default port; the tests start their own.
  (service redis-server stop || pkill -x redis-server) >/dev/null 2>&1 || true
fi

step "format and lint"
cargo fmt --all --check
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "build gateway and conformance example"
cargo build --bins --examples

step "Rust unit and integration tests"
cargo test --quiet
cargo test --quiet -p loadtest

export GATEWAY_BIN="$PWD/target/debug/maven-gateway"
export CONFORMANCE_BIN="$PWD/target/debug/examples/conformance"

status=0
passed=0
failed=0
suite() { if "$@"; then passed=$((passed + 1)); else failed=$((failed + 1)); status=1; fi; }

step "Node socket.io-client interop and protocol conformance tests"
suite tests/interop/node/run.sh

step "python-socketio interop, robustness, market data, auth, operations and cluster tests"
suite tests/interop/python/run.sh

step "demo page in headless Chromium"
suite env ARTIFACTS_DIR="$PWD/target/test-artifacts" tests/browser/run.sh

step "fuzzing every codec target for ${FUZZ_SECONDS:-30} s each"
suite scripts/fuzz.sh

# The Rust suites ran above under `set -e`; these count the suites run after them.
echo "suites: $passed passed, $failed failed"
exit "$status"
