// Paperclip's side, run from the published package `@paperclipai/adapter-utils` (installed by
// `npm ci` in tests/interop; nothing of it is copied here). Needs Node >= 24.11, i.e. the Node in
// tests/interop/node_modules/.bin/node.
//
// API
//   paperclipAsset()  -> { localDir, entrypoint }  Paperclip's generated gateway script
//                        (paperclip-bridge-server.mjs), created once per process.
//   newBridgeToken()  -> a token as Paperclip makes them (24 random bytes, base64url).
//   startPaperclipQueueGateway({ runner, queueDir, token, responseTimeoutMs = 3000,
//                                pollIntervalMs, maxBodyBytes, port })
//        Paperclip's own launcher (startSandboxCallbackBridgeServer) through `runner`: it copies
//        the script into <runner.dir>/pc-asset, starts it with `nohup node …` and the
//        PAPERCLIP_* environment (PAPERCLIP_API_BRIDGE_MODE=queue_v1, _QUEUE_DIR, _TOKEN, _HOST,
//        _PORT, _POLL_INTERVAL_MS, _RESPONSE_TIMEOUT_MS, _MAX_QUEUE_DEPTH, _MAX_BODY_BYTES) and
//        waits for ready.json. -> { url, pid, stop(), kill() }   (kill: SIGKILL, no clean-up)
//   paperclipForwarder({ upstream, credential, runId = "interop-run", forwardTimeoutMs = 2000,
//                        maxBodyBytes })
//        -> handler(request, signal)  forwards one bridge request to `upstream` the way
//        Paperclip's host does (fetch, `authorization: Bearer <credential>`,
//        `x-paperclip-run-id`, a forward deadline, response headers content-type, etag,
//        last-modified, x-paperclip-bridge-outcome; an unreadable or oversized response body
//        is 502 for safe methods and 504 + x-paperclip-bridge-outcome: indeterminate otherwise).
//   startPaperclipQueueWorker({ runner, queueDir, upstream, credential, forwardTimeoutMs = 2000,
//                               pollIntervalMs = 25, iterationTimeoutMs, maxBodyBytes })
//        Paperclip's host worker (startSandboxCallbackBridgeWorker) with its command-managed
//        queue client: every queue operation is one command through `runner`. -> { stop() }
//   paperclipHttp2GatewayScript({ port, responseTimeoutMs = 3000, maxBodyBytes })
//        -> a shell script that starts Paperclip's http2_v1 gateway with Node 24, taking the
//        token and nonce from CALLBACK_BRIDGE_TOKEN / CALLBACK_BRIDGE_NONCE (our relay's
//        handshake variables).
//   startPaperclipHttp2Host({ runner, token, port, upstream, credential, forwardTimeoutMs = 2000,
//                             maxBodyBytes, gateway: { command, entrypoint }, env = {} })
//        Paperclip's http2_v1 host: builds the launch argv with Paperclip's
//        buildDuplexGatewayLaunchArgv (`exec env PAPERCLIP_…=… <command> <entrypoint>`), opens
//        the command through runner.openDuplexChannel, runs Paperclip's READY gate and
//        preface scan, then createHttp2BridgeServer + bindChannel. For our gateway pass
//        gateway: { command: bridgeBin(), entrypoint: "gateway" }.
//        -> { channel, close(), lost }   (lost: a promise settled when the channel exits)
import { randomBytes } from "node:crypto";
import { mkdirSync } from "node:fs";
import path from "node:path";
import {
  buildSandboxCallbackBridgeEnv,
  createCommandManagedSandboxCallbackBridgeQueueClient,
  createSandboxCallbackBridgeAsset,
  createSandboxCallbackBridgeToken,
  HTTP2_SANDBOX_CALLBACK_BRIDGE_ROUTE_ALLOWLIST,
  startSandboxCallbackBridgeServer,
  startSandboxCallbackBridgeWorker,
} from "@paperclipai/adapter-utils/sandbox-callback-bridge";
import { createHttp2BridgeServer } from "@paperclipai/adapter-utils/http2-bridge-server";
import {
  __duplexReadinessTesting,
  __http2PrefaceScanTesting,
  buildDuplexGatewayLaunchArgv,
} from "@paperclipai/adapter-utils/execution-target";
import { DEFAULT_MAX_DUPLEX_FRAME_BYTES } from "@paperclipai/adapter-utils/duplex-frame-codec";
import { shq } from "./runner.mjs";

const NODE = process.execPath;
const SAFE = new Set(["GET", "HEAD", "OPTIONS", "TRACE"]);

let assetPromise = null;
export function paperclipAsset() {
  assetPromise ??= createSandboxCallbackBridgeAsset();
  return assetPromise;
}

export function newBridgeToken() {
  return createSandboxCallbackBridgeToken();
}

export async function startPaperclipQueueGateway({
  runner,
  queueDir,
  token,
  responseTimeoutMs = 3000,
  pollIntervalMs,
  maxBodyBytes,
  port,
}) {
  const assetRemoteDir = path.join(runner.dir, "pc-asset");
  mkdirSync(assetRemoteDir, { recursive: true });
  const server = await startSandboxCallbackBridgeServer({
    runner,
    remoteCwd: runner.dir,
    assetRemoteDir,
    queueDir,
    bridgeToken: token,
    bridgeAsset: await paperclipAsset(),
    responseTimeoutMs,
    pollIntervalMs,
    maxBodyBytes,
    port,
    nodeCommand: NODE,
    timeoutMs: 20_000,
  });
  return {
    url: server.baseUrl,
    pid: server.pid,
    port: server.port,
    stop: () => server.stop(),
    kill() {
      try {
        process.kill(server.pid, "SIGKILL");
      } catch {
        // already gone
      }
    },
  };
}

export function paperclipForwarder({
  upstream,
  credential,
  runId = "interop-run",
  forwardTimeoutMs = 2000,
  maxBodyBytes = 10 * 1024 * 1024 + 64 * 1024,
}) {
  return async (request, signal) => {
    const method = (request.method || "GET").trim().toUpperCase();
    const headers = new Headers();
    for (const [k, v] of Object.entries(request.headers || {})) {
      if (String(v).trim().length > 0) headers.set(k, v);
    }
    headers.set("authorization", `Bearer ${credential}`);
    headers.set("x-paperclip-run-id", runId);
    const timeout = AbortSignal.timeout(forwardTimeoutMs);
    const init = { method, headers, signal: signal ? AbortSignal.any([signal, timeout]) : timeout };
    if (method !== "GET" && method !== "HEAD" && request.body !== undefined) init.body = request.body;
    const url = new URL(request.path, upstream);
    const q = (request.query || "").trim();
    url.search = q.startsWith("?") ? q.slice(1) : q;
    const response = await fetch(url, init);
    let body;
    try {
      const declared = Number.parseInt(response.headers.get("content-length") || "", 10);
      if (Number.isFinite(declared) && declared > maxBodyBytes) throw new Error("response body too large");
      body = Buffer.from(await response.arrayBuffer());
      if (body.length > maxBodyBytes) throw new Error("response body too large");
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      if (SAFE.has(method)) {
        return { status: 502, headers: { "content-type": "application/json" }, body: JSON.stringify({ error: message }) };
      }
      return {
        status: 504,
        headers: { "content-type": "application/json", "x-paperclip-bridge-outcome": "indeterminate" },
        body: JSON.stringify({ error: message, outcome: "indeterminate", retryable: false }),
      };
    }
    const out = {};
    for (const k of ["content-type", "etag", "last-modified", "x-paperclip-bridge-outcome"]) {
      const v = response.headers.get(k);
      if (v && v.trim()) out[k] = v.trim();
    }
    return { status: response.status, headers: out, body };
  };
}

export async function startPaperclipQueueWorker({
  runner,
  queueDir,
  upstream,
  credential,
  forwardTimeoutMs = 2000,
  pollIntervalMs = 25,
  iterationTimeoutMs,
  maxBodyBytes,
}) {
  const forward = paperclipForwarder({ upstream, credential, forwardTimeoutMs, maxBodyBytes });
  const client = createCommandManagedSandboxCallbackBridgeQueueClient({
    runner,
    remoteCwd: runner.dir,
    timeoutMs: 20_000,
  });
  const worker = await startSandboxCallbackBridgeWorker({
    client,
    queueDir,
    pollIntervalMs,
    iterationTimeoutMs,
    maxBodyBytes,
    handleRequest: (request, options) => forward(request, options?.signal),
  });
  return { stop: (opts) => worker.stop(opts) };
}

export async function paperclipHttp2GatewayScript({ port, responseTimeoutMs = 3000, maxBodyBytes }) {
  const { entrypoint } = await paperclipAsset();
  const env = [
    "PAPERCLIP_API_BRIDGE_MODE=http2_v1",
    'PAPERCLIP_BRIDGE_TOKEN="$CALLBACK_BRIDGE_TOKEN"',
    'PAPERCLIP_BRIDGE_NONCE="$CALLBACK_BRIDGE_NONCE"',
    "PAPERCLIP_BRIDGE_HOST=127.0.0.1",
    `PAPERCLIP_BRIDGE_PORT=${port}`,
    `PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS=${responseTimeoutMs}`,
    ...(maxBodyBytes ? [`PAPERCLIP_BRIDGE_MAX_BODY_BYTES=${maxBodyBytes}`] : []),
  ];
  return `${env.join(" ")} exec ${shq(NODE)} ${shq(entrypoint)}`;
}

export async function startPaperclipHttp2Host({
  runner,
  token,
  port,
  upstream,
  credential,
  forwardTimeoutMs = 2000,
  maxBodyBytes = 10 * 1024 * 1024 + 64 * 1024,
  gateway,
  env = {},
}) {
  const nonce = randomBytes(16).toString("hex");
  const command = buildDuplexGatewayLaunchArgv({
    shellCommand: "sh",
    env: {
      PAPERCLIP_API_BRIDGE_MODE: "http2_v1",
      PAPERCLIP_BRIDGE_TOKEN: token,
      PAPERCLIP_BRIDGE_HOST: "127.0.0.1",
      PAPERCLIP_BRIDGE_PORT: String(port),
      PAPERCLIP_BRIDGE_NONCE: nonce,
      PAPERCLIP_BRIDGE_MAX_BODY_BYTES: String(maxBodyBytes),
      ...env,
    },
    nodeCommand: gateway.command,
    remoteEntrypoint: gateway.entrypoint,
  });
  const channel = await runner.openDuplexChannel({ command });
  const gate = __duplexReadinessTesting.createReadinessGate(channel, { nonce, timeoutMs: 10_000 });
  const readiness = await gate.ready;
  if (!readiness.ok) {
    channel.stop();
    throw new Error(`Paperclip http2 host: READY failed (${readiness.reason}):\n${channel.stderr()}`);
  }
  const scan = __http2PrefaceScanTesting.scanForHttp2ClientPreface(gate.brokerChannel, {
    capBytes: DEFAULT_MAX_DUPLEX_FRAME_BYTES + 4096,
    timeoutMs: 10_000,
  });
  if ((await scan.settled) === "missing") {
    channel.stop();
    throw new Error("Paperclip http2 host: no HTTP/2 preface after READY");
  }
  const forward = paperclipForwarder({ upstream, credential, forwardTimeoutMs, maxBodyBytes });
  const server = createHttp2BridgeServer({
    bridgeToken: token,
    routes: HTTP2_SANDBOX_CALLBACK_BRIDGE_ROUTE_ALLOWLIST,
    maxBodyBytes,
    forwardRequest: (r) =>
      forward({ method: r.method, path: r.pathname, query: r.query, headers: r.headers, body: r.body }, r.signal),
  });
  let lostResolve;
  const lost = new Promise((resolve) => (lostResolve = resolve));
  const scanned = scan.scanned;
  server.bindChannel({
    write: (d) => scanned.write(d),
    onData: (l) => scanned.onData(l),
    onExit: (l) =>
      scanned.onExit((exit) => {
        lostResolve(exit);
        l(exit);
      }),
    stop: () => scanned.stop(),
    close: () => scanned.close(),
  });
  return {
    channel,
    lost,
    nonce,
    async close() {
      await server.close();
      await channel.close();
    },
  };
}

export { buildSandboxCallbackBridgeEnv };
