// Our stdio gateway under our stdio relay, for what no Paperclip pairing can show: Paperclip's
// http2 gateway never sends content-length on its streams (and Paperclip's host never sends one
// back), so only our own pair tells the other side a body's length, which must then reach the
// upstream (request) and the agent (response) as content-length, not as chunked framing. Also: a
// token the relay generated appears on its readiness line only.
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
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
    // And back: the upstream's content-length reaches the agent (no chunked re-framing).
    const blob = Buffer.alloc(700_000, 7);
    upstream.on("/api/attachments/a1/content", { download: blob });
    const down = await agentRequest(url, { path: "/api/attachments/a1/content", token: relay.token });
    assert.equal(down.status, 200);
    assert.equal(sha256(down.body), sha256(blob));
    assert.equal(down.headers["transfer-encoding"], undefined, "chunked although the length was known");
    assert.equal(down.headers["content-length"], String(blob.length));

    // The relay generated the token: it appears on the readiness line and nowhere else.
    await relay.proc.stop(5000);
    const out = relay.proc.stdout();
    assert.equal(out.split(relay.token).length - 1, 1, "token printed other than once on stdout");
    assert.ok(out.split("\n")[0].includes(relay.token), "token not on the readiness line");
    assert.ok(!relay.proc.stderr().includes(relay.token), "token in stderr");
    assert.ok(!(out + relay.proc.stderr()).includes("pcp_reference_credential"), "credential printed");
  } finally {
    relay.proc.kill("SIGKILL");
    relay.proc.child.stdout.destroy();
    relay.proc.child.stderr.destroy();
    await upstream.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
