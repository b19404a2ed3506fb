#!/usr/bin/env bash
# Fuzzes everything that parses outside input (see src/fuzzing.rs) with
# libFuzzer through cargo-fuzz, then minimises each corpus back into
# fuzz/corpus/<target>/, the seeds that tests/fuzz_seeds.rs replays.
#
#   hack/fuzz.sh                 every target, 10 million executions each
#   hack/fuzz.sh jwt 1000000     one target, that many executions
#
# The code is safe Rust (`unsafe_code = "forbid"`), so no sanitizer is
# compiled in (`-s none`): panics, hangs (-timeout) and runaway allocations
# (-rss_limit_mb, -malloc_limit_mb) are what is looked for, at full speed.
# cargo-fuzz needs nightly flags; RUSTC_BOOTSTRAP lets the stable toolchain
# take them.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=(token_answer jwt retry_after refresh_interval ca_bundle record)
if [ $# -ge 1 ]; then targets=("$1"); fi
runs="${2:-10000000}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "[fuzz] installing cargo-fuzz" >&2
  cargo install --locked cargo-fuzz
fi
export RUSTC_BOOTSTRAP=1
work="${RUNAI_TOKEN_SYNC_CACHE:-$HOME/.cache/runai-token-sync}/fuzz-corpus"

for target in "${targets[@]}"; do
  mkdir -p "$work/$target"
  cp -n fuzz/corpus/"$target"/* "$work/$target/" 2>/dev/null || true
  echo "[fuzz] $target: $runs executions" >&2
  start=$(date +%s)
  log="$work/$target.log"
  if ! cargo fuzz run -s none --release "$target" "$work/$target" -- \
    -runs="$runs" -timeout=5 -rss_limit_mb=1024 -malloc_limit_mb=256 \
    -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
    grep -E "ERROR|panicked|Test unit written" "$log" >&2 || tail -n 20 "$log" >&2
    # Keep what failed as a seed, so that the test suite fails on it too.
    cp fuzz/artifacts/"$target"/* "fuzz/corpus/$target/" 2>/dev/null || true
    echo "[fuzz] $target: FAILED; the failing input is now a seed in fuzz/corpus/$target" >&2
    exit 1
  fi
  grep -E "stat::|^Done" "$log" >&2
  echo "[fuzz] $target: $(( $(date +%s) - start )) s, working corpus $(ls "$work/$target" | wc -l) inputs" >&2
  # Keep only what adds coverage, as the committed seeds.
  rm -rf "fuzz/corpus/$target.min" && mkdir -p "fuzz/corpus/$target.min"
  cargo fuzz run -s none --release "$target" "fuzz/corpus/$target.min" "$work/$target" -- -merge=1 >/dev/null 2>&1
  rm -rf "fuzz/corpus/$target" && mv "fuzz/corpus/$target.min" "fuzz/corpus/$target"
  echo "[fuzz] $target: $(ls "fuzz/corpus/$target" | wc -l) seeds kept in fuzz/corpus/$target" >&2
done
