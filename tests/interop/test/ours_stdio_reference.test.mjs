// Our stdio gateway under our stdio relay, for the one property no Paperclip pairing can show:
// Paperclip's http2 gateway never sends content-length on its streams, so only our own gateway
// tells the relay a body's length, and the relay must pass it on to the upstream (not switch to
// chunked framing).
import assert from "node:assert/strict";
import { mkdtempSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { agentRequest } from "../lib/agent.mjs";
import { startStdioRelay, stdioGatewayScript } from "../lib/ours.mjs";
import { freePort, waitListening } from "../lib/pairings.mjs";
import { createRunner } from "../lib/runner.mjs";
import { sha256, startUpstream } from "../lib/upstream.mjs";

test("our stdio gateway + our stdio relay: a declared content-length reaches the upstream", { timeout: 30_000 }, async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "cb-interop-"));
  const runner = createRunner({ dir });
  const upstream = await startUpstream();
  const port = await freePort();
  const relay = await startStdioRelay({
    upstream: upstream.url,
    credential: "pcp_reference_credential",
    gatewayArgv: runner.argv(stdioGatewayScript({ port })),
  });
  try {
    await waitListening(port);
    const url = `http://127.0.0.1:${port}`;
    for (const [p, body] of [
      ["/api/issues/ISS-1/comments", JSON.stringify({ body: "hello" })],
      ["/api/issues/ISS-2/comments", JSON.stringify({ body: "x".repeat(300_000) })],
    ]) {
      const r = await agentRequest(url, {
        method: "POST",
        path: p,
        token: relay.token,
        headers: { "content-type": "application/json" },
        body,
      });
      assert.equal(r.status, 200, r.text());
      const [got] = upstream.received("POST", p);
      assert.equal(got.bodySha256, sha256(Buffer.from(body)));
      assert.equal(got.headers["transfer-encoding"], undefined, "chunked although the length was known");
      assert.equal(got.headers["content-length"], String(Buffer.byteLength(body)));
    }
  } finally {
    await relay.proc.stop(2000);
    relay.proc.child.stdout.destroy();
    relay.proc.child.stderr.destroy();
    await upstream.close();
  }
});
