#!/usr/bin/env bash
# Fuzzes the codecs and the Socket.IO layer with cargo-fuzz (libFuzzer + AddressSanitizer).
#   scripts/fuzz.sh                              # every target, FUZZ_SECONDS (30) each
#   FUZZ_SECONDS=300 scripts/fuzz.sh socket_layer ws_frame
# Needs nightly Rust (`cargo +nightly`); installs cargo-fuzz if it is missing. Builds every
# target once, then runs each for FUZZ_SECONDS from a fresh corpus seeded from the committed
# fuzz/seeds/<target> (fuzz/corpus/<run>/<target>, removed afterwards unless
# FUZZ_KEEP_CORPUS=1; one directory per run, so runs in parallel do not disturb each other).
# Total time: targets x FUZZ_SECONDS + build.
# Exits non-zero if any target crashed, leaked, timed out or ran out of memory, after printing
# each failing input's artifact path and bytes (hex); the failing target's full log is kept in
# fuzz/artifacts/logs/<run>/. Reproduce a failure with
#   cargo +nightly fuzz run <target> <artifact path>
set -uo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-30}
rss_mb=${FUZZ_RSS_MB:-2048}
toolchain=${FUZZ_TOOLCHAIN:-nightly}
cargo_fuzz=(cargo "+$toolchain" fuzz)
run_id=$(date +%Y%m%d-%H%M%S)-$$

step() { printf '\n==> %s\n' "$*"; }

if ! cargo "+$toolchain" --version >/dev/null 2>&1; then
  echo "fuzz.sh: the $toolchain Rust toolchain is not installed (rustup toolchain install $toolchain)" >&2
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  step "installing cargo-fuzz"
  cargo install cargo-fuzz --locked || exit 2
fi

step "building fuzz targets"
"${cargo_fuzz[@]}" build || exit 2

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <("${cargo_fuzz[@]}" list)
fi

dict_for() {
  case "$1" in
    socket_layer | socketio_packet | engineio_packet | polling_payload) echo fuzz/dicts/socketio.dict ;;
    http_head) echo fuzz/dicts/http.dict ;;
    ingest_body) echo fuzz/dicts/ingest.dict ;;
  esac
}

corpora=fuzz/corpus/$run_id
logs=fuzz/artifacts/logs/$run_id
cleanup() {
  if [ "${FUZZ_KEEP_CORPUS:-0}" != 1 ]; then
    rm -rf "$corpora"
  fi
  rmdir "$logs" 2>/dev/null
}
trap cleanup EXIT
mkdir -p "$corpora" "$logs"

failed=()
for t in "${targets[@]}"; do
  step "fuzzing $t for ${seconds}s"
  corpus=$corpora/$t
  mkdir -p "$corpus" "fuzz/artifacts/$t"
  if [ -d "fuzz/seeds/$t" ]; then
    cp fuzz/seeds/"$t"/* "$corpus"/
  fi
  args=(-max_total_time="$seconds" -rss_limit_mb="$rss_mb" -timeout=30 -print_final_stats=1)
  dict=$(dict_for "$t")
  if [ -n "$dict" ]; then
    args+=(-dict="$dict")
  fi
  log=$logs/$t.log
  "${cargo_fuzz[@]}" run "$t" "$corpus" -- "${args[@]}" >"$log" 2>&1
  rc=$?
  # The closing statistics: executions, coverage, corpus.
  grep -E '^(#[0-9]+[[:space:]]+DONE|Done [0-9]+ runs|stat::number_of_executed_units|stat::average_exec_per_sec|stat::peak_rss_mb)' "$log"
  if [ "$rc" -eq 0 ]; then
    rm -f "$log"
    continue
  fi
  failed+=("$t")
  echo "FAILED: $t (exit $rc); full log: $log"
  tail -n 60 "$log"
  mapfile -t found < <(grep -oE 'Test unit written to [^ ]+' "$log" | awk '{print $5}' | grep -E '/(crash|leak|timeout|oom)-' | sort -u)
  for f in "${found[@]}"; do
    echo "artifact: $f ($(wc -c <"$f") bytes)"
    echo "input (hex, first 4 KiB): $(head -c 4096 "$f" | od -An -v -tx1 | tr -d ' \n')"
  done
done

step "fuzz summary"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "${#failed[@]} of ${#targets[@]} fuzz targets failed: ${failed[*]}"
  exit 1
fi
echo "all ${#targets[@]} fuzz targets ran ${seconds}s each without a failure"
