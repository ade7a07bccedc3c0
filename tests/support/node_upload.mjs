// An agent written the way Node programs send uploads: Node's `http` module and `fetch` each
// write the whole request body before they look at the answer. Used to check that a refusal the
// bridge sends before reading the body (413 `body_too_large`) reaches such a client instead of a
// broken pipe.
//
// Usage: node node_upload.mjs URL TOKEN PATH SIZE
//   URL   `http://127.0.0.1:PORT` or `unix:/path/to/socket` (fetch is skipped on a socket)
// Prints one JSON line per mode: {"mode", "status", "body"} or {"mode", "error"}.
import http from "node:http";

const [url, token, path, sizeText] = process.argv.slice(2);
const size = Number(sizeText);
const body = Buffer.alloc(size, 0x61);
const unix = url.startsWith("unix:");
const base = unix ? { socketPath: url.slice(5) } : { host: new URL(url).hostname, port: Number(new URL(url).port) };

function viaHttp(mode) {
  return new Promise((resolve) => {
    const headers = { authorization: `Bearer ${token}`, "content-type": "application/json" };
    if (mode === "http-length") headers["content-length"] = String(size);
    const req = http.request({ ...base, method: "POST", path, headers, agent: false });
    let answered = false;
    req.on("response", (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => {
        answered = true;
        resolve({ mode, status: res.statusCode, body: Buffer.concat(chunks).toString("utf8") });
      });
      res.on("error", (e) => resolve({ mode, error: `response: ${e.code || e.message}` }));
    });
    req.on("error", (e) => {
      if (!answered) resolve({ mode, error: e.code || e.message });
    });
    // Chunked mode: the same bytes in 16 KiB writes, no declared length.
    if (mode === "http-chunked") {
      for (let i = 0; i < size; i += 16384) req.write(body.subarray(i, i + 16384));
      req.end();
    } else {
      req.end(body);
    }
  });
}

async function viaFetch(mode) {
  const init = {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
  };
  if (mode === "fetch-stream") {
    let sent = 0;
    init.body = new ReadableStream({
      pull(controller) {
        if (sent >= size) return controller.close();
        const n = Math.min(16384, size - sent);
        controller.enqueue(body.subarray(sent, sent + n));
        sent += n;
      },
    });
    init.duplex = "half";
  } else {
    init.body = body;
  }
  try {
    const res = await fetch(url + path, init);
    return { mode, status: res.status, body: await res.text() };
  } catch (e) {
    return { mode, error: String(e.cause?.code || e.cause?.message || e.message) };
  }
}

const modes = ["http-length", "http-chunked"];
if (!unix) modes.push("fetch", "fetch-stream");
for (const mode of modes) {
  const result = mode.startsWith("fetch") ? await viaFetch(mode) : await viaHttp(mode);
  process.stdout.write(JSON.stringify(result) + "\n");
}
