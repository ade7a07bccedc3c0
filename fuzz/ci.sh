#!/usr/bin/env bash
# Short, bounded fuzzing for CI: builds every cargo-fuzz target of this crate and runs each one
# for FUZZ_SECONDS (default 30) on the nightly toolchain, starting from the committed seed corpus.
#
# Exit status: 0 when every target built and ran its time without a finding; 1 on a build
# failure or a fuzz finding (crash, invariant violation, timeout, leak, out-of-memory: the
# reproducer is copied to fuzz/artifacts/<target>/). When no nightly toolchain is installed the
# run is skipped with a warning and exit 0: that is the machine, not the code.
#
# Usage: fuzz/ci.sh [target…]   (default: every target `cargo fuzz list` reports)
# Environment: FUZZ_SECONDS (per target). Targets run one after the other, one process each.
set -uo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
seconds="${FUZZ_SECONDS:-30}"
cd "$root"
# The fuzz crate has its own target directory (fuzz/target); an inherited CARGO_TARGET_DIR would
# mix sanitizer builds into the main crate's.
unset CARGO_TARGET_DIR

say() { printf '[fuzz/ci.sh] %s\n' "$*"; }

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  say "WARNING: no nightly toolchain installed; fuzzing SKIPPED (cargo-fuzz needs nightly)"
  exit 0
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  say "installing cargo-fuzz"
  if ! cargo install cargo-fuzz --locked; then
    say "FAILED: cannot install cargo-fuzz"
    exit 1
  fi
fi

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
if [ "${#targets[@]}" -eq 0 ]; then
  say "FAILED: no fuzz targets found"
  exit 1
fi

say "building ${targets[*]}"
# Every target is built (cargo-fuzz builds one or all); the selected ones are run.
if ! cargo +nightly fuzz build; then
  say "FAILED: fuzz targets do not build"
  exit 1
fi
triple="$(rustc +nightly -vV | sed -n 's/^host: //p')"
bindir="$here/target/$triple/release"

# New corpus entries go to a scratch directory so that the committed seeds stay small.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()
summary=()
for t in "${targets[@]}"; do
  bin="$bindir/$t"
  if [ ! -x "$bin" ]; then
    say "FAILED: $bin was not built"
    failed+=("$t")
    summary+=("$t: FAILED (not built)")
    continue
  fi
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
  args=(-max_total_time="$seconds" -timeout=10 -print_final_stats=1
        -artifact_prefix="$work/artifacts/$t/")
  [ -f "$here/dict/$t.dict" ] && args+=(-dict="$here/dict/$t.dict")
  seeds=()
  [ -d "$here/corpus/$t" ] && seeds=("$here/corpus/$t")
  say "running $t for ${seconds}s"
  log="$work/$t.log"
  # The binary is run directly (no rebuild inside the time bound). libFuzzer stops itself after
  # max_total_time; the wall-clock bound only catches a fuzzer that does not stop.
  ASAN_OPTIONS="${ASAN_OPTIONS:-detect_odr_violation=0}" \
    timeout --kill-after=10 $((seconds + 60)) \
    "$bin" "${args[@]}" "$work/corpus/$t" "${seeds[@]}" >"$log" 2>&1
  status=$?
  execs="$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' | tail -n1)"
  [ -z "$execs" ] && execs="$(grep -Eo '^Done [0-9]+ runs' "$log" | grep -Eo '[0-9]+' | tail -n1)"
  if [ "$status" -eq 0 ]; then
    summary+=("$t: ok, ${execs:-?} executions in ${seconds}s")
  else
    failed+=("$t")
    summary+=("$t: FAILED (exit $status) after ${execs:-?} executions")
    tail -n 40 "$log"
    if compgen -G "$work/artifacts/$t/*" >/dev/null; then
      mkdir -p "$here/artifacts/$t"
      cp "$work/artifacts/$t/"* "$here/artifacts/$t/"
      say "reproducer(s) in fuzz/artifacts/$t/: cargo +nightly fuzz run $t fuzz/artifacts/$t/<file>"
    fi
  fi
done

say "summary:"
for line in "${summary[@]}"; do say "  $line"; done
if [ "${#failed[@]}" -gt 0 ]; then
  say "FAILED: ${failed[*]}"
  exit 1
fi
