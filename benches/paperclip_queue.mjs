// Paperclip's side of the queue for benches/exec_economy.py: Paperclip's queue gateway, its host
// worker, or both, started through the interop suite's library (tests/interop/lib, which runs
// them from the published npm package; run `npm ci` in tests/interop first) with a counted,
// optionally delayed exec prefix. Run with the Node of tests/interop/node_modules/.bin/node.
//
//   node benches/paperclip_queue.mjs '{"mode":"pair|gateway|worker","dir":D,"queueDir":Q,
//        "token":T,"upstream":URL,"credential":C,"delayMs":N}'
//
// Prints one line {"event":"ready","url":…,"countFile":…} (url: the gateway's, when started),
// then runs until its stdin closes, stops what it started and exits. Every command Paperclip's
// side runs adds one byte to countFile.
import { createRunner, delayPrefix } from "../tests/interop/lib/runner.mjs";
import {
  startPaperclipQueueGateway,
  startPaperclipQueueWorker,
} from "../tests/interop/lib/paperclip.mjs";
import path from "node:path";

const opts = JSON.parse(process.argv[2]);
// Paperclip's defaults (its gateway and worker poll every 100 ms, answers wait 30 s).
const POLL_MS = 100;
const RESPONSE_TIMEOUT_MS = 30_000;

const runner = createRunner({
  prefix: opts.delayMs > 0 ? delayPrefix(opts.delayMs) : ["sh", "-c"],
  dir: opts.dir,
});
let gateway = null;
let worker = null;
if (opts.mode === "pair" || opts.mode === "gateway") {
  gateway = await startPaperclipQueueGateway({
    runner,
    queueDir: opts.queueDir,
    token: opts.token,
    responseTimeoutMs: RESPONSE_TIMEOUT_MS,
    pollIntervalMs: POLL_MS,
  });
}
if (opts.mode === "pair" || opts.mode === "worker") {
  worker = await startPaperclipQueueWorker({
    runner,
    queueDir: opts.queueDir,
    upstream: opts.upstream,
    credential: opts.credential,
    forwardTimeoutMs: 20_000,
    pollIntervalMs: POLL_MS,
  });
}
process.stdout.write(
  JSON.stringify({
    event: "ready",
    url: gateway ? gateway.url : null,
    countFile: path.join(opts.dir, "commands.count"),
  }) + "\n",
);
process.stdin.resume();
process.stdin.on("end", async () => {
  try {
    if (worker) await worker.stop();
    if (gateway) await gateway.stop();
  } finally {
    runner.killAll();
    process.exit(0);
  }
});
