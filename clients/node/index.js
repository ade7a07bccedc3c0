// Spawn helper for callback-bridge: one bridge process per agent run.
//
// Contract (docs/reference.md §3): the bridge prints exactly one readiness line on stdout
// (`{"event":"ready",...}`) before anything else, logs only to stderr, and prints one
// exit-summary line (`{"event":"exit",...}`) on stdout when it stops after SIGTERM/SIGINT,
// lifeline EOF or a lifetime/idle limit. Secrets reach the child only through its environment:
// argv is world-readable in /proc.

import { spawn } from 'node:child_process';

const DEFAULT_READY_TIMEOUT_MS = 5000;
// The bridge's default drain_timeout is 5 s plus a 500 ms flush grace; leave a margin.
const DEFAULT_STOP_TIMEOUT_MS = 10000;
// After the process has exited, how long to wait for its stdout/stderr pipes to reach end of
// file (a grandchild may hold them open) before giving up on them.
const PIPE_DRAIN_MS = 1000;
// After SIGKILL at a readiness failure, how long to wait for the exit to be observed.
const KILL_WAIT_MS = 2000;
const STDERR_TAIL_LINES = 20;
// A single output line longer than this is cut (protects memory against a runaway writer).
const MAX_LINE_CHARS = 1 << 20;

const ENV_UPSTREAM_TOKEN = 'CALLBACK_BRIDGE_UPSTREAM_TOKEN';
const ENV_BRIDGE_TOKEN = 'CALLBACK_BRIDGE_TOKEN';
const ENV_RUN_ID = 'PAPERCLIP_RUN_ID';
// A readiness url of this form names the Unix socket the agent connects to (docs/reference.md §3.1).
const UNIX_PREFIX = 'unix:';
// The base URL an agent on a Unix socket uses: the host part is only the Host header (the bridge
// ignores it), the connection goes to PAPERCLIP_API_SOCKET.
const SOCKET_BASE_URL = 'http://localhost';

/** Base class of every error this module produces about the bridge process. */
export class BridgeError extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** The bridge could not be started at all (missing binary, not executable, ...). */
export class BridgeSpawnError extends BridgeError {
  constructor(binary, cause) {
    super(`cannot start callback-bridge (${binary}): ${cause && cause.message ? cause.message : cause}`, { cause });
    this.binary = binary;
    this.code = cause && cause.code ? cause.code : undefined;
  }
}

/** No readiness line arrived within `readyTimeoutMs`; the child has been killed. */
export class BridgeReadyTimeoutError extends BridgeError {
  constructor(timeoutMs, pid, stderrTail) {
    super(`callback-bridge (pid ${pid}) printed no readiness line within ${timeoutMs} ms; killed it`);
    this.timeoutMs = timeoutMs;
    this.pid = pid;
    this.stderrTail = stderrTail;
  }
}

/**
 * The child exited before printing its readiness line. `summary` is its exit-summary line when it
 * printed one instead of the readiness line (a relay that could not start its gateway), else null.
 */
export class BridgeExitedError extends BridgeError {
  constructor(code, signal, stderrTail, pid, summary = null) {
    const how = signal ? `signal ${signal}` : `code ${code}`;
    const last = stderrTail.length ? `: ${stderrTail[stderrTail.length - 1]}` : '';
    super(`callback-bridge (pid ${pid}) exited with ${how} before it was ready${last}`);
    this.code = code;
    this.signal = signal;
    this.stderrTail = stderrTail;
    this.pid = pid;
    this.summary = summary;
  }
}

/** The child wrote something on stdout that is not a readiness line; it has been killed. */
export class BridgeProtocolError extends BridgeError {
  constructor(line, pid, stderrTail) {
    // Quote only a bounded prefix: stdout is not covered by the no-secrets logging rule.
    const shown = line.length > 200 ? `${line.slice(0, 200)}…` : line;
    super(`callback-bridge (pid ${pid}) wrote an unexpected first stdout line: ${JSON.stringify(shown)}`);
    this.line = line;
    this.pid = pid;
    this.stderrTail = stderrTail;
  }
}

/** Splits a text stream into lines; the final unterminated piece is flushed at end. */
function onLines(stream, onLine, onEnd) {
  let buf = '';
  let ended = false;
  stream.setEncoding('utf8');
  stream.on('data', (chunk) => {
    buf += chunk;
    let nl;
    while ((nl = buf.indexOf('\n')) !== -1) {
      const line = buf.slice(0, nl).replace(/\r$/, '');
      buf = buf.slice(nl + 1);
      onLine(line);
    }
    if (buf.length > MAX_LINE_CHARS) {
      const line = buf;
      buf = '';
      onLine(line);
    }
  });
  const finish = () => {
    if (ended) return;
    ended = true;
    if (buf.length) {
      const line = buf;
      buf = '';
      onLine(line);
    }
    onEnd();
  };
  stream.on('end', finish);
  stream.on('close', finish);
  stream.on('error', finish);
}

function parseJsonObject(line) {
  if (!line.startsWith('{')) return undefined;
  try {
    const v = JSON.parse(line);
    return v !== null && typeof v === 'object' && !Array.isArray(v) ? v : undefined;
  } catch {
    return undefined;
  }
}

/** Waits for `promise`, but at most `ms`; the timer is cleared so it never holds the loop. */
function waitAtMost(promise, ms) {
  let timer;
  const timeout = new Promise((resolve) => {
    timer = setTimeout(resolve, ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function checkString(name, value) {
  if (value !== undefined && typeof value !== 'string') {
    throw new TypeError(`startBridge: options.${name} must be a string`);
  }
}

function checkTimeout(name, value) {
  if (value !== undefined && !(typeof value === 'number' && Number.isFinite(value) && value > 0)) {
    throw new TypeError(`startBridge: options.${name} must be a positive number of milliseconds`);
  }
}

function checkIdArray(name, value) {
  if (value !== undefined && !(Array.isArray(value) && value.length > 0
      && value.every((id) => Number.isInteger(id) && id >= 0 && id <= 0xffffffff))) {
    throw new TypeError(`startBridge: options.${name} must be a non-empty array of uids/gids`);
  }
}

function checkStringArray(name, value) {
  if (value !== undefined && !(Array.isArray(value) && value.every((a) => typeof a === 'string'))) {
    throw new TypeError(`startBridge: options.${name} must be an array of strings`);
  }
}

/** Validates the options and computes binary, argv and environment. Exported for tests. */
export function buildInvocation(options = {}) {
  if (options === null || typeof options !== 'object') {
    throw new TypeError('startBridge: options must be an object');
  }
  const {
    binary = process.env.CALLBACK_BRIDGE_BIN || 'callback-bridge',
    command = ['serve'],
    args = [],
    env = {},
    inheritEnv = true,
    upstream,
    upstreamToken,
    bridgeToken,
    runId,
    lifeline = true,
    socketPath,
    socketMode,
    allowPeerUids,
    allowPeerGids,
  } = options;
  checkString('binary', binary);
  checkStringArray('command', command);
  checkStringArray('args', args);
  checkString('upstream', upstream);
  checkString('upstreamToken', upstreamToken);
  checkString('bridgeToken', bridgeToken);
  checkString('runId', runId);
  checkString('agentUrl', options.agentUrl);
  checkString('socketPath', socketPath);
  if (socketPath === '') throw new TypeError('startBridge: options.socketPath must not be empty');
  if (socketMode !== undefined && socketMode !== '0600' && socketMode !== '0660') {
    throw new TypeError("startBridge: options.socketMode must be '0600' or '0660'");
  }
  checkIdArray('allowPeerUids', allowPeerUids);
  checkIdArray('allowPeerGids', allowPeerGids);
  if (socketPath === undefined
      && (socketMode !== undefined || allowPeerUids !== undefined || allowPeerGids !== undefined)) {
    throw new TypeError('startBridge: socketMode, allowPeerUids and allowPeerGids need socketPath');
  }
  checkTimeout('readyTimeoutMs', options.readyTimeoutMs);
  checkTimeout('stopTimeoutMs', options.stopTimeoutMs);
  if (options.onLog !== undefined && typeof options.onLog !== 'function') {
    throw new TypeError('startBridge: options.onLog must be a function');
  }
  if (env === null || typeof env !== 'object') {
    throw new TypeError('startBridge: options.env must be an object');
  }
  if (command.length === 0) {
    throw new TypeError('startBridge: options.command must name a subcommand');
  }

  // Flags we add go before a `--` (relay: what follows is the exec prefix / gateway command).
  const flags = [];
  if (upstream !== undefined) flags.push('--upstream', upstream);
  if (lifeline) flags.push('--lifeline', 'stdin');
  if (socketPath !== undefined) flags.push('--listen', `${UNIX_PREFIX}${socketPath}`);
  if (socketMode !== undefined) flags.push('--listen-mode', socketMode);
  if (allowPeerUids !== undefined) flags.push('--allow-peer-uid', allowPeerUids.join(','));
  if (allowPeerGids !== undefined) flags.push('--allow-peer-gid', allowPeerGids.join(','));
  flags.push(...args);
  const sep = command.indexOf('--');
  const argv = sep === -1
    ? [...command, ...flags]
    : [...command.slice(0, sep), ...flags, ...command.slice(sep)];

  // Refuse to put a secret on the command line, whatever the caller passed.
  for (const [name, secret] of [['upstreamToken', upstreamToken], ['bridgeToken', bridgeToken]]) {
    if (secret && (binary.includes(secret) || argv.some((a) => a.includes(secret)))) {
      throw new TypeError(`startBridge: options.${name} appears in the command line; secrets go only in the environment`);
    }
  }

  // The per-run variables are never inherited from this process: a token in the adapter's own
  // environment must not silently become every run's token. They come from the options (or,
  // explicitly, from options.env).
  const childEnv = inheritEnv ? { ...process.env } : {};
  delete childEnv[ENV_UPSTREAM_TOKEN];
  delete childEnv[ENV_BRIDGE_TOKEN];
  delete childEnv[ENV_RUN_ID];
  for (const [k, v] of Object.entries(env)) {
    if (v === undefined || v === null) delete childEnv[k];
    else childEnv[k] = String(v);
  }
  if (upstreamToken !== undefined) childEnv[ENV_UPSTREAM_TOKEN] = upstreamToken;
  if (bridgeToken !== undefined) childEnv[ENV_BRIDGE_TOKEN] = bridgeToken;
  if (runId !== undefined) childEnv[ENV_RUN_ID] = runId;

  return { binary, argv, env: childEnv, lifeline: Boolean(lifeline) };
}

/**
 * Starts one bridge and resolves once it is ready to serve.
 * @param {import('./index.js').BridgeOptions} [options]
 * @returns {Promise<import('./index.js').BridgeHandle>}
 */
export async function startBridge(options = {}) {
  const inv = buildInvocation(options);
  const readyTimeoutMs = options.readyTimeoutMs ?? DEFAULT_READY_TIMEOUT_MS;
  const stopTimeoutMs = options.stopTimeoutMs ?? DEFAULT_STOP_TIMEOUT_MS;
  const onLog = options.onLog;

  let child;
  try {
    child = spawn(inv.binary, inv.argv, {
      env: inv.env,
      stdio: [inv.lifeline ? 'pipe' : 'ignore', 'pipe', 'pipe'],
      windowsHide: true,
    });
  } catch (err) {
    // Synchronous failures (invalid arguments, EACCES on some platforms).
    throw new BridgeSpawnError(inv.binary, err);
  }
  // We never write to the lifeline; ignore EPIPE when the child goes away.
  if (child.stdin) child.stdin.on('error', () => {});

  const stderrTail = [];
  let summary = null;
  let ready = null;

  // The first stdout line decides readiness; it is handled synchronously so that an exit line in
  // the same chunk (a bridge that stops at once) is still seen as the summary.
  let firstLine;
  const firstLineSeen = new Promise((r) => { firstLine = r; });
  let sawFirstLine = false;
  let stdoutDone;
  let stderrDone;
  const stdoutEnded = new Promise((r) => { stdoutDone = r; });
  const stderrEnded = new Promise((r) => { stderrDone = r; });

  onLines(child.stdout, (line) => {
    if (!sawFirstLine) {
      sawFirstLine = true;
      const obj = parseJsonObject(line);
      if (obj && obj.event === 'ready') {
        ready = obj;
        firstLine({ kind: 'ready' });
      } else if (obj && obj.event === 'exit') {
        // A bridge that stops before it is ready prints only its exit summary (a stdio relay
        // whose gateway command failed: "reason":"transport"); the cause is on stderr.
        summary = obj;
        firstLine({ kind: 'exit-line' });
      } else {
        firstLine({ kind: 'protocol', line });
      }
      return;
    }
    if (ready !== null && summary === null) {
      const obj = parseJsonObject(line);
      if (obj && obj.event === 'exit') summary = obj;
    }
  }, stdoutDone);

  onLines(child.stderr, (line) => {
    stderrTail.push(line);
    if (stderrTail.length > STDERR_TAIL_LINES) stderrTail.shift();
    if (onLog) {
      try {
        onLog(parseJsonObject(line) ?? line);
      } catch {
        // A faulty callback must not take the adapter down from inside a stream handler.
      }
    }
  }, stderrDone);

  // `exited` resolves once the process is gone and its output has been read (bounded: a
  // grandchild holding the pipes must not hold us up). It never rejects.
  let spawnError = null;
  const exitObserved = new Promise((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
    // Keep a listener for the child's whole life: an unhandled 'error' would crash the adapter.
    child.on('error', (err) => {
      // 'error' without a pid: the process never started.
      if (child.pid === undefined) {
        spawnError = err;
        resolve({ code: null, signal: null });
      }
    });
  });
  const exited = exitObserved.then(async ({ code, signal }) => {
    if (!spawnError) {
      await waitAtMost(Promise.all([stdoutEnded, stderrEnded]), PIPE_DRAIN_MS);
    }
    child.stdout?.destroy();
    child.stderr?.destroy();
    child.stdin?.destroy();
    return { code, signal, summary };
  });

  // Wait for: the readiness line, an unexpected first line, exit, spawn error, or the timeout.
  // `exited` only resolves after stdout has been read, so a ready line always wins over it.
  let readyTimer;
  const outcome = await Promise.race([
    firstLineSeen,
    exited.then((result) => ({ kind: 'exited', result })),
    new Promise((resolve) => {
      readyTimer = setTimeout(() => resolve({ kind: 'timeout' }), readyTimeoutMs);
    }),
  ]);
  clearTimeout(readyTimer);

  if (outcome.kind !== 'ready') {
    if (outcome.kind === 'exit-line') {
      // It is stopping on its own: let it exit and its stderr be read, then report the exit.
      let result = await waitAtMost(exited, KILL_WAIT_MS);
      if (result === undefined) {
        child.kill('SIGKILL');
        result = await waitAtMost(exited, KILL_WAIT_MS);
      }
      const { code = null, signal = null } = result ?? {};
      throw new BridgeExitedError(code, signal, [...stderrTail], child.pid, summary);
    }
    if (outcome.kind === 'exited') {
      if (spawnError) throw new BridgeSpawnError(inv.binary, spawnError);
      const { code, signal } = outcome.result;
      throw new BridgeExitedError(code, signal, [...stderrTail], child.pid, null);
    }
    // Timeout or garbage: nothing is being served yet, so there is nothing to drain.
    child.kill('SIGKILL');
    await waitAtMost(exited, KILL_WAIT_MS);
    if (outcome.kind === 'timeout') {
      throw new BridgeReadyTimeoutError(readyTimeoutMs, child.pid, [...stderrTail]);
    }
    throw new BridgeProtocolError(outcome.line, child.pid, [...stderrTail]);
  }

  const url = typeof ready.url === 'string' ? ready.url : options.agentUrl;
  // Supplied tokens are not echoed on the ready line: use the one we put in the environment.
  const token = typeof ready.token === 'string' ? ready.token : inv.env[ENV_BRIDGE_TOKEN];
  // `unix:/path`: the agent connects to the socket and calls http://localhost/… over it.
  const socketPath = url?.startsWith(UNIX_PREFIX) ? url.slice(UNIX_PREFIX.length) : undefined;
  const agentEnv = {};
  if (socketPath !== undefined) {
    agentEnv.PAPERCLIP_API_URL = SOCKET_BASE_URL;
    agentEnv.PAPERCLIP_API_SOCKET = socketPath;
  } else if (url !== undefined) {
    agentEnv.PAPERCLIP_API_URL = url;
  }
  if (token !== undefined) agentEnv.PAPERCLIP_API_KEY = token;

  let stopping = null;
  const stop = () => {
    if (stopping) return stopping;
    stopping = (async () => {
      let killTimer;
      if (child.exitCode === null && child.signalCode === null) {
        child.kill('SIGTERM');
        killTimer = setTimeout(() => child.kill('SIGKILL'), stopTimeoutMs);
      }
      try {
        return (await exited).summary;
      } finally {
        clearTimeout(killTimer);
      }
    })();
    return stopping;
  };

  return {
    url,
    socketPath,
    token,
    env: agentEnv,
    pid: child.pid,
    ready,
    child,
    stop,
    exited,
  };
}

export default startBridge;
