// Against the real binary: the bridge on a Unix socket (for sandboxes that block TCP), reached
// with Node's http.request({ socketPath }), and the agent env that points at it.

import test from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { mkdtempSync, rmSync, lstatSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { startBridge, buildInvocation } from '../index.js';
import { bridgeBinary, within, startUpstream } from '../testlib/helpers.js';

const binary = bridgeBinary();
const WAIT = 5000;
const opts = { timeout: 15000 };

const UPSTREAM_TOKEN = 'upstream-secret-0123456789abcdef';

/** GET `path` over the Unix socket; resolves to { status, body }. */
function getOverSocket(socketPath, path, headers) {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, headers, timeout: WAIT }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => { body += c; });
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('timeout', () => req.destroy(new Error('request timed out')));
    req.on('error', reject);
    req.end();
  });
}

function tempDir(t) {
  const dir = mkdtempSync(join(tmpdir(), 'cb-node-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('socketPath: 0600 socket, agent env names it, requests forwarded, socket removed on stop', opts, async (t) => {
  const upstream = await startUpstream();
  t.after(() => upstream.close());
  const socketPath = join(tempDir(t), 'bridge.sock');
  const bridge = await startBridge({ binary, upstream: upstream.url, upstreamToken: UPSTREAM_TOKEN, socketPath });
  t.after(() => within(WAIT + 11000, bridge.stop(), 'bridge stop in cleanup'));

  assert.equal(bridge.url, `unix:${socketPath}`);
  assert.equal(bridge.socketPath, socketPath);
  assert.deepEqual(bridge.env, {
    PAPERCLIP_API_URL: 'http://localhost',
    PAPERCLIP_API_SOCKET: socketPath,
    PAPERCLIP_API_KEY: bridge.token,
  });
  const st = lstatSync(socketPath);
  assert.ok(st.isSocket());
  assert.equal(st.mode & 0o777, 0o600);

  const ok = await getOverSocket(bridge.socketPath, '/api/agents/me', { authorization: `Bearer ${bridge.token}` });
  assert.equal(ok.status, 200);
  assert.deepEqual(JSON.parse(ok.body), { id: 'agent-1' });
  const denied = await getOverSocket(bridge.socketPath, '/api/agents/me', {});
  assert.equal(denied.status, 401);
  assert.equal(JSON.parse(denied.body).code, 'invalid_token');
  assert.equal(upstream.requests.length, 1);
  assert.equal(upstream.requests[0].headers.authorization, `Bearer ${UPSTREAM_TOKEN}`);

  const summary = await within(WAIT, bridge.stop(), 'stop()');
  assert.equal(summary.requests, 2);
  assert.equal(existsSync(socketPath), false, 'socket removed on exit');
});

test('socket options become flags; they need socketPath and valid values', () => {
  const inv = buildInvocation({
    binary: 'cb', socketPath: '/run/a.sock', socketMode: '0660', allowPeerUids: [1000, 1001], allowPeerGids: [50],
  });
  assert.deepEqual(inv.argv, [
    'serve', '--lifeline', 'stdin', '--listen', 'unix:/run/a.sock', '--listen-mode', '0660',
    '--allow-peer-uid', '1000,1001', '--allow-peer-gid', '50',
  ]);
  assert.throws(() => buildInvocation({ allowPeerUids: [1000] }), TypeError);
  assert.throws(() => buildInvocation({ socketPath: '/s', socketMode: '0666' }), TypeError);
  assert.throws(() => buildInvocation({ socketPath: '/s', allowPeerUids: [] }), TypeError);
  assert.throws(() => buildInvocation({ socketPath: '/s', allowPeerUids: ['1000'] }), TypeError);
  assert.throws(() => buildInvocation({ socketPath: '' }), TypeError);
});
