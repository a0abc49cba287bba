#!/usr/bin/env bash
# Python interop suite for maven-gateway. Needs a built gateway binary
# ($GATEWAY_BIN, default <repo>/target/debug/maven-gateway); this script never builds it.
# Usage: tests/interop/python/run.sh [extra pytest args]
set -uo pipefail
cd "$(dirname "$0")"

PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  for c in python3.11 python3; do
    if command -v "$c" >/dev/null 2>&1; then PY="$c"; break; fi
  done
fi
[[ -n "$PY" ]] || { echo "run.sh: no python3 found" >&2; exit 2; }

VENV=.venv
STAMP="$VENV/.requirements.sha256"
want="$(sha256sum requirements.txt | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" ]] || [[ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]]; then
  echo "run.sh: setting up $VENV" >&2
  rm -rf "$VENV"
  "$PY" -m venv "$VENV" || exit 2
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt || exit 2
  echo "$want" > "$STAMP"
fi

"$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
exit $?
