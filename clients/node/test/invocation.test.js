// What would be run, without running it: argv assembly and the child's environment.

import test from 'node:test';
import assert from 'node:assert/strict';

import { buildInvocation } from '../index.js';

test('defaults: serve with the stdin lifeline', () => {
  const inv = buildInvocation({ binary: '/bin/cb' });
  assert.equal(inv.binary, '/bin/cb');
  assert.deepEqual(inv.argv, ['serve', '--lifeline', 'stdin']);
  assert.equal(inv.lifeline, true);
});

test('upstream and extra args follow the subcommand; no lifeline when disabled', () => {
  const inv = buildInvocation({
    binary: '/bin/cb',
    upstream: 'http://127.0.0.1:3100/base',
    args: ['--drain-timeout', '2s'],
    lifeline: false,
  });
  assert.deepEqual(inv.argv, ['serve', '--upstream', 'http://127.0.0.1:3100/base', '--drain-timeout', '2s']);
  assert.equal(inv.lifeline, false);
});

test('secrets go to the environment only; per-run variables are not inherited', () => {
  const saved = { ...process.env };
  try {
    process.env.CALLBACK_BRIDGE_TOKEN = 'inherited-token';
    process.env.CALLBACK_BRIDGE_UPSTREAM_TOKEN = 'inherited-upstream';
    process.env.PAPERCLIP_RUN_ID = 'inherited-run';
    process.env.SOME_VAR = 'kept';

    const bare = buildInvocation({ binary: '/bin/cb' });
    assert.equal(bare.env.CALLBACK_BRIDGE_TOKEN, undefined);
    assert.equal(bare.env.CALLBACK_BRIDGE_UPSTREAM_TOKEN, undefined);
    assert.equal(bare.env.PAPERCLIP_RUN_ID, undefined);
    assert.equal(bare.env.SOME_VAR, 'kept');

    const inv = buildInvocation({
      binary: '/bin/cb',
      upstreamToken: 'up-secret',
      bridgeToken: 'br-secret',
      runId: 'run-1',
      env: { RUST_LOG: 'debug', SOME_VAR: undefined },
    });
    assert.equal(inv.env.CALLBACK_BRIDGE_UPSTREAM_TOKEN, 'up-secret');
    assert.equal(inv.env.CALLBACK_BRIDGE_TOKEN, 'br-secret');
    assert.equal(inv.env.PAPERCLIP_RUN_ID, 'run-1');
    assert.equal(inv.env.RUST_LOG, 'debug');
    assert.ok(!('SOME_VAR' in inv.env), 'undefined in options.env removes an inherited variable');
    assert.ok(!inv.argv.join(' ').includes('secret'));

    const isolated = buildInvocation({ binary: '/bin/cb', inheritEnv: false, env: { PATH: '/usr/bin' } });
    assert.deepEqual(isolated.env, { PATH: '/usr/bin' });
  } finally {
    for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
    Object.assign(process.env, saved);
  }
});

test('binary defaults to $CALLBACK_BRIDGE_BIN, then callback-bridge on PATH', () => {
  const saved = process.env.CALLBACK_BRIDGE_BIN;
  try {
    process.env.CALLBACK_BRIDGE_BIN = '/opt/cb/callback-bridge';
    assert.equal(buildInvocation().binary, '/opt/cb/callback-bridge');
    delete process.env.CALLBACK_BRIDGE_BIN;
    assert.equal(buildInvocation().binary, 'callback-bridge');
  } finally {
    if (saved === undefined) delete process.env.CALLBACK_BRIDGE_BIN;
    else process.env.CALLBACK_BRIDGE_BIN = saved;
  }
});
