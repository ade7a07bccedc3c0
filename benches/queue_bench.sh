#!/usr/bin/env bash
# Queue transport benchmark: lone-GET round-trip latency (p50/p99) through
# gateway -> queue files -> relay (`-- sh -c`) -> upstream, and exec commands per request for
# 1, 10 and 50 concurrent agents. Prints a Markdown table. Not a test.
#
#   benches/queue_bench.sh            # about a minute on 2 cores
#   benches/queue_bench.sh --quick    # fewer requests
#
# Needs only sh, python3 and the Rust toolchain; uses loopback addresses and a temp directory.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin callback-bridge --example bench_upstream
exec python3 benches/queue_bench.py "$@"
