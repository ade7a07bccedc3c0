#!/usr/bin/env bash
# Load and resource benchmark for callback-bridge: direct vs nginx vs the bridge, in one run.
#
#   benches/run.sh                  # full run (about 7 minutes on 2 cores)
#   BENCH_DURATION=2 BENCH_ROUNDS=3 benches/run.sh   # shorter runs
#
# Installs wrk and nginx from Debian's packages when missing (needs root), builds the shipped
# static release binary (scripts/build-static.sh) and the benchmark upstream, then runs benches/run.py, which prints a Markdown table.
# Only loopback addresses are used.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v taskset >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The binary under test is the one we ship: the static release build.
BENCH_BIN=$(scripts/build-static.sh)   # an absolute path
export BENCH_BIN
cargo build --release --example bench_upstream --example bare_proxy
exec python3 benches/run.py "$@"
