#!/usr/bin/env python3
"""Benchmark driver: the same scenarios against the upstream directly, nginx, a bare hyper proxy
(the floor of the machinery the bridge is built on) and callback-bridge.

CPU pinning (2-core machine): the proxy under test (nginx with one worker, the bare proxy or the
bridge, both single-threaded runtimes) is pinned to CPU 0; the load generator (wrk, one thread)
and the upstream are pinned to CPU 1. So the proxy gets one core to itself, and every scenario
sees the same generator and upstream. Each scenario runs BENCH_ROUNDS rounds of BENCH_DURATION
seconds per target, targets interleaved in a rotating order; ratios are taken within a round and
the median over rounds is reported, because this machine is shared and noisy.
"""
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Cargo's target directory: CARGO_TARGET_DIR when set (relative to the repository root, where
# run.sh builds), else ./target.
TARGET = os.path.join(ROOT, os.environ.get("CARGO_TARGET_DIR", "target"))
BIN = os.environ.get("BENCH_BIN", os.path.join(TARGET, "release/callback-bridge"))
UPSTREAM_BIN = os.path.join(TARGET, "release/examples/bench_upstream")
FLOOR_BIN = os.path.join(TARGET, "release/examples/bare_proxy")
DURATION = int(os.environ.get("BENCH_DURATION", "5"))
# Each scenario is measured ROUNDS times, the three targets interleaved in a rotating order, and
# ratios are taken within a round (same minute, same machine state) before the median is taken.
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
WARMUP = 2
PROXY_CPU = os.environ.get("BENCH_PROXY_CPU", "0")
LOAD_CPU = os.environ.get("BENCH_LOAD_CPU", "1")
TOKEN = "bench-bridge-token-0123456789abcdefghijklmnopq"
UPSTREAM_TOKEN = "bench-upstream-secret"
GET_PATH = "/api/agents/me"
POST_PATH = "/api/issues/ISS-1/comments"
POST_BYTES = 64 * 1024
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_ready(proc, timeout=10.0):
    """First stdout line of a spawned process, parsed as JSON."""
    deadline = time.monotonic() + timeout
    line = b""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line:
            return json.loads(line)
        if proc.poll() is not None:
            break
    raise RuntimeError(f"no ready line from {proc.args}: {line!r}")


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def start_upstream():
    p = subprocess.Popen(["taskset", "-c", LOAD_CPU, UPSTREAM_BIN, "127.0.0.1:0"],
                         stdout=subprocess.PIPE)
    return p, read_ready(p)["url"]


def start_floor(upstream_url):
    """examples/bare_proxy.rs: hyper + tokio as the bridge uses them, with none of its work."""
    p = subprocess.Popen(["taskset", "-c", PROXY_CPU, FLOOR_BIN, "127.0.0.1:0", upstream_url],
                         stdout=subprocess.PIPE)
    return p, read_ready(p)["url"]


def start_bridge(upstream_url, extra=(), binary=BIN):
    env = dict(os.environ, CALLBACK_BRIDGE_TOKEN=TOKEN, CALLBACK_BRIDGE_UPSTREAM_TOKEN=UPSTREAM_TOKEN,
               CALLBACK_BRIDGE_LOG_FORMAT="json")
    args = ["taskset", "-c", PROXY_CPU, binary, "serve", "--upstream", upstream_url,
            # The benchmark measures the proxy path, not the limiter: lift the rate limit and
            # let 50 connections be in flight.
            "--rate-limit-per-second", "0", "--max-in-flight", "256", *extra]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    return p, read_ready(p)["url"]


def start_nginx(upstream_url, tmp):
    port = free_port()
    up = upstream_url.removeprefix("http://")
    conf = f"""
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log /dev/null;
  client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fcgi; uwsgi_temp_path {tmp}/uwsgi; scgi_temp_path {tmp}/scgi;
  client_max_body_size 11m;
  map_hash_bucket_size 128;
  client_body_buffer_size 128k;
  upstream paperclip {{ server {up}; keepalive 64; }}
  map $http_authorization $bridge_ok {{ default 0; "Bearer {TOKEN}" 1; }}
  server {{
    listen 127.0.0.1:{port};
    location = {GET_PATH} {{
      if ($bridge_ok = 0) {{ return 401; }}
      limit_except GET {{ deny all; }}
      proxy_pass http://paperclip;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Cookie "";
      proxy_set_header Authorization "Bearer {UPSTREAM_TOKEN}";
    }}
    location ~ ^/api/issues/[^/]+/comments$ {{
      if ($bridge_ok = 0) {{ return 401; }}
      proxy_pass http://paperclip;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Cookie "";
      proxy_set_header Authorization "Bearer {UPSTREAM_TOKEN}";
    }}
    location / {{ return 403; }}
  }}
}}
"""
    path = os.path.join(tmp, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    p = subprocess.Popen(["taskset", "-c", PROXY_CPU, NGINX, "-c", path, "-p", tmp],
                         stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return p, url
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("nginx did not start")


def cpu_ticks(pid):
    """(user, system) clock ticks consumed so far by process `pid`."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def wrk(url, conns, method, tmp, duration=None, pid=None):
    """One wrk run; with `pid`, also the CPU time that process spent per request (µs)."""
    duration = duration or DURATION
    before = cpu_ticks(pid) if pid else None
    script = os.path.join(tmp, f"{method}.lua")
    with open(script, "w") as f:
        if method == "POST":
            f.write(f'wrk.method = "POST"\nwrk.body = string.rep("x", {POST_BYTES - 10})\n'
                    f'wrk.body = \'{{"body":"\' .. wrk.body .. \'"}}\'\n'
                    'wrk.headers["Content-Type"] = "application/json"\n')
        f.write(f'wrk.headers["Authorization"] = "Bearer {TOKEN}"\n')
    path = POST_PATH if method == "POST" else GET_PATH
    out = subprocess.run(
        ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{conns}", f"-d{duration}s", "--latency",
         "-s", script, url + path],
        capture_output=True, text=True, timeout=duration + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        v, unit = float(m.group(1)), m.group(2)
        return v * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if non2xx or errors:
        print(f"  warning: {url}{path} c={conns}: non-2xx={non2xx and non2xx.group(1)} "
              f"errors={errors and errors.group(1)}", file=sys.stderr)
    result = {"rps": rps, "p50": pct(50), "p99": pct(99)}
    if pid:
        after = cpu_ticks(pid)
        requests = float(re.search(r"(\d+) requests in", out).group(1))
        tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
        result["user_us"] = (after[0] - before[0]) * tick_us / requests
        result["sys_us"] = (after[1] - before[1]) * tick_us / requests
    return result


def startup_times(upstream_url, runs=30):
    """exec -> readiness line of fresh bridges, and each one's RSS right after the line (KiB)."""
    times, rss = [], []
    env = dict(os.environ, CALLBACK_BRIDGE_UPSTREAM_TOKEN=UPSTREAM_TOKEN)
    for _ in range(runs):
        t0 = time.perf_counter()
        p = subprocess.Popen([BIN, "serve", "--upstream", upstream_url], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, env=env)
        p.stdout.readline()
        times.append((time.perf_counter() - t0) * 1e3)
        rss.append(rss_kib(p.pid))
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=10)
    return times, rss


def spawn_baseline(runs=30):
    """exec -> first line of /bin/echo: the cost of spawning any process from this driver."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        p = subprocess.Popen(["/bin/echo", "ready"], stdout=subprocess.PIPE)
        p.stdout.readline()
        times.append((time.perf_counter() - t0) * 1e3)
        p.wait()
    return times


def upload_growth(upstream_url):
    """RSS growth of a fresh bridge while one 10 MiB upload streams through it."""
    p, url = start_bridge(upstream_url)
    try:
        req = urllib.request.Request(url + GET_PATH, headers={"Authorization": f"Bearer {TOKEN}"})
        urllib.request.urlopen(req, timeout=10).read()
        before = rss_kib(p.pid, "VmHWM")
        body = b"{" + b" " * (10 * 1024 * 1024 - 2) + b"}"
        req = urllib.request.Request(
            url + "/api/companies/c1/issues/ISS-1/attachments", data=body, method="POST",
            headers={"Authorization": f"Bearer {TOKEN}",
                     "Content-Type": "multipart/form-data; boundary=x"})
        urllib.request.urlopen(req, timeout=60).read()
        after = rss_kib(p.pid, "VmHWM")
        return before, after
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=10)


TARGETS = ("direct", "nginx", "floor", "bridge")


def measure(scenarios, urls, pids, tmp):
    """Per scenario: a warm-up per target, then ROUNDS rounds over the targets in rotating order."""
    rows = []
    for name, conns, method in scenarios:
        for target in TARGETS:
            wrk(urls[target], conns, method, tmp, WARMUP)
        rounds = []
        for i in range(ROUNDS):
            k = i % len(TARGETS)
            order = TARGETS[k:] + TARGETS[:k]
            rounds.append({t: wrk(urls[t], conns, method, tmp, pid=pids.get(t)) for t in order})
        rows.append((name, conns, rounds))
    return rows


def med(values):
    return statistics.median(values)


def summarize(rounds, target):
    """Medians over the rounds; ratios and added latency are paired within each round."""
    pick = lambda key: [r[target][key] for r in rounds]  # noqa: E731
    cpu = "-"
    if "user_us" in rounds[0][target]:
        cpu = f"{med(pick('user_us')):.1f} + {med(pick('sys_us')):.1f}"
    return {
        "cpu": cpu,
        "rps": med(pick("rps")), "p50": med(pick("p50")), "p99": med(pick("p99")),
        "vs_direct": med([r[target]["rps"] / r["direct"]["rps"] for r in rounds]),
        "vs_nginx": [r[target]["rps"] / r["nginx"]["rps"] for r in rounds],
        "added": [r[target]["p50"] - r["direct"]["p50"] for r in rounds],
    }


def rss_detail(pid):
    return {k: rss_kib(pid, k) for k in ("VmRSS", "RssAnon", "RssFile")}


def main():
    for tool in ("wrk", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (benches/run.sh installs it)")
    tmp = tempfile.mkdtemp(prefix="cb-bench-")
    procs = []
    try:
        up, up_url = start_upstream()
        procs.append(up)
        ngx, ngx_url = start_nginx(up_url, tmp)
        procs.append(ngx)
        fl, fl_url = start_floor(up_url)
        procs.append(fl)
        br, br_url = start_bridge(up_url)
        procs.append(br)
        idle = rss_detail(br.pid)

        scenarios = [("small GET", 1, "GET"), ("small GET", 50, "GET"),
                     ("64 KiB POST", 1, "POST"), ("64 KiB POST", 50, "POST")]
        urls = {"direct": up_url, "nginx": ngx_url, "floor": fl_url, "bridge": br_url}
        worker = subprocess.run(["pgrep", "-P", str(ngx.pid)], capture_output=True, text=True)
        pids = {"floor": fl.pid, "bridge": br.pid}
        if worker.stdout.split():
            pids["nginx"] = int(worker.stdout.split()[0])
        rows = measure(scenarios, urls, pids, tmp)
        peak_rss = rss_kib(br.pid, "VmHWM")

        boot, boot_rss = startup_times(up_url)
        spawn = spawn_baseline()
        before, after = upload_growth(up_url)

        print(f"\n## callback-bridge benchmark ({ROUNDS} rounds of {DURATION}s per scenario and "
              f"target, interleaved; proxy on CPU {PROXY_CPU}, wrk + upstream on CPU {LOAD_CPU})\n")
        print("Medians over the rounds; ratios and added p50 are paired within a round, "
              "[min–max] over the rounds. floor = examples/bare_proxy.rs (hyper + tokio as the "
              "bridge uses them, no policy, filtering, limits, timers or log). Proxy CPU: the "
              "proxy process's user and system time over the run (/proc/PID/stat) per request.\n")
        print("| scenario | conns | target | req/s | p50 ms | p99 ms | req/s vs direct | "
              "req/s vs nginx | added p50 ms | proxy CPU µs/req (user + sys) |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        verdicts = []
        for name, conns, rounds in rows:
            for target in TARGETS:
                r = summarize(rounds, target)
                vs_n, added = r["vs_nginx"], r["added"]
                spread_n = "" if target == "nginx" else f" [{min(vs_n):.2f}–{max(vs_n):.2f}]"
                spread_a = "" if target == "direct" else f" [{min(added):.3f}–{max(added):.3f}]"
                print(f"| {name} | {conns} | {target} | {r['rps']:.0f} | {r['p50']:.3f} | "
                      f"{r['p99']:.3f} | {r['vs_direct']:.2f} | {med(vs_n):.2f}{spread_n} | "
                      f"{med(added):.3f}{spread_a} | {r['cpu']} |")
            bridge, nginx = summarize(rounds, "bridge"), summarize(rounds, "nginx")
            if conns == 50:
                v = med(bridge["vs_nginx"])
                verdicts.append((f"{name}, 50 conns: req/s >= 1.0x nginx", f"{v:.2f}x", v >= 1.0))
            if name == "small GET" and conns == 1:
                b, n = med(bridge["added"]), med(nginx["added"])
                verdicts.append(("small GET, 1 conn: added p50 <= nginx's",
                                 f"{b:.3f} ms vs {n:.3f} ms", b <= n))
        print()
        boot_med = med(boot)
        print(f"* exec -> readiness line: median {boot_med:.2f} ms over {len(boot)} "
              f"runs (min {min(boot):.2f}, max {max(boot):.2f}); spawning /bin/echo from the same "
              f"driver: median {med(spawn):.2f} ms")
        idle_rss = max(med(boot_rss), idle["VmRSS"])
        print(f"* idle RSS: median {med(boot_rss) / 1024:.2f} MiB over the {len(boot_rss)} "
              f"fresh starts (min {min(boot_rss) / 1024:.2f}, max {max(boot_rss) / 1024:.2f}); "
              f"the bridge used for the load runs, before them: {idle['VmRSS'] / 1024:.2f} MiB "
              f"(anonymous {idle['RssAnon'] / 1024:.2f}, file-backed {idle['RssFile'] / 1024:.2f}; "
              f"file-backed pages depend on what the page cache holds). Peak RSS over the load "
              f"runs: {peak_rss / 1024:.2f} MiB")
        print(f"* 10 MiB upload: peak RSS {before / 1024:.2f} -> {after / 1024:.2f} MiB "
              f"(+{(after - before) / 1024:.2f} MiB)")
        size = os.path.getsize(BIN)
        print(f"* release binary: {size} bytes ({size / 1024 / 1024:.2f} MiB)")
        verdicts += [
            ("exec -> readiness median <= 5 ms", f"{boot_med:.2f} ms", boot_med <= 5),
            ("idle RSS <= 4 MiB (the larger of the two figures)", f"{idle_rss / 1024:.2f} MiB",
             idle_rss <= 4096),
            ("peak RSS <= 16 MiB", f"{peak_rss / 1024:.2f} MiB", peak_rss <= 16384),
            ("10 MiB upload raises RSS < 2 MiB", f"+{(after - before) / 1024:.2f} MiB",
             after - before < 2048),
        ]
        print("\n| target | measured | met |\n|---|---|---|")
        for what, value, ok in verdicts:
            print(f"| {what} | {value} | {'yes' if ok else 'NO'} |")
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
