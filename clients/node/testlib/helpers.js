// Shared helpers for the tests in ../test. Kept outside test/ so that `node --test` does not
// run this file as a test of its own.

import { existsSync, statSync } from 'node:fs';
import { createServer } from 'node:http';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, '..', '..', '..');

/** The fake binary used for behaviours the real bridge does not show on demand. */
export const FAKE_BRIDGE = join(here, '..', 'test', 'fixtures', 'fake-bridge.sh');

/**
 * The real binary: $CALLBACK_BRIDGE_BIN, else the newer of target/release and target/debug in
 * the repository (build one with `cargo build`).
 */
export function bridgeBinary() {
  if (process.env.CALLBACK_BRIDGE_BIN) return process.env.CALLBACK_BRIDGE_BIN;
  const candidates = ['release', 'debug']
    .map((p) => join(repo, 'target', p, 'callback-bridge'))
    .filter((p) => existsSync(p))
    .sort((a, b) => statSync(b).mtimeMs - statSync(a).mtimeMs);
  if (candidates.length === 0) {
    throw new Error('callback-bridge binary not found: set CALLBACK_BRIDGE_BIN or run `cargo build` in the repository');
  }
  return candidates[0];
}

/** Rejects with a clear message if `promise` does not settle within `ms`. */
export function within(ms, promise, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The argv of a live process, from /proc (Linux). */
export async function procCmdline(pid) {
  const { readFile } = await import('node:fs/promises');
  const raw = await readFile(`/proc/${pid}/cmdline`, 'utf8');
  return raw.split('\0').filter((s, i, a) => i < a.length - 1 || s !== '');
}

/** The environment of a live process, from /proc (Linux), as an object. */
export async function procEnviron(pid) {
  const { readFile } = await import('node:fs/promises');
  const raw = await readFile(`/proc/${pid}/environ`, 'utf8');
  const env = {};
  for (const entry of raw.split('\0')) {
    const eq = entry.indexOf('=');
    if (eq > 0) env[entry.slice(0, eq)] = entry.slice(eq + 1);
  }
  return env;
}

/**
 * A tiny upstream on 127.0.0.1:0 that records every request's method, url and headers and
 * answers 200 with a small JSON body.
 */
export async function startUpstream() {
  const requests = [];
  const server = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      requests.push({ method: req.method, url: req.url, headers: req.headers });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"id":"agent-1"}');
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () => new Promise((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}

/** True if a process with this pid exists (and may be signalled by us). */
export function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return err.code === 'EPERM';
  }
}
