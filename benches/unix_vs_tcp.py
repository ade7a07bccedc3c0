#!/usr/bin/env python3
"""The bridge on a Unix socket against the bridge on loopback TCP, in the same run: added latency
and bridge CPU per small authenticated GET (`/api/agents/me`), reported as Unix/TCP ratios.

Targets, measured with one and the same client (this script's own keep-alive HTTP/1.1 client,
one connection, one request at a time; wrk cannot speak to a Unix socket):

* `upstream` — target/release/examples/bench_upstream directly over TCP: the floor;
* `tcp`      — `callback-bridge serve --listen 127.0.0.1:0` in front of it;
* `unix`     — `callback-bridge serve --listen unix:<tmp>/bridge.sock` in front of the same upstream.

Added latency = a bridge's mean latency minus the upstream's in the same round. Bridge CPU per
request = user + system time of the bridge process over the run (/proc/PID/stat) / requests.

CPU pinning (2-core machine), as benches/run.py: both bridges on CPU 0 (BENCH_PROXY_CPU); the
upstream and this client on CPU 1 (BENCH_LOAD_CPU). Each round measures the three targets for
BENCH_DURATION seconds each, in a rotating order; ratios are taken within a round and the median
over BENCH_ROUNDS rounds is reported, because the machine is shared and noisy. Loopback only;
every wait is bounded.

Usage: cargo build --release --bin callback-bridge --example bench_upstream
       python3 benches/unix_vs_tcp.py            # BENCH_DURATION=5 BENCH_ROUNDS=5 by default
"""
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The load benchmark's settings, shared rather than repeated: binaries (CARGO_TARGET_DIR-aware),
# CPUs, token, upstream credential, the GET path.
from run import (  # noqa: E402
    BIN, GET_PATH, LOAD_CPU, PROXY_CPU, TOKEN, UPSTREAM_BIN, UPSTREAM_TOKEN, read_ready,
)

DURATION = float(os.environ.get("BENCH_DURATION", "5"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
# Requests before each measured run: connections opened, caches and the allocator warm.
WARMUP_REQUESTS = 2000
# Any blocking socket call of the client gives up after this long (a wedged target fails the run).
IO_TIMEOUT = 10.0
READY_TIMEOUT = 10.0


def start(args, env=None):
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    return p, read_ready(p, READY_TIMEOUT)["url"]


def start_bridge(upstream_url, listen):
    env = dict(os.environ, CALLBACK_BRIDGE_TOKEN=TOKEN, CALLBACK_BRIDGE_UPSTREAM_TOKEN=UPSTREAM_TOKEN,
               CALLBACK_BRIDGE_LOG_FORMAT="json", CALLBACK_BRIDGE_LOG_LEVEL="warn")
    # The rate limiter is lifted: this measures the proxy path, not the limiter.
    return start(["taskset", "-c", PROXY_CPU, BIN, "serve", "--upstream", upstream_url,
                  "--listen", listen, "--rate-limit-per-second", "0"], env)


def cpu_ticks(pid):
    """(user, system) clock ticks consumed so far by process `pid`."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def connect(url):
    """A connected, blocking socket for `http://HOST:PORT` or `unix:PATH`."""
    if url.startswith("unix:"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(IO_TIMEOUT)
        s.connect(url[len("unix:"):])
    else:
        host, port = url[len("http://"):].rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=IO_TIMEOUT)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


class Client:
    """One keep-alive HTTP/1.1 connection sending the same GET again and again."""

    def __init__(self, url):
        self.sock = connect(url)
        self.buf = b""
        self.request = (f"GET {GET_PATH} HTTP/1.1\r\nhost: localhost\r\n"
                        f"authorization: Bearer {TOKEN}\r\naccept: application/json\r\n\r\n").encode()

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed mid-response")
        self.buf += chunk

    def get(self):
        """One request; returns the status. Reads exactly one response (content-length or chunked)."""
        self.sock.sendall(self.request)
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip()
        if b"content-length" in headers:
            n = int(headers[b"content-length"])
            while len(self.buf) < n:
                self._fill()
            self.buf = self.buf[n:]
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            while True:
                while b"\r\n" not in self.buf:
                    self._fill()
                size_line, self.buf = self.buf.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                while len(self.buf) < size + 2:
                    self._fill()
                self.buf = self.buf[size + 2:]
                if size == 0:
                    break
        return status

    def close(self):
        self.sock.close()


def run(url, pid):
    """DURATION seconds of sequential GETs; mean and p50/p99 latency (µs), bridge CPU µs/request."""
    client = Client(url)
    for _ in range(WARMUP_REQUESTS):
        assert client.get() == 200, f"{url}: warm-up request not 200"
    before = cpu_ticks(pid) if pid else None
    latencies = []
    errors = 0
    end = time.perf_counter() + DURATION
    while True:
        t0 = time.perf_counter_ns()
        status = client.get()
        latencies.append(time.perf_counter_ns() - t0)
        errors += status != 200
        if time.perf_counter() >= end:
            break
    client.close()
    if errors:
        raise RuntimeError(f"{url}: {errors} non-200 answers")
    latencies.sort()
    result = {
        "requests": len(latencies),
        "mean_us": statistics.fmean(latencies) / 1e3,
        "p50_us": latencies[len(latencies) // 2] / 1e3,
        "p99_us": latencies[int(len(latencies) * 0.99)] / 1e3,
    }
    if pid:
        after = cpu_ticks(pid)
        tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
        result["cpu_us"] = ((after[0] - before[0]) + (after[1] - before[1])) * tick_us / len(latencies)
    return result


def main():
    for path in (BIN, UPSTREAM_BIN):
        if not os.path.exists(path):
            sys.exit(f"missing {path}: cargo build --release --bin callback-bridge --example bench_upstream")
    # This process is the load generator: pin it next to the upstream.
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    procs = []
    with tempfile.TemporaryDirectory(prefix="cb-unix-bench-") as tmp:
        try:
            upstream, upstream_url = start(["taskset", "-c", LOAD_CPU, UPSTREAM_BIN, "127.0.0.1:0"])
            procs.append(upstream)
            tcp, tcp_url = start_bridge(upstream_url, "127.0.0.1:0")
            procs.append(tcp)
            unix, unix_url = start_bridge(upstream_url, f"unix:{tmp}/bridge.sock")
            procs.append(unix)
            targets = {"upstream": (upstream_url, None), "tcp": (tcp_url, tcp.pid),
                       "unix": (unix_url, unix.pid)}
            names = list(targets)
            rounds = []
            for r in range(ROUNDS):
                order = names[r % len(names):] + names[:r % len(names)]
                results = {name: run(*targets[name]) for name in order}
                rounds.append(results)
                added = {k: results[k]["mean_us"] - results["upstream"]["mean_us"] for k in ("tcp", "unix")}
                print(f"round {r + 1}/{ROUNDS}: " + ", ".join(
                    f"{k} mean {v['mean_us']:.1f} µs" + (f" cpu {v['cpu_us']:.1f} µs" if "cpu_us" in v else "")
                    for k, v in results.items())
                    + f"; added tcp {added['tcp']:.1f} µs unix {added['unix']:.1f} µs", file=sys.stderr)
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()

    def med(f):
        return statistics.median(f(r) for r in rounds)

    def added(r, k):
        return r[k]["mean_us"] - r["upstream"]["mean_us"]

    print(f"\nUnix socket vs loopback TCP: small GET {GET_PATH}, one keep-alive connection, "
          f"{ROUNDS} rounds x {DURATION:g} s per target, medians over rounds "
          f"(bridge on CPU {PROXY_CPU}; upstream and client on CPU {LOAD_CPU}).\n")
    print("| target | mean latency µs | p50 µs | p99 µs | added latency µs | bridge CPU µs/request |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for k in ("upstream", "tcp", "unix"):
        add = "-" if k == "upstream" else f"{med(lambda r: added(r, k)):.1f}"
        cpu = "-" if k == "upstream" else f"{med(lambda r: r[k]['cpu_us']):.1f}"
        print(f"| {k} | {med(lambda r: r[k]['mean_us']):.1f} | {med(lambda r: r[k]['p50_us']):.1f} | "
              f"{med(lambda r: r[k]['p99_us']):.1f} | {add} | {cpu} |")
    print(f"\nunix/tcp added latency ratio: {med(lambda r: added(r, 'unix') / added(r, 'tcp')):.2f}")
    print("unix/tcp added latency ratio at the median (p50 - upstream p50): "
          f"{med(lambda r: (r['unix']['p50_us'] - r['upstream']['p50_us']) / (r['tcp']['p50_us'] - r['upstream']['p50_us'])):.2f}")
    print(f"unix/tcp end-to-end latency ratio: {med(lambda r: r['unix']['mean_us'] / r['tcp']['mean_us']):.2f}")
    print(f"unix/tcp bridge CPU per request ratio: {med(lambda r: r['unix']['cpu_us'] / r['tcp']['cpu_us']):.2f}")


if __name__ == "__main__":
    main()
