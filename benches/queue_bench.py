#!/usr/bin/env python3
"""Queue transport benchmark: agent -> gateway -> queue files -> relay (local `sh -c`) -> upstream.

Measures the round-trip latency of GET /api/agents/me (p50/p99) and the number of exec commands
per request, for 1, 10 and 50 concurrent agents (each agent sends its requests one after the
other on a keep-alive connection). Commands are counted by an exec prefix that appends one line
to a file per command and then runs the script with `sh -c`; the lone-GET latency is also
measured with the plain `sh -c` prefix, and the last rows use `--sandbox-helper` (the binary's own
`queue take|put` instead of shell tools).

Run through benches/queue_bench.sh (builds the release binary and the benchmark upstream).
Not a test: it asserts nothing and prints a Markdown table.
"""

import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from exec_economy import pct, ready_line  # noqa: E402 - one copy of the shared helpers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.path.join(TARGET, "release", "callback-bridge")
UPSTREAM = os.path.join(TARGET, "release", "examples", "bench_upstream")
TOKEN = "bench-token-0123456789"


def start(args, env, log):
    full_env = {"PATH": os.environ["PATH"], "CALLBACK_BRIDGE_LOG_LEVEL": "warn"}
    full_env.update(env)
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True, env=full_env
    )


def agent(url, n, latencies, errors):
    host = url.replace("http://", "")
    conn = http.client.HTTPConnection(host, timeout=60)
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json"}
    for _ in range(n):
        t0 = time.perf_counter()
        try:
            conn.request("GET", "/api/agents/me", headers=headers)
            resp = conn.getresponse()
            resp.read()
            ok = resp.status == 200
        except Exception:  # noqa: BLE001 - a benchmark counts failures, it does not stop
            ok = False
            conn.close()
            conn = http.client.HTTPConnection(host, timeout=60)
        dt = time.perf_counter() - t0
        if ok:
            latencies.append(dt)
        else:
            errors.append(dt)
    conn.close()


def run(prefix_kind, agents, per_agent, workdir, upstream_url, helper=False):
    tag = f"{prefix_kind}-{agents}-{'helper' if helper else 'sh'}"
    queue = os.path.join(workdir, f"q-{tag}")
    counter = os.path.join(workdir, f"count-{tag}")
    open(counter, "w").close()
    if prefix_kind == "count":
        wrapper = os.path.join(workdir, "count.sh")
        with open(wrapper, "w") as f:
            f.write(f"#!/bin/sh\necho >> '{counter}'\nexec sh -c \"$2\"\n")
        os.chmod(wrapper, 0o755)
        prefix = [wrapper, "-c"]
    else:
        prefix = ["sh", "-c"]
    logs = open(os.path.join(workdir, f"log-{tag}"), "w")
    common = ["--rate-limit-per-second", "0", "--log-level", "warn"]
    gw = start(
        [BIN, "gateway", "--transport", "queue", "--queue-dir", queue] + common,
        {"CALLBACK_BRIDGE_TOKEN": TOKEN},
        logs,
    )
    url = ready_line(gw, "the gateway")["url"]
    relay = start(
        [BIN, "relay", "--transport", "queue", "--queue-dir", queue, "--upstream", upstream_url]
        + common
        + (["--sandbox-helper", BIN] if helper else [])
        + ["--"]
        + prefix,
        {"CALLBACK_BRIDGE_UPSTREAM_TOKEN": "bench-upstream-secret"},
        logs,
    )
    ready_line(relay, "the relay")
    try:
        # Warm-up: connections, caches.
        agent(url, 5, [], [])
        before = sum(1 for _ in open(counter))
        latencies, errors = [], []
        threads = [
            threading.Thread(target=agent, args=(url, per_agent, latencies, errors))
            for _ in range(agents)
        ]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        commands = sum(1 for _ in open(counter)) - before
    finally:
        for p in (relay, gw):
            p.terminate()
        for p in (relay, gw):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        logs.close()
    done = len(latencies)
    return {
        "prefix": ("count.sh -c" if prefix_kind == "count" else "sh -c")
        + (" --sandbox-helper" if helper else ""),
        "agents": agents,
        "requests": done,
        "errors": len(errors),
        "p50_ms": pct(latencies, 50) * 1e3,
        "p99_ms": pct(latencies, 99) * 1e3,
        "mean_ms": (statistics.mean(latencies) * 1e3) if latencies else float("nan"),
        "rps": done / wall if wall > 0 else 0.0,
        "commands_per_request": (commands / done) if (done and prefix_kind == "count") else None,
    }


def main():
    per_agent = {1: 200, 10: 60, 50: 20}
    if len(sys.argv) > 1 and sys.argv[1] == "--quick":
        per_agent = {1: 50, 10: 20, 50: 6}
    with tempfile.TemporaryDirectory(prefix="queue-bench-") as workdir:
        up = subprocess.Popen(
            [UPSTREAM, "127.0.0.1:0"], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
        )
        try:
            upstream_url = ready_line(up, "the upstream")["url"]
            rows = [run("sh", 1, per_agent[1], workdir, upstream_url)]
            for n in (1, 10, 50):
                rows.append(run("count", n, per_agent[n], workdir, upstream_url))
            for n in (1, 10):
                rows.append(run("count", n, per_agent[n], workdir, upstream_url, helper=True))
        finally:
            up.terminate()
            up.wait(10)
    print("| exec prefix | agents | requests | errors | p50 ms | p99 ms | mean ms | req/s | commands/request |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        cpr = "-" if r["commands_per_request"] is None else f"{r['commands_per_request']:.2f}"
        print(
            f"| `{r['prefix']}` | {r['agents']} | {r['requests']} | {r['errors']} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['mean_ms']:.1f} | {r['rps']:.0f} | {cpr} |"
        )


if __name__ == "__main__":
    main()
