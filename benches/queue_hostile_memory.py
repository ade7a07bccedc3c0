#!/usr/bin/env python3
"""Queue relay memory against a hostile sandbox: peak RSS (VmHWM) of `relay --transport queue
-- sh -c` while the "sandbox" (a local queue directory) plants files meant to make it hold much.

Cases (each against a fresh relay, default limits: max_body_bytes 10551296, envelope ~63.4 MB):

* envelope    one planted request file just under the envelope (a POST whose body is text
              escaped as \\u0000, the largest legitimate shape);
* backlog     30 planted 10 MiB POSTs while the upstream answers each after SLOW_SECS;
* devzero     a request file replaced by a symlink to /dev/zero as soon as it is claimed
              (repeated ROUNDS times; the relay must not read it);
* endless     a request file that keeps growing once it is claimed (a writer appends to it).

Usage: python3 benches/queue_hostile_memory.py [BINARY]   (default target/release/callback-bridge)
Loopback only; every wait is bounded. Not a test: it asserts nothing and prints a Markdown table.
"""

import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target", "release", "callback-bridge")
MAX_BODY = 10551296
ENVELOPE = MAX_BODY * 6 + 64 * 1024
SLOW_SECS = 3.0
ROUNDS = 5
CASE_TIMEOUT = 60.0


class Slow(http.server.BaseHTTPRequestHandler):
    """Reads the request, waits SLOW_SECS, answers 200 {}."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):
        n = int(self.headers.get("content-length", "0"))
        while n > 0:
            n -= len(self.rfile.read(min(n, 1 << 20)))
        time.sleep(SLOW_SECS)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    do_GET = do_POST

    def log_message(self, *args):
        pass


def upstream():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.handle_error = lambda *args: None  # a relay stopped mid-answer is expected here
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def vmhwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1


def start_relay(queue, url, log):
    env = {"PATH": os.environ["PATH"], "CALLBACK_BRIDGE_UPSTREAM_TOKEN": "bench-credential",
           "CALLBACK_BRIDGE_LOG_LEVEL": "warn"}
    p = subprocess.Popen([BIN, "relay", "--transport", "queue", "--queue-dir", queue,
                          "--upstream", url, "--", "sh", "-c"],
                         stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, text=True, env=env)
    deadline = time.time() + 30
    got = {}

    def read():
        for line in p.stdout:
            if '"event":"ready"' in line:
                got["ok"] = True
                return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(max(0.0, deadline - time.time()))
    if not got:
        p.kill()
        raise SystemExit("relay not ready")
    return p


def request(rid, body):
    return json.dumps({"id": rid, "method": "POST", "path": "/api/issues/i1/comments", "query": "",
                       "headers": {"content-type": "application/json"}, "body": body,
                       "createdAt": "2025-01-01T00:00:00.000Z"}).encode()


def plant(queue, rid, data):
    req = os.path.join(queue, "requests")
    tmp = os.path.join(req, rid + ".json.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.rename(tmp, os.path.join(req, rid + ".json"))


def wait_for(pred, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.01)
    return False


def answered(queue, ids):
    return all(os.path.exists(os.path.join(queue, "responses", i + ".json")) for i in ids)


def case_envelope(queue):
    # JSON escapes each NUL as \u0000 (6 bytes): the largest file a gateway may write.
    n = (ENVELOPE - 1024) // 6
    data = request("env-1", "\0" * n)
    assert len(data) < ENVELOPE, len(data)
    plant(queue, "env-1", data)
    return wait_for(lambda: answered(queue, ["env-1"]), CASE_TIMEOUT)


def case_backlog(queue):
    body = "a" * (10 * 1024 * 1024)
    data = request("x", body)
    ids = [f"big-{i:02}" for i in range(30)]
    for rid in ids:
        plant(queue, rid, data.replace(b'"id": "x"', f'"id": "{rid}"'.encode(), 1))
    return wait_for(lambda: answered(queue, ids), CASE_TIMEOUT * 2)


def claim_then(queue, rid, swap):
    claimed = os.path.join(queue, "requests", rid + ".json.claimed")
    plant(queue, rid, request(rid, "x"))
    if wait_for(lambda: os.path.lexists(claimed), 10):
        swap(claimed)
        return True
    return False


def case_devzero(queue):
    def swap(path):
        os.replace(path, path + ".gone")
        os.symlink("/dev/zero", path + ".new")
        os.replace(path + ".new", path)

    won = sum(claim_then(queue, f"zero-{i}", swap) for i in range(ROUNDS))
    time.sleep(2.0)  # let the relay finish (or be stopped on) the swapped files
    return won


def case_endless(queue):
    stop = threading.Event()

    def swap(path):
        def grow():
            with open(path, "ab") as f:
                chunk = b"A" * (1 << 20)
                while not stop.is_set():
                    f.write(chunk)
                    f.flush()
                    time.sleep(0.001)
        threading.Thread(target=grow, daemon=True).start()

    won = sum(claim_then(queue, f"grow-{i}", swap) for i in range(1))
    time.sleep(5.0)
    stop.set()
    return won


CASES = [("envelope", case_envelope), ("backlog", case_backlog), ("devzero", case_devzero),
         ("endless", case_endless)]


def main():
    only = os.environ.get("CASES", "").split(",") if os.environ.get("CASES") else None
    server = upstream()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    print(f"binary: {BIN}")
    print("| case | outcome | relay VmHWM (MiB) |")
    print("| --- | --- | --- |")
    for name, fn in CASES:
        if only and name not in only:
            continue
        with tempfile.TemporaryDirectory() as tmp:
            queue = os.path.join(tmp, "queue")
            with open(os.path.join(tmp, "relay.log"), "w") as log:
                relay = start_relay(queue, url, log)
                try:
                    base = vmhwm_kib(relay.pid)
                    outcome = fn(queue)
                    peak = vmhwm_kib(relay.pid)
                finally:
                    relay.kill()
                    relay.wait(10)
            print(f"| {name} | {outcome} | {peak / 1024:.1f} (at start {base / 1024:.1f}) |", flush=True)
    server.shutdown()


if __name__ == "__main__":
    main()
