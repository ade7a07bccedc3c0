// A small stand-in for Paperclip's http2_v1 host side, written for interop tests from its
// documented behaviour: it starts the gateway with Paperclip's environment variables, waits for
// the READY line with its nonce, then serves HTTP/2 (Node's server, nghttp2) on the gateway's
// stdout/stdin. Each stream is answered with JSON describing what the host received; a path
// ending in /indeterminate is answered 504 + `x-paperclip-bridge-outcome: indeterminate`.
// Usage: NODE_HOST_TOKEN=<bridge token> node node_host.mjs <callback-bridge binary> <agent port>.
// Prints {"event":"ready"} on stdout once the session is up.
import { spawn } from "node:child_process";
import http2 from "node:http2";
import { Duplex } from "node:stream";

const [bin, port] = process.argv.slice(2);
const token = process.env.NODE_HOST_TOKEN;
const nonce = "feedfacecafebeef0123456789abcdef";

const child = spawn(bin, ["gateway"], {
  env: {
    PATH: process.env.PATH,
    PAPERCLIP_API_BRIDGE_MODE: "http2_v1",
    PAPERCLIP_BRIDGE_TOKEN: token,
    PAPERCLIP_BRIDGE_NONCE: nonce,
    PAPERCLIP_BRIDGE_HOST: "127.0.0.1",
    PAPERCLIP_BRIDGE_PORT: port,
    CALLBACK_BRIDGE_LOG_FORMAT: "json",
  },
  stdio: ["pipe", "pipe", "inherit"],
});
child.on("exit", (code) => {
  process.stderr.write(`[node-host] gateway exited ${code}\n`);
  process.exit(3);
});

let head = Buffer.alloc(0);
function onData(chunk) {
  head = Buffer.concat([head, chunk]);
  const nl = head.indexOf(10);
  if (nl < 0) return;
  child.stdout.off("data", onData);
  child.stdout.pause();
  const ready = JSON.parse(head.subarray(0, nl).toString());
  if (ready.version !== 2 || ready.type !== "ready" || ready.nonce !== nonce) {
    process.stderr.write(`[node-host] bad READY ${JSON.stringify(ready)}\n`);
    process.exit(2);
  }
  const rest = head.subarray(nl + 1);
  if (rest.length > 0) child.stdout.unshift(rest);
  serve();
}
child.stdout.on("data", onData);

function serve() {
  const channel = Duplex.from({ readable: child.stdout, writable: child.stdin });
  const server = http2.createServer();
  server.on("stream", (stream, headers) => {
    const chunks = [];
    stream.on("data", (c) => chunks.push(c));
    stream.on("end", () => {
      const path = headers[":path"];
      const body = JSON.stringify({
        method: headers[":method"],
        path,
        authority: headers[":authority"],
        token_ok: headers.authorization === `Bearer ${token}`,
        body_bytes: Buffer.concat(chunks).length,
      });
      if (path.endsWith("/indeterminate")) {
        stream.respond({
          ":status": 504,
          "content-type": "application/json",
          "x-paperclip-bridge-outcome": "indeterminate",
        });
      } else {
        stream.respond({ ":status": 200, "content-type": "application/json" });
      }
      stream.end(body);
    });
  });
  server.emit("connection", channel);
  process.stdout.write(JSON.stringify({ event: "ready" }) + "\n");
}

process.on("SIGTERM", () => {
  child.kill("SIGTERM");
  process.exit(0);
});
