// A recording mock upstream (the part Paperclip's API plays), on 127.0.0.1:0.
//
// Every request is recorded once its body has been read completely (or the client went away):
//   { method, path, target, headers, bodyLength, bodySha256, complete }
// `path` is without the query, `target` is the request line's target, `headers` the lower-cased
// header object node:http gives.
//
// Behaviours are chosen per request by the first matching rule (`up.on(match, behaviour)`;
// match: exact path string, RegExp on the path, or a function of the record); without a match a
// request is answered `echo`.
//   "echo"                200 JSON { method, path, target, bodyLength, bodySha256, headers }
//   "fail500"             500 JSON { error: "upstream exploded" }
//   "hang"                never answered; the socket is destroyed by `close()`
//   { download: Buffer }  200 application/octet-stream with those bytes (content-length set)
//   "multipart"           201 JSON { parts: [{ name, filename, contentType, length, sha256 }],
//                         bodySha256 } parsed from a multipart/form-data body
//   { status, headers, body }  a fixed answer
//
// API
//   const up = await startUpstream()
//   up.url                     "http://127.0.0.1:PORT"
//   up.on(match, behaviour)    add a rule (rules are checked in the order added)
//   up.requests                the records so far
//   up.received(method, path)  records with that method and path
//   up.waitFor(pred, ms)       resolve once pred(up.requests) is true (polls; rejects at ms)
//   up.close()                 destroy every connection (hung ones included) and stop
import { createHash } from "node:crypto";
import http from "node:http";

export function sha256(buf) {
  return createHash("sha256").update(buf).digest("hex");
}

function parseMultipart(body, contentType) {
  const m = /boundary=(?:"([^"]+)"|([^;]+))/i.exec(contentType || "");
  if (!m) return null;
  const boundary = Buffer.from(`--${m[1] || m[2]}`);
  const parts = [];
  let pos = body.indexOf(boundary);
  while (pos >= 0) {
    const start = pos + boundary.length;
    if (body.subarray(start, start + 2).toString() === "--") break;
    const headEnd = body.indexOf("\r\n\r\n", start);
    if (headEnd < 0) break;
    const head = body.subarray(start + 2, headEnd).toString("utf8");
    const next = body.indexOf(boundary, headEnd + 4);
    if (next < 0) break;
    const content = body.subarray(headEnd + 4, next - 2);
    const name = /name="([^"]*)"/i.exec(head)?.[1] ?? null;
    const filename = /filename="([^"]*)"/i.exec(head)?.[1] ?? null;
    const ct = /content-type:\s*([^\r\n]+)/i.exec(head)?.[1] ?? null;
    parts.push({ name, filename, contentType: ct, length: content.length, sha256: sha256(content) });
    pos = next;
  }
  return parts;
}

export async function startUpstream() {
  const rules = [];
  const requests = [];
  const sockets = new Set();

  const server = http.createServer((req, res) => {
    const chunks = [];
    const url = new URL(req.url, "http://upstream.invalid");
    const record = {
      method: req.method,
      path: url.pathname,
      target: req.url,
      headers: { ...req.headers },
      bodyLength: 0,
      bodySha256: null,
      complete: false,
    };
    let recorded = false;
    const recordOnce = () => {
      if (recorded) return;
      recorded = true;
      const body = Buffer.concat(chunks);
      record.bodyLength = body.length;
      record.bodySha256 = sha256(body);
      requests.push(record);
      return body;
    };
    req.on("data", (c) => chunks.push(c));
    req.on("aborted", () => recordOnce());
    req.on("end", () => {
      record.complete = true;
      const body = recordOnce();
      const rule = rules.find(({ match }) =>
        typeof match === "string"
          ? match === record.path
          : match instanceof RegExp
            ? match.test(record.path)
            : match(record),
      );
      const behaviour = rule ? rule.behaviour : "echo";
      const json = (status, value) => {
        const text = JSON.stringify(value);
        res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
        res.end(text);
      };
      if (behaviour === "hang") return;
      if (behaviour === "echo") {
        return json(200, {
          method: record.method,
          path: record.path,
          target: record.target,
          bodyLength: record.bodyLength,
          bodySha256: record.bodySha256,
          headers: record.headers,
        });
      }
      if (behaviour === "fail500") return json(500, { error: "upstream exploded" });
      if (behaviour === "multipart") {
        const parts = parseMultipart(body, req.headers["content-type"]);
        if (!parts) return json(400, { error: "not multipart" });
        return json(201, { parts, bodySha256: record.bodySha256 });
      }
      if (behaviour.download) {
        res.writeHead(200, {
          "content-type": "application/octet-stream",
          "content-length": behaviour.download.length,
        });
        return res.end(behaviour.download);
      }
      res.writeHead(behaviour.status, behaviour.headers || {});
      res.end(behaviour.body ?? "");
    });
  });
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();

  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    on(match, behaviour) {
      rules.push({ match, behaviour });
      return this;
    },
    received(method, path) {
      return requests.filter((r) => r.method === method && r.path === path);
    },
    async waitFor(pred, ms = 10_000) {
      const deadline = Date.now() + ms;
      while (!pred(requests)) {
        if (Date.now() > deadline) throw new Error(`upstream: condition not met within ${ms} ms`);
        await new Promise((r) => setTimeout(r, 10));
      }
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
