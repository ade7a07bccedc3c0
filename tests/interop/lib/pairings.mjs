// The four pairings of our binary with Paperclip's bridge, each started fresh in its own
// temporary "sandbox" directory with its own mock upstream and runner.
//
//   "pc-queue-gateway+our-relay"     Paperclip's queue_v1 gateway, our queue relay
//   "our-queue-gateway+pc-worker"    our queue gateway, Paperclip's queue host worker
//   "pc-http2-gateway+our-relay"     Paperclip's http2_v1 gateway under our stdio relay
//   "our-stdio-gateway+pc-host"      our stdio gateway under Paperclip's http2_v1 host
//
// API
//   PAIRINGS                         the four names above
//   startPairing(name, { prefix, gatewayTimeoutMs = 20000, relayTimeoutMs = 15000 }) -> Fixture
//     (a timeout given as null is left unset: each side then uses its own default)
//   Fixture:
//     name, transport ("queue" | "stdio"), gatewaySide, hostSide ("paperclip" | "ours")
//     url, token (bridge token), credential (upstream credential), upstream (lib/upstream.mjs)
//     runner (lib/runner.mjs), dir, queueDir (queue pairings only)
//     ourOutputs()     every stdout/stderr text our binary produced in this fixture
//     killGateway()    SIGKILL the sandbox-side gateway
//     restartGateway() bring a gateway back on the same URL and token; resolves once it accepts
//                      connections (for "pc-http2-gateway+our-relay" our relay restarts it by
//                      itself, this only waits)
//     close()          stop everything, remove nothing (the caller owns `dir`)
// The gateway's response timeout is `gatewayTimeoutMs`, the host's per-request deadline (our
// `--upstream-timeout`, Paperclip's forward timeout) is `relayTimeoutMs`, which must be the
// shorter one. The defaults leave room for a loaded machine (Paperclip's worker handles one
// request file at a time, with 4 commands each); tests of hung requests pass small ones.
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync } from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { createRunner, shq } from "./runner.mjs";
import { startUpstream } from "./upstream.mjs";
import {
  newBridgeToken,
  paperclipHttp2GatewayScript,
  startPaperclipHttp2Host,
  startPaperclipQueueGateway,
  startPaperclipQueueWorker,
} from "./paperclip.mjs";
import { bridgeBin, startQueueGateway, startQueueRelay, startStdioRelay } from "./ours.mjs";

export const PAIRINGS = [
  "pc-queue-gateway+our-relay",
  "our-queue-gateway+pc-worker",
  "pc-http2-gateway+our-relay",
  "our-stdio-gateway+pc-host",
];

export async function freePort() {
  const srv = net.createServer();
  await new Promise((r) => srv.listen(0, "127.0.0.1", r));
  const { port } = srv.address();
  await new Promise((r) => srv.close(r));
  return port;
}

/** Resolve once something accepts TCP connections on 127.0.0.1:port (polled, bounded). */
export async function waitListening(port, ms = 15_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const ok = await new Promise((resolve) => {
      const s = net.connect(port, "127.0.0.1");
      s.once("connect", () => {
        s.destroy();
        resolve(true);
      });
      s.once("error", () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on ${port} after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Resolve once nothing accepts connections on the port any more. */
export async function waitClosed(port, ms = 15_000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const open = await new Promise((resolve) => {
      const s = net.connect(port, "127.0.0.1");
      s.once("connect", () => {
        s.destroy();
        resolve(true);
      });
      s.once("error", () => resolve(false));
    });
    if (!open) return;
    if (Date.now() > deadline) throw new Error(`port ${port} still open after ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export async function startPairing(name, { prefix, gatewayTimeoutMs = 20_000, relayTimeoutMs = 15_000 } = {}) {
  if (!PAIRINGS.includes(name)) throw new Error(`unknown pairing ${name}`);
  const dir = mkdtempSync(path.join(os.tmpdir(), "cb-interop-"));
  const runner = createRunner({ dir, ...(prefix ? { prefix } : {}) });
  const upstream = await startUpstream();
  const token = newBridgeToken();
  const credential = `pcp_upstream_${randomBytes(18).toString("base64url")}`;
  const ours = [];
  const extraOutputs = [];
  const cleanups = [];
  const fx = {
    name,
    dir,
    runner,
    upstream,
    token,
    credential,
    ourOutputs: () => [...ours.flatMap((p) => [p.stdout(), p.stderr()]), ...extraOutputs.map((f) => f())],
    async close() {
      for (const c of cleanups.reverse()) {
        try {
          await c();
        } catch {
          // best effort
        }
      }
      for (const p of ours) {
        p.kill("SIGKILL");
        p.child.stdout.destroy();
        p.child.stderr.destroy();
      }
      runner.killAll();
      await upstream.close();
    },
  };
  // null: leave the option unset (each side's own default).
  const gwSecs = gatewayTimeoutMs == null ? undefined : `${gatewayTimeoutMs}ms`;
  const relaySecs = relayTimeoutMs == null ? undefined : `${relayTimeoutMs}ms`;
  gatewayTimeoutMs ??= undefined;
  relayTimeoutMs ??= undefined;

  try {
    if (name === "pc-queue-gateway+our-relay") {
      const queueDir = path.join(dir, "queue");
      let gw = await startPaperclipQueueGateway({ runner, queueDir, token, responseTimeoutMs: gatewayTimeoutMs });
      const port = gw.port;
      const relay = await startQueueRelay({
        queueDir,
        upstream: upstream.url,
        credential,
        runner,
        upstreamTimeout: relaySecs,
      });
      ours.push(relay.proc);
      cleanups.push(() => relay.proc.stop(500), () => gw.kill());
      Object.assign(fx, {
        transport: "queue",
        gatewaySide: "paperclip",
        hostSide: "ours",
        queueDir,
        url: gw.url,
        relay,
        killGateway: async () => {
          gw.kill();
          await waitClosed(port);
        },
        restartGateway: async () => {
          gw = await startPaperclipQueueGateway({ runner, queueDir, token, responseTimeoutMs: gatewayTimeoutMs, port });
          cleanups.push(() => gw.kill());
        },
      });
    } else if (name === "our-queue-gateway+pc-worker") {
      const queueDir = path.join(dir, "queue");
      const first = await startQueueGateway({ queueDir, token, responseTimeout: gwSecs });
      ours.push(first.proc);
      let gwProc = first.proc;
      const port = Number(new URL(first.url).port);
      const worker = await startPaperclipQueueWorker({
        runner,
        queueDir,
        upstream: upstream.url,
        credential,
        forwardTimeoutMs: relayTimeoutMs,
      });
      cleanups.push(() => worker.stop({ drainTimeoutMs: 200 }), () => gwProc.stop(500));
      Object.assign(fx, {
        transport: "queue",
        gatewaySide: "ours",
        hostSide: "paperclip",
        queueDir,
        url: first.url,
        killGateway: async () => {
          gwProc.kill("SIGKILL");
          await gwProc.exited;
        },
        restartGateway: async () => {
          const again = await startQueueGateway({
            queueDir,
            token,
            responseTimeout: gwSecs,
            args: ["--listen", `127.0.0.1:${port}`],
          });
          ours.push(again.proc);
          gwProc = again.proc;
        },
      });
    } else if (name === "pc-http2-gateway+our-relay") {
      const port = await freePort();
      const pidFile = path.join(dir, "gateway.pid");
      const script = `echo $$ > ${shq(pidFile)}; ${await paperclipHttp2GatewayScript({ port, responseTimeoutMs: gatewayTimeoutMs })}`;
      const relay = await startStdioRelay({
        upstream: upstream.url,
        credential,
        token,
        gatewayArgv: runner.argv(script),
        upstreamTimeout: relaySecs,
      });
      ours.push(relay.proc);
      const killGatewayProcess = () => {
        try {
          process.kill(Number(readFileSync(pidFile, "utf8").trim()), "SIGKILL");
        } catch {
          // gone already
        }
      };
      cleanups.push(killGatewayProcess, () => relay.proc.stop(500));
      await waitListening(port);
      let killedPid = null;
      Object.assign(fx, {
        transport: "stdio",
        gatewaySide: "paperclip",
        hostSide: "ours",
        url: `http://127.0.0.1:${port}`,
        relay,
        killGateway: async () => {
          killedPid = Number(readFileSync(pidFile, "utf8").trim());
          process.kill(killedPid, "SIGKILL");
          await waitClosed(port);
        },
        restartGateway: async () => {
          // Our relay restarts the command by itself (after 250 ms): wait for the new one.
          const deadline = Date.now() + 15_000;
          while (Number(readFileSync(pidFile, "utf8").trim()) === killedPid) {
            if (Date.now() > deadline) throw new Error("our relay did not restart the gateway");
            await new Promise((r) => setTimeout(r, 20));
          }
          await waitListening(port);
        },
      });
    } else {
      const port = await freePort();
      const startHost = () =>
        startPaperclipHttp2Host({
          runner,
          token,
          port,
          upstream: upstream.url,
          credential,
          forwardTimeoutMs: relayTimeoutMs,
          gateway: { command: bridgeBin(), entrypoint: "gateway" },
          env: gatewayTimeoutMs ? { PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS: String(gatewayTimeoutMs) } : {},
        });
      let host = await startHost();
      extraOutputs.push(((h) => () => h.channel.stderr())(host));
      cleanups.push(() => host.close());
      await waitListening(port);
      Object.assign(fx, {
        transport: "stdio",
        gatewaySide: "ours",
        hostSide: "paperclip",
        url: `http://127.0.0.1:${port}`,
        host: () => host,
        killGateway: async () => {
          process.kill(host.channel.pid, "SIGKILL");
          await host.lost;
          await waitClosed(port);
        },
        restartGateway: async () => {
          // Paperclip's host does not restart a lost channel (the run fails); the adapter
          // starts a new one, as for a new run, on the same port and token.
          await host.close().catch(() => {});
          host = await startHost();
          extraOutputs.push(((h) => () => h.channel.stderr())(host));
          cleanups.push(() => host.close());
          await waitListening(port);
        },
      });
    }
  } catch (e) {
    await fx.close();
    throw e;
  }
  return fx;
}
