// Relays started through the helper, against the real binary.

import test from 'node:test';
import assert from 'node:assert/strict';

import { startBridge, BridgeExitedError, BridgeProtocolError } from '../index.js';
import { bridgeBinary, within, alive } from '../testlib/helpers.js';

const binary = bridgeBinary();
const WAIT = 5000;
const opts = { timeout: 15000 };

test('a relay whose gateway command dies before READY rejects with BridgeExitedError and the reason', opts, async () => {
  // The stdio relay prints its exit summary ("reason":"transport") instead of a readiness line
  // and exits 1, with the cause on stderr (docs/reference.md §3.4).
  const err = await within(WAIT, startBridge({
    binary,
    command: ['relay', '--transport', 'stdio', '--', 'sh', '-c', 'echo "gateway: cannot start" >&2; exit 3'],
    upstream: 'http://127.0.0.1:9',
    upstreamToken: 'upstream-secret-0123456789abcdef',
  }).then(() => assert.fail('expected a rejection'), (e) => e), 'rejection');

  assert.ok(err instanceof BridgeExitedError, String(err));
  assert.ok(!(err instanceof BridgeProtocolError));
  assert.equal(err.code, 1);
  assert.equal(err.signal, null);
  assert.equal(alive(err.pid), false, 'the relay has exited when the promise rejects');
  assert.equal(err.summary.event, 'exit');
  assert.equal(err.summary.reason, 'transport');
  assert.ok(err.stderrTail.includes('gateway: cannot start'), err.stderrTail.join('\n'));
  // The message ends with the relay's own one-line reason, its last stderr line.
  assert.match(err.stderrTail.at(-1), /gateway command was not accepted/);
  assert.ok(err.message.endsWith(err.stderrTail.at(-1)), err.message);
});
