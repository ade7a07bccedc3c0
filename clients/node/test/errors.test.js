// Failure paths, with a fake binary where the real bridge cannot be made to misbehave.

import test from 'node:test';
import assert from 'node:assert/strict';

import {
  startBridge,
  BridgeError,
  BridgeSpawnError,
  BridgeReadyTimeoutError,
  BridgeExitedError,
  BridgeProtocolError,
} from '../index.js';
import { FAKE_BRIDGE, within, alive } from '../testlib/helpers.js';

const WAIT = 5000;
const opts = { timeout: 15000 };

function rejection(promise) {
  return within(WAIT, promise.then(() => assert.fail('expected a rejection'), (e) => e), 'rejection');
}

test('a missing binary rejects with BridgeSpawnError (ENOENT)', opts, async () => {
  const err = await rejection(startBridge({ binary: '/nonexistent/callback-bridge' }));
  assert.ok(err instanceof BridgeSpawnError, String(err));
  assert.ok(err instanceof BridgeError);
  assert.equal(err.code, 'ENOENT');
  assert.equal(err.binary, '/nonexistent/callback-bridge');
  assert.equal(err.cause.code, 'ENOENT');
});

test('no readiness line in time rejects with BridgeReadyTimeoutError and kills the child', opts, async () => {
  const err = await rejection(startBridge({
    binary: FAKE_BRIDGE,
    env: { FAKE_MODE: 'never-ready' },
    readyTimeoutMs: 200,
  }));
  assert.ok(err instanceof BridgeReadyTimeoutError, String(err));
  assert.ok(err instanceof BridgeError);
  assert.equal(err.timeoutMs, 200);
  assert.equal(typeof err.pid, 'number');
  assert.ok(Array.isArray(err.stderrTail));
  assert.equal(alive(err.pid), false, 'the child must be gone when the promise rejects');
});

test('a first stdout line that is not the readiness line rejects with BridgeProtocolError', opts, async () => {
  const err = await rejection(startBridge({ binary: FAKE_BRIDGE, env: { FAKE_MODE: 'garbage' } }));
  assert.ok(err instanceof BridgeProtocolError, String(err));
  assert.ok(err instanceof BridgeError);
  assert.equal(err.line, 'hello from a program that is not callback-bridge');
  assert.equal(alive(err.pid), false);
});

test('a child that exits at once rejects with BridgeExitedError carrying its stderr', opts, async () => {
  const err = await rejection(startBridge({ binary: FAKE_BRIDGE, env: { FAKE_MODE: 'bogus' } }));
  assert.ok(err instanceof BridgeExitedError, String(err));
  assert.equal(err.code, 64);
  assert.deepEqual(err.stderrTail, ["fake-bridge: unknown FAKE_MODE 'bogus'"]);
});

test('stop() escalates to SIGKILL after stopTimeoutMs when SIGTERM is ignored', opts, async () => {
  const bridge = await startBridge({
    binary: FAKE_BRIDGE,
    env: { FAKE_MODE: 'ignore-term' },
    stopTimeoutMs: 200,
  });
  const summary = await within(WAIT, bridge.stop(), 'stop()');
  assert.equal(summary, null, 'no exit line from a killed process');
  const exit = await within(WAIT, bridge.exited, 'exited');
  assert.deepEqual(exit, { code: null, signal: 'SIGKILL', summary: null });
});

test('command: flags are inserted before "--" and the rest is passed through', opts, async () => {
  const bridge = await startBridge({
    binary: FAKE_BRIDGE,
    env: { FAKE_MODE: 'ok' },
    command: ['relay', '--transport', 'stdio', '--', 'sh', '-c', 'exec callback-bridge gateway'],
    upstream: 'http://127.0.0.1:3100',
    args: ['--drain-timeout', '1s'],
    agentUrl: 'http://127.0.0.1:7777',
    bridgeToken: 'relay-supplied-token-abcdef0123456789',
  });
  assert.equal(
    bridge.ready.argv,
    'relay --transport stdio --upstream http://127.0.0.1:3100 --lifeline stdin --drain-timeout 1s -- sh -c exec callback-bridge gateway',
  );
  // The fake's ready line has a url, which wins over agentUrl.
  assert.equal(bridge.url, 'http://127.0.0.1:9');
  assert.equal(bridge.token, 'relay-supplied-token-abcdef0123456789');
  const summary = await within(WAIT, bridge.stop(), 'stop()');
  assert.equal(summary.reason, 'signal');
});

test('invalid options reject with TypeError before anything is spawned', opts, async () => {
  await assert.rejects(startBridge({ args: '--listen 127.0.0.1:0' }), TypeError);
  await assert.rejects(startBridge({ readyTimeoutMs: -1 }), TypeError);
  await assert.rejects(startBridge({ onLog: 'yes' }), TypeError);
  await assert.rejects(startBridge({ upstreamToken: 42 }), TypeError);
  await assert.rejects(
    startBridge({ upstreamToken: 'sekrit-value-123', args: ['--run-id', 'sekrit-value-123'] }),
    /secrets go only in the environment/,
  );
});
