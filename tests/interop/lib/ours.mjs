// Our side: the callback-bridge binary as queue gateway, queue relay, stdio relay (and the script
// that starts our stdio gateway under a relay or under Paperclip's http2 host).
//
// The binary is `$CALLBACK_BRIDGE_BIN`, else target/debug/callback-bridge of this repository.
// Every process logs JSON (CALLBACK_BRIDGE_LOG_FORMAT=json); stdout and stderr are captured whole
// so a test can grep them for secrets. Readiness is the `{"event":"ready",…}` line on stdout.
//
// API
//   bridgeBin()                          absolute path of the binary
//   spawnBridge(args, { env, label })    -> Proc (environment: PATH plus `env` only)
//   Proc: { child, pid, stdout(), stderr(), events(), waitEvent(name, ms), exited, kill(sig) }
//   startQueueGateway({ queueDir, token, responseTimeout = "3s", args = [], env = {} })
//        -> { proc, url, ready }             (token through CALLBACK_BRIDGE_TOKEN)
//   startQueueRelay({ queueDir, upstream, credential, runner, upstreamTimeout = "2s",
//                     args = [], env = {} })
//        -> { proc, ready }                  (`relay --transport queue … -- <runner.relayPrefix()>`)
//   startStdioRelay({ upstream, credential, token, gatewayArgv, upstreamTimeout = "2s",
//                     args = [], env = {} })
//        -> { proc, ready, token }           (token: the given one, or the generated one printed
//                                             on the readiness line)
//   stdioGatewayScript({ port, responseTimeout = "3s", args = [] })
//        -> a shell script running our stdio gateway (token and nonce from the relay's env)
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { shq } from "./runner.mjs";

export function bridgeBin() {
  const bin = process.env.CALLBACK_BRIDGE_BIN
    ? process.env.CALLBACK_BRIDGE_BIN
    : fileURLToPath(new URL("../../../target/debug/callback-bridge", import.meta.url));
  if (!existsSync(bin)) throw new Error(`callback-bridge binary not found at ${bin}`);
  return bin;
}

export function spawnBridge(args, { env = {}, label = "callback-bridge" } = {}) {
  const child = spawn(bridgeBin(), args, {
    env: { PATH: process.env.PATH, CALLBACK_BRIDGE_LOG_FORMAT: "json", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const out = [];
  const err = [];
  const events = [];
  let pending = "";
  const waiters = new Set();
  child.stdout.on("data", (c) => {
    out.push(c);
    pending += c.toString("utf8");
    let nl;
    while ((nl = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, nl);
      pending = pending.slice(nl + 1);
      try {
        events.push(JSON.parse(line));
      } catch {
        continue;
      }
      for (const w of waiters) w();
    }
  });
  child.stderr.on("data", (c) => err.push(c));
  const exited = new Promise((resolve) =>
    child.once("exit", (code, signal) => {
      for (const w of waiters) w();
      resolve({ code, signal });
    }),
  );
  const proc = {
    child,
    label,
    pid: child.pid,
    exited,
    stdout: () => Buffer.concat(out).toString("utf8"),
    stderr: () => Buffer.concat(err).toString("utf8"),
    events: () => events,
    kill(sig = "SIGTERM") {
      if (child.exitCode === null && child.signalCode === null) child.kill(sig);
    },
    async stop(ms = 10_000) {
      proc.kill("SIGTERM");
      const t = setTimeout(() => proc.kill("SIGKILL"), ms);
      await exited;
      clearTimeout(t);
    },
    waitEvent(name, ms = 15_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const e = events.find((ev) => ev.event === name);
          if (e) {
            cleanup();
            resolve(e);
          } else if (child.exitCode !== null || child.signalCode !== null) {
            cleanup();
            reject(new Error(`${label} exited before "${name}":\n${proc.stderr()}`));
          }
        };
        const timer = setTimeout(() => {
          cleanup();
          reject(new Error(`${label}: no "${name}" event within ${ms} ms:\n${proc.stderr()}`));
        }, ms);
        const cleanup = () => {
          clearTimeout(timer);
          waiters.delete(check);
        };
        waiters.add(check);
        check();
      });
    },
  };
  return proc;
}

export async function startQueueGateway({ queueDir, token, responseTimeout = "3s", args = [], env = {} }) {
  const proc = spawnBridge(
    ["gateway", "--transport", "queue", "--queue-dir", queueDir, "--response-timeout", responseTimeout, ...args],
    { env: { CALLBACK_BRIDGE_TOKEN: token, ...env }, label: "our queue gateway" },
  );
  const ready = await proc.waitEvent("ready");
  return { proc, url: ready.url, ready };
}

export async function startQueueRelay({
  queueDir,
  upstream,
  credential,
  runner,
  upstreamTimeout = "2s",
  args = [],
  env = {},
}) {
  const proc = spawnBridge(
    [
      "relay",
      "--transport",
      "queue",
      "--queue-dir",
      queueDir,
      "--upstream",
      upstream,
      "--upstream-timeout",
      upstreamTimeout,
      ...args,
      "--",
      ...runner.relayPrefix(),
    ],
    { env: { CALLBACK_BRIDGE_UPSTREAM_TOKEN: credential, ...env }, label: "our queue relay" },
  );
  const ready = await proc.waitEvent("ready");
  return { proc, ready };
}

export async function startStdioRelay({
  upstream,
  credential,
  token,
  gatewayArgv,
  upstreamTimeout = "2s",
  args = [],
  env = {},
}) {
  const proc = spawnBridge(
    [
      "relay",
      "--transport",
      "stdio",
      "--upstream",
      upstream,
      "--upstream-timeout",
      upstreamTimeout,
      ...args,
      "--",
      ...gatewayArgv,
    ],
    {
      env: { CALLBACK_BRIDGE_UPSTREAM_TOKEN: credential, ...(token ? { CALLBACK_BRIDGE_TOKEN: token } : {}), ...env },
      label: "our stdio relay",
    },
  );
  const ready = await proc.waitEvent("ready");
  return { proc, ready, token: token || ready.token };
}

export function stdioGatewayScript({ port, responseTimeout = "3s", args = [] }) {
  return [
    "exec",
    bridgeBin(),
    "gateway",
    "--transport",
    "stdio",
    "--listen",
    `127.0.0.1:${port}`,
    "--response-timeout",
    responseTimeout,
    ...args,
  ]
    .map(shq)
    .join(" ");
}
