// A small stand-in for Paperclip's http2_v1 sandbox gateway, written for interop tests from its
// documented behaviour: Paperclip's environment variables, an HTTP/1.1 loopback listener, the
// READY line on stdout once bound, then Node's HTTP/2 client (nghttp2) over stdin/stdout with
// `authorization: Bearer <token>` and the allowlisted headers on every stream.
import http from "node:http";
import http2 from "node:http2";
import { Duplex } from "node:stream";

const token = process.env.PAPERCLIP_BRIDGE_TOKEN;
const nonce = process.env.PAPERCLIP_BRIDGE_NONCE;
const port = Number(process.env.PAPERCLIP_BRIDGE_PORT);
// With NODE_GATEWAY_END_WITH_DATA=1 every stream is ended by a (possibly empty) DATA frame, as
// some HTTP/2 clients do, instead of END_STREAM on the HEADERS frame of a bodiless request.
const endWithData = process.env.NODE_GATEWAY_END_WITH_DATA === "1";
// NODE_GATEWAY_CONTENT_LENGTH: unset sends no `content-length` (as Paperclip's gateway); `exact`
// declares the body's length; `over` declares one byte more than is sent, `under` one byte less.
const declare = process.env.NODE_GATEWAY_CONTENT_LENGTH || "";
const forwarded = ["accept", "content-type", "if-match", "if-none-match", "x-paperclip-github-capability"];

let session;

function fail(res, status, message) {
  res.writeHead(status, { "content-type": "application/json" });
  res.end(JSON.stringify({ error: message }));
}

const server = http.createServer((req, res) => {
  if (req.headers.authorization !== `Bearer ${token}`) {
    return fail(res, 401, "Invalid bridge token.");
  }
  const chunks = [];
  req.on("data", (c) => chunks.push(c));
  req.on("end", () => {
    const body = Buffer.concat(chunks);
    const headers = { ":method": req.method, ":path": req.url, authorization: `Bearer ${token}` };
    for (const name of forwarded) {
      if (req.headers[name] !== undefined) headers[name] = req.headers[name];
    }
    const declared = { exact: 0, over: 1, under: -1 }[declare];
    if (declared !== undefined && body.length > 0) headers["content-length"] = String(body.length + declared);
    const stream = session.request(headers, { endStream: !endWithData && body.length === 0 });
    stream.on("response", (head) => {
      const out = {};
      for (const [name, value] of Object.entries(head)) {
        if (!name.startsWith(":") && name !== "content-length") out[name] = value;
      }
      const status = head["x-paperclip-bridge-outcome"] === "indeterminate" ? 409 : head[":status"];
      const parts = [];
      stream.on("data", (c) => parts.push(c));
      stream.on("end", () => {
        res.writeHead(status, out);
        res.end(Buffer.concat(parts));
      });
    });
    stream.on("error", (e) => fail(res, 502, String(e)));
    if (endWithData || body.length > 0) stream.end(body);
  });
});

server.listen(port, "127.0.0.1", () => {
  process.stdout.write(JSON.stringify({ version: 2, type: "ready", nonce }) + "\n");
  const channel = Duplex.from({ readable: process.stdin, writable: process.stdout });
  session = http2.connect("http://bridge.internal", { createConnection: () => channel });
  session.on("error", (e) => process.stderr.write(`[node-gateway] ${e}\n`));
  session.on("close", () => process.exit(1));
});
