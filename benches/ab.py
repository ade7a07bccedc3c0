#!/usr/bin/env python3
"""A/B of two callback-bridge binaries on one wrk scenario, for tuning decisions.

    python3 benches/ab.py A_BINARY B_BINARY [GET|POST] [CONNS]

Both bridges run at once (each pinned to BENCH_PROXY_CPU, one measured at a time), against one
benchmark upstream (`cargo build --release --example bench_upstream` first). Runs alternate
A, B, B, A, ... (BENCH_ROUNDS pairs of BENCH_DURATION seconds) so drift on a shared machine hits
both alike; prints the median req/s of each, B/A, and each bridge's peak RSS (VmHWM).
Loopback only.
"""
import os
import signal
import statistics
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import run  # noqa: E402  (the load benchmark's helpers: wrk, upstream, bridge spawning)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    bins = {"A": sys.argv[1], "B": sys.argv[2]}
    method = sys.argv[3] if len(sys.argv) > 3 else "GET"
    conns = int(sys.argv[4]) if len(sys.argv) > 4 else 50
    rounds = int(os.environ.get("BENCH_ROUNDS", "6"))
    duration = int(os.environ.get("BENCH_DURATION", "3"))
    tmp = tempfile.mkdtemp(prefix="cb-ab-")
    procs, bridges, urls, rps = [], {}, {}, {"A": [], "B": []}
    try:
        up, up_url = run.start_upstream()
        procs.append(up)
        for name, path in bins.items():
            bridges[name], urls[name] = run.start_bridge(up_url, binary=path)
            procs.append(bridges[name])
            run.wrk(urls[name], conns, method, tmp, 1)  # warm-up
        for i in range(rounds):
            for name in ("A", "B") if i % 2 == 0 else ("B", "A"):
                rps[name].append(run.wrk(urls[name], conns, method, tmp, duration)["rps"])
        a, b = statistics.median(rps["A"]), statistics.median(rps["B"])
        print(f"{method} {conns} conns, {rounds} x {duration}s each")
        for name in ("A", "B"):
            runs = ", ".join(f"{x:.0f}" for x in rps[name])
            peak = run.rss_kib(bridges[name].pid, "VmHWM") / 1024
            print(f"  {name}: {bins[name]}: median {statistics.median(rps[name]):.0f} req/s "
                  f"({runs}); peak RSS {peak:.2f} MiB")
        print(f"  B/A = {b / a:.3f}")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=10)


if __name__ == "__main__":
    main()
