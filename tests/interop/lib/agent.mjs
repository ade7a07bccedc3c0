// The agent's view: HTTP/1.1 requests to a gateway with node's own clients.
//
// API
//   agentRequest(baseUrl, { method = "GET", path, token, headers = {}, body, timeoutMs = 15000,
//                           agent = false })
//        node:http client; writes the whole body, then waits for the answer.
//        -> { status, headers, body: Buffer, json(), error }   (error: the client's error code
//           when no answer was read, e.g. "EPIPE", "ECONNRESET", "ECONNREFUSED"; status 0 then)
//   agentFetch(baseUrl, { method, path, token, headers, body, timeoutMs })
//        the same through fetch (undici); a ReadableStream body is sent chunked.
//        -> { status, headers, body, json(), error }
//   agentRequestChunked(baseUrl, { method = "POST", path, token, headers, total, chunkBytes })
//        node:http with `transfer-encoding: chunked`, writing `total` bytes ("a") as fast as
//        the socket takes them. -> as agentRequest
//   byteStream(total, chunkBytes)  a ReadableStream of `total` bytes ("a"), for agentFetch
import http from "node:http";

function result(status, headers, body, error = null) {
  return {
    status,
    headers,
    body,
    error,
    text: () => body.toString("utf8"),
    json: () => JSON.parse(body.toString("utf8")),
  };
}

export function agentRequestChunked(baseUrl, { method = "POST", path, token, headers = {}, total, chunkBytes = 256 * 1024 }) {
  const h = { ...headers };
  if (token !== undefined) h.authorization = `Bearer ${token}`;
  return new Promise((resolve) => {
    let done = false;
    const finish = (r) => {
      if (!done) {
        done = true;
        clearTimeout(timer);
        resolve(r);
      }
    };
    const req = http.request(new URL(path, baseUrl), { method, headers: h, agent: false }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => finish(result(res.statusCode, res.headers, Buffer.concat(chunks))));
      res.on("error", (e) => finish(result(res.statusCode, res.headers, Buffer.concat(chunks), e.code || String(e))));
    });
    const timer = setTimeout(() => {
      req.destroy();
      finish(result(0, {}, Buffer.alloc(0), "client_timeout"));
    }, 30_000);
    req.on("error", (e) => finish(result(0, {}, Buffer.alloc(0), e.code || String(e))));
    const chunk = Buffer.alloc(chunkBytes, "a");
    let sent = 0;
    const pump = () => {
      while (sent < total && !req.destroyed) {
        sent += chunk.length;
        if (!req.write(chunk)) return void req.once("drain", pump);
      }
      req.end();
    };
    pump();
  });
}

export function byteStream(total, chunkBytes = 256 * 1024) {
  let sent = 0;
  return new ReadableStream({
    pull(ctl) {
      if (sent >= total) return ctl.close();
      const n = Math.min(chunkBytes, total - sent);
      sent += n;
      ctl.enqueue(new Uint8Array(n).fill(97));
    },
  });
}

export function agentRequest(baseUrl, { method = "GET", path, token, headers = {}, body, timeoutMs = 15_000, agent = false }) {
  const url = new URL(path, baseUrl);
  const h = { ...headers };
  if (token !== undefined) h.authorization = `Bearer ${token}`;
  if (body !== undefined) h["content-length"] = Buffer.byteLength(body);
  return new Promise((resolve) => {
    let done = false;
    const finish = (r) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve(r);
    };
    const req = http.request(url, { method, headers: h, agent }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => finish(result(res.statusCode, res.headers, Buffer.concat(chunks))));
      res.on("error", (e) => finish(result(res.statusCode, res.headers, Buffer.concat(chunks), e.code || String(e))));
      res.on("aborted", () => finish(result(res.statusCode, res.headers, Buffer.concat(chunks), "aborted")));
    });
    const timer = setTimeout(() => {
      req.destroy();
      finish(result(0, {}, Buffer.alloc(0), "client_timeout"));
    }, timeoutMs);
    req.on("error", (e) => finish(result(0, {}, Buffer.alloc(0), e.code || String(e))));
    if (body !== undefined) req.end(body);
    else req.end();
  });
}

export async function agentFetch(baseUrl, { method = "GET", path, token, headers = {}, body, timeoutMs = 15_000 }) {
  const h = { ...headers };
  if (token !== undefined) h.authorization = `Bearer ${token}`;
  try {
    const res = await fetch(new URL(path, baseUrl), {
      method,
      headers: h,
      body,
      ...(body && typeof body.getReader === "function" ? { duplex: "half" } : {}),
      signal: AbortSignal.timeout(timeoutMs),
    });
    const buf = Buffer.from(await res.arrayBuffer());
    return result(res.status, Object.fromEntries(res.headers), buf);
  } catch (e) {
    const code = e?.cause?.code || e?.code || e?.name || String(e);
    return result(0, {}, Buffer.alloc(0), code);
  }
}
