#!/usr/bin/env python3
"""Control-frame flood against the stdio relay: how much CPU does a hostile gateway cost the host?

Runs `callback-bridge relay --transport stdio -- python3 benches/stdio_flood.py --gateway`, where
the "gateway" is this script playing a hostile sandbox: it prints a valid READY line (the nonce
comes in its environment as CALLBACK_BRIDGE_NONCE), the HTTP/2 client preface and an empty
SETTINGS frame, and then writes PRIORITY frames and frames of an unknown type (0xfa) as fast as
it can, never reading its stdin. The relay restarts the command after each lost session, so every
session floods again.

Prints the relay's own CPU seconds (utime + stime of /proc/PID/stat, sampled until it exits or
the flood time is over; children are not included), whether and when the relay closed a session
(its "channel to the gateway was lost" log lines, with the reason) and whether it exited.

    python3 benches/stdio_flood.py                 # 30 s flood against target/release
    FLOOD_SECONDS=5 python3 benches/stdio_flood.py # a quick run
    BENCH_BIN=/path/to/callback-bridge python3 benches/stdio_flood.py

Only loopback is used: the relay's upstream is a closed port on 127.0.0.1 (nothing is ever
forwarded). Not a test: it asserts nothing and prints one Markdown table.
"""

import json
import os
import signal
import struct
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.environ.get("BENCH_BIN", os.path.join(TARGET, "release", "callback-bridge"))
FLOOD_SECONDS = float(os.environ.get("FLOOD_SECONDS", "30"))
# Bounds every wait of the harness: the relay's readiness line and its exit after SIGTERM.
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
SAMPLE_EVERY = 0.05
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def frame(kind, flags, stream, payload):
    """One HTTP/2 frame: 24-bit length, type, flags, 31-bit stream id, payload."""
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def hostile_gateway():
    """The child: READY, preface, SETTINGS, then control frames until killed."""
    out = sys.stdout.buffer
    nonce = os.environ.get("CALLBACK_BRIDGE_NONCE", "")
    out.write(json.dumps({"version": 2, "type": "ready", "nonce": nonce}).encode() + b"\n")
    out.write(PREFACE + frame(0x4, 0, 0, b""))
    out.flush()
    priority = frame(0x2, 0, 1, struct.pack(">IB", 0, 16))
    unknown = frame(0xFA, 0, 1, b"\0" * 8)
    chunk = (priority * 3 + unknown) * 4096
    fd = out.fileno()
    try:
        while True:
            os.write(fd, chunk)
    except OSError:
        pass  # the relay closed the pipe


def cpu_seconds(pid):
    """utime + stime of one process (works for a zombie not yet reaped), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # Fields after "(comm)": state is index 0, utime is field 14 of the line (index 11 here).
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def exited_unreaped(pid):
    """True once the process exited; it stays a zombie (its /proc/stat readable) until waited."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def main():
    env = {
        "PATH": os.environ["PATH"],
        "CALLBACK_BRIDGE_UPSTREAM": "http://127.0.0.1:9",
        "CALLBACK_BRIDGE_UPSTREAM_TOKEN": "bench-upstream-credential",
        "CALLBACK_BRIDGE_LOG_FORMAT": "json",
    }
    args = [BIN, "relay", "--transport", "stdio", "--", sys.executable, os.path.abspath(__file__), "--gateway"]
    relay = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    closes = []
    ready = threading.Event()
    start = [None]

    def read_stdout():
        for line in relay.stdout:
            if b'"event":"ready"' in line:
                ready.set()

    def read_stderr():
        for line in relay.stderr:
            if b"channel to the gateway was lost" not in line:
                continue
            try:
                reason = json.loads(line).get("reason", "")
            except ValueError:
                reason = line.decode(errors="replace").strip()
            at = time.monotonic() - start[0] if start[0] else 0.0
            closes.append((at, reason))

    threading.Thread(target=read_stdout, daemon=True).start()
    threading.Thread(target=read_stderr, daemon=True).start()
    if not ready.wait(READY_TIMEOUT):
        relay.kill()
        raise SystemExit("the relay printed no readiness line")
    start[0] = time.monotonic()
    deadline = start[0] + FLOOD_SECONDS
    cpu = cpu_seconds(relay.pid) or 0.0
    exited_at = None
    while time.monotonic() < deadline:
        if exited_unreaped(relay.pid):
            exited_at = time.monotonic() - start[0]
            cpu = cpu_seconds(relay.pid) or cpu
            break
        cpu = cpu_seconds(relay.pid) or cpu
        time.sleep(SAMPLE_EVERY)
    if exited_at is None:
        cpu = cpu_seconds(relay.pid) or cpu
        relay.send_signal(signal.SIGTERM)
    try:
        status = relay.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        relay.kill()
        status = relay.wait()
    first = f"{closes[0][0]:.2f} s ({closes[0][1]})" if closes else "never"
    print(f"| binary | {BIN} |")
    print("| --- | --- |")
    print(f"| flood duration | {FLOOD_SECONDS:g} s |")
    print(f"| relay CPU seconds (user+system) | {cpu:.2f} |")
    print(f"| sessions closed by the relay | {len(closes)} |")
    print(f"| first close | {first} |")
    if exited_at is not None:
        print(f"| relay exited by itself | after {exited_at:.2f} s, status {status} |")
    else:
        print(f"| relay exited by itself | no (stopped with SIGTERM, status {status}) |")


if __name__ == "__main__":
    if sys.argv[1:] == ["--gateway"]:
        hostile_gateway()
    else:
        main()
