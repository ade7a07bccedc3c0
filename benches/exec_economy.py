#!/usr/bin/env python3
"""Exec economy of the queue transport: what each sandbox command costs when the exec channel
has a round trip, for our pair and Paperclip's.

Every command any side runs in the "sandbox" goes through one exec prefix: a counting shim that
appends one byte to a file, then (for N > 0) `sh -c 'sleep N/1000; exec "$@"'` (the round trip
of `docker exec`, `kubectl exec`, `ssh`, a provider's exec API), then `sh -c SCRIPT`. It is the
prefix of the interop suite's runner (tests/interop/lib/runner.mjs), so both sides pay the same.

Pairings (gateway + host side):
  ours          our gateway + our relay (sh scripts)
  ours-helper   our gateway + our relay --sandbox-helper
  paperclip     Paperclip's gateway + Paperclip's host worker (from the npm package, through
                tests/interop/lib; Paperclip's defaults: 100 ms polls, 30 s response timeout)
  ours+pc       our gateway + Paperclip's host worker
  pc+ours       Paperclip's gateway + our relay (sh scripts)
  before        our pair (sh) from another build, e.g. the one before put-take, given as
                BENCH_BIN_BEFORE (only when set)

For N = 0 and N = 80 ms: the lone-request latency (one agent, GET /api/agents/me back to back on
a keep-alive connection: p50, p90), the throughput with 10 concurrent agents (req/s), and
commands per request in both phases. Pairings run interleaved (rotating order) in ROUNDS rounds;
the table shows the median over rounds and [min–max], and the 1-minute load average seen at the
start of each measurement (median [min–max]).

--transport stdio measures the stdio transport the same way (N = 0: the exec round trip is paid
once, when the session starts; 50 warm-up requests, 300 lone requests, 10 agents × 100), for
  ours          our stdio gateway under our stdio relay
  paperclip     Paperclip's http2_v1 gateway under Paperclip's http2_v1 host (benches/
                paperclip_stdio.mjs, through tests/interop/lib)
  ours+pc       our stdio gateway under Paperclip's http2_v1 host
  pc+ours       Paperclip's http2_v1 gateway under our stdio relay
with rate limiting off on our side, and adds a table of each pairing's ratio to Paperclip's pair
round by round (lone p50: Paperclip's / its own, above 1 is faster; throughput: its own /
Paperclip's).

  cargo build --release --bin callback-bridge --example bench_upstream
  (cd tests/interop && npm ci)
  python3 benches/exec_economy.py [--rounds R] [--delays 0,80] [--pairings ours,paperclip,…]
  python3 benches/exec_economy.py --transport stdio [--rounds R] [--pairings …]

Not a test: it asserts nothing and prints Markdown tables (and the raw rows as JSON on stderr).
"""

import argparse
import http.client
import json
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR", "target"))
BIN = os.environ.get("BENCH_BIN", os.path.join(TARGET, "release", "callback-bridge"))
BIN_BEFORE = os.environ.get("BENCH_BIN_BEFORE")
UPSTREAM = os.path.join(TARGET, "release", "examples", "bench_upstream")
NODE = os.path.join(ROOT, "tests", "interop", "node_modules", ".bin", "node")
SIDECAR = os.path.join(ROOT, "benches", "paperclip_queue.mjs")
STDIO_SIDECAR = os.path.join(ROOT, "benches", "paperclip_stdio.mjs")
TOKEN = "bench-bridge-token-0123456789abcdefgh"
CREDENTIAL = "bench-upstream-secret"
READY_TIMEOUT = 60.0
# Requests per phase: (lone requests, requests per agent with 10 agents), by delay.
SIZES = {0: (60, 20), 80: (30, 10)}
AGENTS = 10
ALL_PAIRINGS = ["ours", "ours-helper", "paperclip", "ours+pc", "pc+ours"]
# --transport stdio: (lone requests, requests per agent with 10 agents) and the pairings.
STDIO_SIZES = (300, 100)
STDIO_PAIRINGS = ["ours", "paperclip", "ours+pc", "pc+ours"]


def ready_line(proc, what):
    """The first stdout line that is a JSON readiness event (bounded by READY_TIMEOUT)."""
    result = {}

    def read():
        for line in proc.stdout:
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if doc.get("event") == "ready":
                result["doc"] = doc
                return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(READY_TIMEOUT)
    if "doc" not in result:
        raise SystemExit(f"no ready line from {what}")
    return result["doc"]


def prefix(count_file, delay_ms):
    """The runner's exec prefix: count, (sleep), then `sh -c SCRIPT`."""
    p = ["sh", "-c", f"printf . >> '{count_file}'; exec \"$@\"", "runner"]
    if delay_ms > 0:
        p += ["sh", "-c", f"sleep {delay_ms / 1000:.3f}; exec \"$@\"", "delay"]
    return p + ["sh", "-c"]


class Pairing:
    """One gateway + host-side pair on a fresh queue directory."""

    def __init__(self, name, delay_ms, upstream_url, workdir):
        self.name = name
        self.procs = []
        self.count_files = []
        self.dir = tempfile.mkdtemp(prefix=f"{name.replace('+', '_')}-", dir=workdir)
        queue = os.path.join(self.dir, "queue")
        log = open(os.path.join(self.dir, "log"), "w")
        self.log = log
        our_gateway = name in ("ours", "ours-helper", "ours+pc", "before")
        our_relay = name in ("ours", "ours-helper", "pc+ours", "before")
        binary = BIN_BEFORE if name == "before" else BIN
        if our_gateway:
            gw = self.spawn(
                [binary, "gateway", "--transport", "queue", "--queue-dir", queue,
                 "--rate-limit-per-second", "0", "--log-level", "warn"],
                {"CALLBACK_BRIDGE_TOKEN": TOKEN},
            )
            self.url = ready_line(gw, "our gateway")["url"]
        pc_mode = {"paperclip": "pair", "ours+pc": "worker", "pc+ours": "gateway"}.get(name)
        if pc_mode:
            os.makedirs(os.path.join(self.dir, "pc"), exist_ok=True)
            opts = {
                "mode": pc_mode, "dir": os.path.join(self.dir, "pc"), "queueDir": queue,
                "token": TOKEN, "upstream": upstream_url, "credential": CREDENTIAL,
                "delayMs": delay_ms,
            }
            side = self.spawn([NODE, SIDECAR, json.dumps(opts)], {}, stdin=subprocess.PIPE)
            doc = ready_line(side, "Paperclip's side")
            self.count_files.append(doc["countFile"])
            if doc.get("url"):
                self.url = doc["url"]
        if our_relay:
            count = os.path.join(self.dir, "relay.count")
            open(count, "w").close()
            self.count_files.append(count)
            helper = ["--sandbox-helper", BIN] if name == "ours-helper" else []
            relay = self.spawn(
                [binary, "relay", "--transport", "queue", "--queue-dir", queue,
                 "--upstream", upstream_url, "--rate-limit-per-second", "0",
                 "--log-level", "warn"] + helper + ["--"] + prefix(count, delay_ms),
                {"CALLBACK_BRIDGE_UPSTREAM_TOKEN": CREDENTIAL},
            )
            ready_line(relay, "our relay")

    def spawn(self, args, env, stdin=subprocess.DEVNULL):
        full_env = {"PATH": os.environ["PATH"], "CALLBACK_BRIDGE_LOG_LEVEL": "warn"}
        full_env.update(env)
        p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, stdin=stdin,
                             text=True, env=full_env)
        self.procs.append(p)
        return p

    def commands(self):
        return sum(os.path.getsize(f) for f in self.count_files if os.path.exists(f))

    def close(self):
        for p in reversed(self.procs):
            if p.stdin:
                p.stdin.close()
            else:
                p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_listening(port, what):
    """Poll until something accepts connections on the port (bounded by READY_TIMEOUT)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{what} does not listen on {port}")
            time.sleep(0.02)


class StdioPairing(Pairing):
    """One gateway + host-side pair over a long-running command's stdio (HTTP/2)."""

    def __init__(self, name, upstream_url, workdir):
        self.name = name
        self.procs = []
        self.count_files = []
        self.dir = tempfile.mkdtemp(prefix=f"stdio-{name.replace('+', '_')}-", dir=workdir)
        self.log = open(os.path.join(self.dir, "log"), "w")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        quiet = {"CALLBACK_BRIDGE_RATE_LIMIT_PER_SECOND": "0", "CALLBACK_BRIDGE_LOG_LEVEL": "warn"}
        pc_mode = {"paperclip": "pair", "ours+pc": "host", "pc+ours": "gateway-script"}.get(name)
        script = None
        if pc_mode:
            opts = {"mode": pc_mode, "dir": self.dir, "port": port, "token": TOKEN,
                    "upstream": upstream_url, "credential": CREDENTIAL}
            side = self.spawn([NODE, STDIO_SIDECAR, json.dumps(opts)],
                              {"CALLBACK_BRIDGE_BIN": BIN, **quiet}, stdin=subprocess.PIPE)
            script = ready_line(side, "Paperclip's side").get("script")
        if name in ("ours", "pc+ours"):
            if name == "ours":
                script = " ".join([
                    "exec", shlex.quote(BIN), "gateway", "--transport", "stdio", "--listen",
                    f"127.0.0.1:{port}", "--rate-limit-per-second", "0", "--log-level", "warn"])
            relay = self.spawn(
                [BIN, "relay", "--transport", "stdio", "--upstream", upstream_url,
                 "--rate-limit-per-second", "0", "--log-level", "warn", "--", "sh", "-c", script],
                {"CALLBACK_BRIDGE_UPSTREAM_TOKEN": CREDENTIAL, "CALLBACK_BRIDGE_TOKEN": TOKEN},
            )
            ready_line(relay, "our relay")
        wait_listening(port, f"the {name} gateway")


def agent(url, n, latencies, errors):
    host = url.replace("http://", "").rstrip("/")
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
        (latencies if ok else errors).append(time.perf_counter() - t0)
    conn.close()


def pct(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, int(round(p / 100.0 * (len(values) - 1)))))
    return values[k]


def phase(pairing, agents, per_agent):
    load = os.getloadavg()[0]
    before = pairing.commands()
    latencies, errors = [], []
    threads = [threading.Thread(target=agent, args=(pairing.url, per_agent, latencies, errors))
               for _ in range(agents)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    commands = pairing.commands() - before
    done = len(latencies)
    return {
        "load": load, "requests": done, "errors": len(errors),
        "p50_ms": pct(latencies, 50) * 1e3, "p90_ms": pct(latencies, 90) * 1e3,
        "rps": done / wall if wall > 0 else 0.0,
        "cpr": commands / done if done else float("nan"),
    }


def measure(name, delay_ms, upstream_url, workdir, transport="queue"):
    if transport == "stdio":
        lone_n, per_agent = STDIO_SIZES
        pairing = StdioPairing(name, upstream_url, workdir)
    else:
        lone_n, per_agent = SIZES.get(delay_ms, (30, 10))
        pairing = Pairing(name, delay_ms, upstream_url, workdir)
    try:
        # Warm-up: connections, caches, the first put-take (stdio: also Node's JIT, 50 requests).
        agent(pairing.url, 50 if transport == "stdio" else 3, [], [])
        lone = phase(pairing, 1, lone_n)
        many = phase(pairing, AGENTS, per_agent)
    finally:
        pairing.close()
    return {"pairing": name, "transport": transport, "delay_ms": delay_ms, "lone": lone,
            "many": many}


def summary(values, fmt):
    values = [v for v in values if v == v]
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt.format(med)
    return f"{fmt.format(med)} [{fmt.format(min(values))}–{fmt.format(max(values))}]"


def stdio_tables(rows, pairings):
    """The stdio table (no exec delay, no command counts: one command per session) and the ratio
    of each pairing to Paperclip's pair, round by round (same machine state within a round)."""
    print("| pairing | lone p50 ms | lone p90 ms | 10 agents req/s | load avg |")
    print("| --- | --- | --- | --- | --- |")
    for name in pairings:
        mine = [r for r in rows if r["pairing"] == name]
        if not mine:
            continue
        lone = [r["lone"] for r in mine]
        many = [r["many"] for r in mine]
        errors = sum(x["errors"] for x in lone + many)
        print(
            f"| {name} | {summary([x['p50_ms'] for x in lone], '{:.2f}')} "
            f"| {summary([x['p90_ms'] for x in lone], '{:.2f}')} "
            f"| {summary([x['rps'] for x in many], '{:.0f}')} "
            f"| {summary([x['load'] for x in lone + many], '{:.1f}')}"
            + (f" ({errors} errors)" if errors else "") + " |"
        )
    rounds = sorted({r["round"] for r in rows})
    base = {r["round"]: r for r in rows if r["pairing"] == "paperclip"}
    others = [p for p in pairings if p != "paperclip"]
    if not base or not others:
        return
    print()
    print("| round | " + " | ".join(f"{p}: Paperclip p50 / its p50" for p in others)
          + " | " + " | ".join(f"{p}: its req/s / Paperclip's" for p in others) + " |")
    print("| --- " * (1 + 2 * len(others)) + "|")
    for rnd in rounds:
        pc = base.get(rnd)
        mine = {r["pairing"]: r for r in rows if r["round"] == rnd}
        if pc is None:
            continue
        lat = [f"{pc['lone']['p50_ms'] / mine[p]['lone']['p50_ms']:.2f}" if p in mine else "-"
               for p in others]
        thr = [f"{mine[p]['many']['rps'] / pc['many']['rps']:.2f}" if p in mine else "-"
               for p in others]
        print(f"| {rnd + 1} | " + " | ".join(lat + thr) + " |")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--transport", choices=["queue", "stdio"], default="queue")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--delays", default="0,80")
    ap.add_argument("--pairings")
    args = ap.parse_args()
    stdio = args.transport == "stdio"
    # The exec delay only touches a stdio session's start, not its requests: stdio runs N = 0.
    delays = [0] if stdio else [int(d) for d in args.delays.split(",")]
    pairings = (args.pairings or ",".join(STDIO_PAIRINGS if stdio else ALL_PAIRINGS)).split(",")
    if BIN_BEFORE and "before" not in pairings and not stdio:
        pairings.append("before")
    if any(p not in ("ours", "ours-helper", "before") for p in pairings) and not os.path.exists(NODE):
        raise SystemExit("Paperclip's side needs `npm ci` in tests/interop (Node 24 there)")
    rows = []
    with tempfile.TemporaryDirectory(prefix="exec-economy-") as workdir:
        up = subprocess.Popen([UPSTREAM, "127.0.0.1:0"], stdout=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, text=True)
        try:
            upstream_url = ready_line(up, "the upstream")["url"]
            for delay in delays:
                for r in range(args.rounds):
                    # Rotate the order so that no pairing always runs first or last.
                    order = pairings[r % len(pairings):] + pairings[:r % len(pairings)]
                    for name in order:
                        row = measure(name, delay, upstream_url, workdir, args.transport)
                        row["round"] = r
                        print(json.dumps(row), file=sys.stderr, flush=True)
                        rows.append(row)
        finally:
            up.terminate()
            up.wait(10)
    if stdio:
        stdio_tables(rows, pairings)
        return
    print("| N ms | pairing | lone p50 ms | lone p90 ms | lone cmd/req | 10 agents req/s "
          "| 10 agents cmd/req | load avg |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for delay in delays:
        for name in pairings:
            mine = [r for r in rows if r["pairing"] == name and r["delay_ms"] == delay]
            if not mine:
                continue
            lone = [r["lone"] for r in mine]
            many = [r["many"] for r in mine]
            errors = sum(x["errors"] for x in lone + many)
            loads = [x["load"] for x in lone + many]
            print(
                f"| {delay} | {name} | {summary([x['p50_ms'] for x in lone], '{:.1f}')} "
                f"| {summary([x['p90_ms'] for x in lone], '{:.1f}')} "
                f"| {summary([x['cpr'] for x in lone], '{:.2f}')} "
                f"| {summary([x['rps'] for x in many], '{:.0f}')} "
                f"| {summary([x['cpr'] for x in many], '{:.2f}')} "
                f"| {summary(loads, '{:.1f}')}" + (f" ({errors} errors)" if errors else "") + " |"
            )


if __name__ == "__main__":
    main()
