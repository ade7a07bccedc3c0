// Paperclip's side of the stdio transport for benches/exec_economy.py --transport stdio:
// Paperclip's http2_v1 host with its own http2_v1 gateway ("pair"), its host with our stdio
// gateway ("host"), or only the script that starts its gateway under our stdio relay
// ("gateway-script"), all through the interop suite's library (tests/interop/lib, which runs them
// from the published npm package; run `npm ci` in tests/interop first). Run with the Node of
// tests/interop/node_modules/.bin/node; our binary is $CALLBACK_BRIDGE_BIN.
//
//   node benches/paperclip_stdio.mjs '{"mode":"pair|host|gateway-script","dir":D,"port":P,
//        "token":T,"upstream":URL,"credential":C}'
//
// Prints one line {"event":"ready","url":…} ("gateway-script": {"event":"ready","script":…},
// a shell script taking the token and nonce from our relay's handshake variables), then runs
// until its stdin closes, stops what it started and exits.
import { createRunner } from "../tests/interop/lib/runner.mjs";
import {
  paperclipAsset,
  paperclipHttp2GatewayScript,
  startPaperclipHttp2Host,
} from "../tests/interop/lib/paperclip.mjs";
import { bridgeBin } from "../tests/interop/lib/ours.mjs";
import { waitListening } from "../tests/interop/lib/pairings.mjs";

const opts = JSON.parse(process.argv[2]);
const runner = createRunner({ dir: opts.dir });
let host = null;
let ready;
if (opts.mode === "gateway-script") {
  ready = { event: "ready", script: await paperclipHttp2GatewayScript({ port: opts.port }) };
} else {
  const gateway =
    opts.mode === "pair"
      ? { command: process.execPath, entrypoint: (await paperclipAsset()).entrypoint }
      : { command: bridgeBin(), entrypoint: "gateway" };
  host = await startPaperclipHttp2Host({
    runner,
    token: opts.token,
    port: opts.port,
    upstream: opts.upstream,
    credential: opts.credential,
    forwardTimeoutMs: 20_000,
    gateway,
  });
  await waitListening(opts.port);
  ready = { event: "ready", url: `http://127.0.0.1:${opts.port}` };
}
process.stdout.write(JSON.stringify(ready) + "\n");
process.stdin.resume();
process.stdin.on("end", async () => {
  try {
    if (host) await host.close();
    if (opts.mode !== "host") await (await paperclipAsset()).cleanup();
  } finally {
    runner.killAll();
    process.exit(0);
  }
});
