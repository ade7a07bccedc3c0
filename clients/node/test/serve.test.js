// Against the real binary: readiness, agent env, forwarding with the injected credential,
// secrets only in the environment, logs, lifeline, early exit.

import test from 'node:test';
import assert from 'node:assert/strict';

import {
  startBridge,
  BridgeError,
  BridgeExitedError,
} from '../index.js';
import {
  bridgeBinary,
  within,
  procCmdline,
  procEnviron,
  startUpstream,
} from '../testlib/helpers.js';

const binary = bridgeBinary();
const WAIT = 5000;
const opts = { timeout: 15000 };

const UPSTREAM_TOKEN = 'upstream-secret-0123456789abcdef';
const BRIDGE_TOKEN = 'bridge-secret-fedcba9876543210-xyz';

/** Starts a bridge and makes sure it is stopped when the test ends, whatever happens. */
async function start(t, options = {}) {
  const bridge = await startBridge({ binary, ...options });
  t.after(() => within(WAIT + 11000, bridge.stop(), 'bridge stop in cleanup'));
  return bridge;
}

test('defaults: generated 43-char token, loopback url, agent env; stop() returns the summary', opts, async (t) => {
  const bridge = await start(t);
  assert.match(bridge.token, /^[A-Za-z0-9_-]{43}$/);
  assert.match(bridge.url, /^http:\/\/127\.0\.0\.1:\d+$/);
  assert.equal(typeof bridge.pid, 'number');
  assert.equal(bridge.ready.event, 'ready');
  assert.equal(bridge.ready.pid, bridge.pid);
  assert.deepEqual(bridge.env, { PAPERCLIP_API_URL: bridge.url, PAPERCLIP_API_KEY: bridge.token });

  const health = await fetch(`${bridge.url}/__bridge/health`, { signal: AbortSignal.timeout(WAIT) });
  assert.equal(health.status, 200);
  assert.deepEqual(await health.json(), { status: 'ok' });

  const summary = await within(WAIT, bridge.stop(), 'stop()');
  assert.equal(summary.event, 'exit');
  assert.equal(summary.reason, 'signal');
  assert.equal(typeof summary.requests, 'number');
  assert.equal(typeof summary.forwarded, 'number');
  assert.equal(typeof summary.upstream_errors, 'number');
  assert.equal(typeof summary.denied, 'object');

  const exit = await within(WAIT, bridge.exited, 'exited');
  assert.deepEqual(exit, { code: 0, signal: null, summary });
  // Idempotent: a second call neither signals again nor differs.
  assert.equal(await bridge.stop(), summary);
});

test('forwards with the injected upstream credential, never the bridge token', opts, async (t) => {
  const upstream = await startUpstream();
  t.after(() => upstream.close());
  const bridge = await start(t, {
    upstream: upstream.url,
    upstreamToken: UPSTREAM_TOKEN,
    runId: 'run-42',
  });

  const ok = await fetch(`${bridge.url}/api/agents/me`, {
    headers: { authorization: `Bearer ${bridge.token}` },
    signal: AbortSignal.timeout(WAIT),
  });
  assert.equal(ok.status, 200);
  assert.deepEqual(await ok.json(), { id: 'agent-1' });
  assert.ok(ok.headers.get('x-request-id'));

  const denied = await fetch(`${bridge.url}/api/agents/me`, {
    headers: { authorization: 'Bearer not-the-token' },
    signal: AbortSignal.timeout(WAIT),
  });
  assert.equal(denied.status, 401);
  await denied.arrayBuffer();

  assert.equal(upstream.requests.length, 1, 'only the authenticated request reaches the upstream');
  const [seen] = upstream.requests;
  assert.equal(seen.method, 'GET');
  assert.equal(seen.url, '/api/agents/me');
  assert.equal(seen.headers.authorization, `Bearer ${UPSTREAM_TOKEN}`);
  assert.equal(seen.headers['x-paperclip-run-id'], 'run-42');
  for (const value of Object.values(seen.headers)) {
    assert.ok(!String(value).includes(bridge.token), 'the bridge token must not be forwarded');
  }

  const summary = await within(WAIT, bridge.stop(), 'stop()');
  assert.equal(summary.reason, 'signal');
  assert.equal(summary.requests, 2);
  assert.equal(summary.forwarded, 1);
  assert.deepEqual(summary.denied, { invalid_token: 1 });
  assert.equal(summary.upstream_errors, 0);
});

test('secrets reach the child only through its environment', opts, async (t) => {
  const bridge = await start(t, { upstreamToken: UPSTREAM_TOKEN, bridgeToken: BRIDGE_TOKEN, runId: 'run-7' });
  // A supplied token is not echoed on the ready line; the handle carries it.
  assert.equal(bridge.ready.token, undefined);
  assert.equal(bridge.token, BRIDGE_TOKEN);
  assert.equal(bridge.env.PAPERCLIP_API_KEY, BRIDGE_TOKEN);

  const argv = await procCmdline(bridge.pid);
  assert.equal(argv[0], binary);
  assert.ok(argv.includes('serve'));
  const cmdline = argv.join(' ');
  assert.ok(!cmdline.includes(UPSTREAM_TOKEN), 'upstream token in argv');
  assert.ok(!cmdline.includes(BRIDGE_TOKEN), 'bridge token in argv');

  const env = await procEnviron(bridge.pid);
  assert.equal(env.CALLBACK_BRIDGE_UPSTREAM_TOKEN, UPSTREAM_TOKEN);
  assert.equal(env.CALLBACK_BRIDGE_TOKEN, BRIDGE_TOKEN);
  assert.equal(env.PAPERCLIP_RUN_ID, 'run-7');

  const noToken = await fetch(`${bridge.url}/__bridge/metrics`, { signal: AbortSignal.timeout(WAIT) });
  assert.equal(noToken.status, 401);
  await noToken.arrayBuffer();
  const metrics = await fetch(`${bridge.url}/__bridge/metrics`, {
    headers: { authorization: `Bearer ${BRIDGE_TOKEN}` },
    signal: AbortSignal.timeout(WAIT),
  });
  assert.equal(metrics.status, 200);
  await metrics.arrayBuffer();
});

test('onLog receives each stderr line, parsed when it is JSON; no secret is logged', opts, async (t) => {
  const lines = [];
  const bridge = await start(t, {
    upstreamToken: UPSTREAM_TOKEN,
    onLog: (line) => lines.push(line),
  });
  const res = await fetch(`${bridge.url}/api/agents/me`, { signal: AbortSignal.timeout(WAIT) });
  assert.equal(res.status, 401);
  await res.arrayBuffer();
  await within(WAIT, bridge.stop(), 'stop()');
  // `exited` (awaited by stop) resolves only after stderr has been read to the end.
  assert.ok(lines.length > 0, 'some log lines');
  for (const line of lines) {
    assert.equal(typeof line, 'object', `not JSON: ${line}`);
    assert.equal(typeof line.level, 'string');
    const text = JSON.stringify(line);
    assert.ok(!text.includes(UPSTREAM_TOKEN) && !text.includes(bridge.token), 'secret in a log line');
  }
  assert.ok(lines.some((l) => l.message === 'ready'), 'a "ready" log record');
  assert.ok(lines.some((l) => l.message === 'request' && l.status === 401 && l.code === 'invalid_token'), 'an access-log record');
});

test('lifeline: closing the child stdin makes the bridge exit with reason "lifeline"', opts, async (t) => {
  const bridge = await start(t);
  const argv = await procCmdline(bridge.pid);
  const i = argv.indexOf('--lifeline');
  assert.ok(i > 0 && argv[i + 1] === 'stdin', `--lifeline stdin in ${argv.join(' ')}`);

  bridge.child.stdin.end();
  const exit = await within(WAIT, bridge.exited, 'exit after lifeline EOF');
  assert.equal(exit.code, 0);
  assert.equal(exit.summary.reason, 'lifeline');
  // stop() after the fact just reports the same summary.
  assert.equal(await bridge.stop(), exit.summary);
});

test('lifeline: false passes no lifeline flag', opts, async (t) => {
  const bridge = await start(t, { lifeline: false });
  const argv = await procCmdline(bridge.pid);
  assert.ok(!argv.includes('--lifeline'));
  assert.equal(bridge.child.stdin, null);
  const health = await fetch(`${bridge.url}/__bridge/health`, { signal: AbortSignal.timeout(WAIT) });
  assert.equal(health.status, 200);
  await health.arrayBuffer();
  const summary = await within(WAIT, bridge.stop(), 'stop()');
  assert.equal(summary.reason, 'signal');
});

test('a bridge that stops on its own right after ready: exited carries its summary', opts, async (t) => {
  // Ready and exit lines may arrive in one chunk; the exit line must not be lost.
  const bridge = await start(t, { args: ['--max-lifetime', '1ms'] });
  const exit = await within(WAIT, bridge.exited, 'exit at max lifetime');
  assert.equal(exit.code, 0);
  assert.equal(exit.signal, null);
  assert.equal(exit.summary.reason, 'lifetime');
  assert.equal(await bridge.stop(), exit.summary);
});

test('a bridge that exits before ready rejects with BridgeExitedError and the stderr tail', opts, async () => {
  const err = await within(
    WAIT,
    startBridge({ binary, args: ['--listen', '0.0.0.0:0'], upstreamToken: UPSTREAM_TOKEN }).then(
      () => assert.fail('expected a rejection'),
      (e) => e,
    ),
    'early exit',
  );
  assert.ok(err instanceof BridgeExitedError, String(err));
  assert.ok(err instanceof BridgeError);
  assert.equal(err.name, 'BridgeExitedError');
  assert.equal(err.code, 2);
  assert.equal(err.signal, null);
  assert.ok(Array.isArray(err.stderrTail));
  assert.ok(err.stderrTail.length >= 1 && err.stderrTail.length <= 20);
  assert.ok(err.stderrTail.some((l) => l.includes('loopback')), err.stderrTail.join('\n'));
  assert.ok(err.message.includes('loopback'), err.message);
  assert.ok(!err.stderrTail.join('\n').includes(UPSTREAM_TOKEN));
});

// The bridge installs its SIGTERM/SIGINT handlers before it prints the readiness line, so a
// SIGTERM sent right after the line still drains and prints the exit summary (docs/reference.md §3).
test('stop() right after ready still gets the exit summary', {
  ...opts,
}, async () => {
  for (let i = 0; i < 20; i++) {
    const bridge = await startBridge({ binary, lifeline: false });
    await within(WAIT, bridge.stop(), 'stop()');
    const exit = await within(WAIT, bridge.exited, 'exited');
    assert.deepEqual(
      { code: exit.code, signal: exit.signal, reason: exit.summary?.reason },
      { code: 0, signal: null, reason: 'signal' },
      `attempt ${i + 1}`,
    );
  }
});
