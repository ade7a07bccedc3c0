// The one way "sandbox" commands are run in the interop suite and the benchmarks built on it.
//
// A runner turns a shell script into an argv: a counting shim, then the exec prefix, then the
// script. The exec prefix plays the part of `docker exec -i CONTAINER sh -c` (default
// `["sh", "-c"]`); the shim appends one byte to a count file before it execs the prefix, so every
// command is counted, whoever runs it: Paperclip's queue client (through `execute`), Paperclip's
// http2 host (through `openDuplexChannel`), and our relays (which get `relayPrefix()` after `--`
// and run their commands themselves).
//
// API
//   createRunner({ prefix = ["sh", "-c"], dir, env = {} }) -> Runner
//     prefix  argv the script is appended to. Its last word should be `-c` (our queue relay wraps
//             the script in `exec sh -c '…'` otherwise, which costs one more process).
//     dir     a directory of the caller's (the count file lives there; also the default cwd).
//     env     extra environment for every command the runner spawns itself.
//   runner.prefix              the exec prefix as given
//   runner.argv(script)        full argv for one command
//   runner.relayPrefix()       argv to put after our relay's `--` (counted the same way)
//   runner.commands()          commands started so far (all sources)
//   runner.execute(input)      Paperclip's CommandManagedRuntimeRunner.execute: { command, args,
//                              cwd, env, stdin, timeoutMs } -> { exitCode, signal, timedOut,
//                              stdout, stderr, pid, startedAt, finishedAt, durationMs }
//   runner.openDuplexChannel({ command })   Paperclip's CommandManagedDuplexChannel over one
//                              long-running command (write, onData, onExit, stop, close); the
//                              command's stderr is collected in `channel.stderr()`.
//   runner.children            live child processes (the suite kills leftovers at teardown)
//   runner.killAll()           SIGKILL every live child this runner spawned
//   delayPrefix(ms, inner = ["sh", "-c"])   a prefix that sleeps `ms` before running the script,
//                              to emulate a slow exec channel: `createRunner({ prefix:
//                              delayPrefix(50) })`.
import { spawn } from "node:child_process";
import { appendFileSync, statSync } from "node:fs";
import path from "node:path";

/** Quote one word for POSIX sh. */
export function shq(word) {
  return `'${String(word).replace(/'/g, `'"'"'`)}'`;
}

export function delayPrefix(ms, inner = ["sh", "-c"]) {
  const seconds = (ms / 1000).toFixed(3);
  return ["sh", "-c", `sleep ${seconds}; exec "$@"`, "delay", ...inner];
}

export function createRunner({ prefix = ["sh", "-c"], dir, env = {} } = {}) {
  if (!dir) throw new Error("createRunner needs a dir");
  const countFile = path.join(dir, "commands.count");
  appendFileSync(countFile, "");
  const shim = ["sh", "-c", `printf . >> ${shq(countFile)}; exec "$@"`, "runner"];
  const children = new Set();

  const argv = (script) => [...shim, ...prefix, script];

  function track(child) {
    children.add(child);
    child.once("exit", () => children.delete(child));
    return child;
  }

  /** Map Paperclip's { command, args } onto the prefix: `sh -c SCRIPT` becomes the prefix's shell. */
  function toArgv(command, args = []) {
    if ((command === "sh" || command === "bash") && args[0] === "-c" && args.length >= 2) {
      return argv(args[1]);
    }
    return argv(["exec", command, ...args].map(shq).join(" "));
  }

  function execute(input) {
    const full = toArgv(input.command, input.args);
    const startedAt = new Date();
    return new Promise((resolve) => {
      const child = track(
        spawn(full[0], full.slice(1), {
          cwd: input.cwd || dir,
          env: { ...process.env, ...env, ...(input.env || {}) },
          stdio: ["pipe", "pipe", "pipe"],
        }),
      );
      const out = [];
      const err = [];
      let timedOut = false;
      let timer;
      if (input.timeoutMs && input.timeoutMs > 0) {
        timer = setTimeout(() => {
          timedOut = true;
          child.kill("SIGKILL");
        }, input.timeoutMs);
      }
      child.stdout.on("data", (c) => {
        out.push(c);
        input.onLog?.("stdout", c.toString("utf8"));
      });
      child.stderr.on("data", (c) => {
        err.push(c);
        input.onLog?.("stderr", c.toString("utf8"));
      });
      child.stdin.on("error", () => {});
      if (input.stdin !== undefined) child.stdin.end(input.stdin);
      else child.stdin.end();
      if (input.onSpawn && child.pid) {
        void input.onSpawn({ pid: child.pid, startedAt: startedAt.toISOString() });
      }
      const finish = (exitCode, signal, errorCode = null) => {
        clearTimeout(timer);
        const finishedAt = new Date();
        resolve({
          exitCode,
          signal,
          timedOut,
          stdout: Buffer.concat(out).toString("utf8"),
          stderr: Buffer.concat(err).toString("utf8"),
          pid: child.pid ?? null,
          startedAt: startedAt.toISOString(),
          finishedAt: finishedAt.toISOString(),
          durationMs: finishedAt - startedAt,
          errorCode,
        });
      };
      child.once("error", (e) => finish(null, null, e.code || "spawn_error"));
      child.once("close", (code, signal) => finish(code, signal));
    });
  }

  async function openDuplexChannel({ command }) {
    const full = toArgv(command[0], command.slice(1));
    const child = track(
      spawn(full[0], full.slice(1), {
        cwd: dir,
        env: { ...process.env, ...env },
        stdio: ["pipe", "pipe", "pipe"],
      }),
    );
    const errChunks = [];
    child.stderr.on("data", (c) => errChunks.push(c));
    child.stdin.on("error", () => {});
    let exitListener = null;
    let exitInfo = null;
    child.once("exit", (code) => {
      exitInfo = { exitCode: code };
      exitListener?.(exitInfo);
    });
    return {
      pid: child.pid,
      child,
      stderr: () => Buffer.concat(errChunks).toString("utf8"),
      write(data) {
        if (!child.stdin.destroyed) child.stdin.write(Buffer.from(data));
      },
      onData(listener) {
        child.stdout.on("data", (c) => listener(new Uint8Array(c.buffer, c.byteOffset, c.byteLength)));
      },
      onExit(listener) {
        exitListener = listener;
        if (exitInfo) listener(exitInfo);
      },
      stop() {
        if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      },
      async close() {
        child.stdin.end();
        if (child.exitCode !== null || child.signalCode !== null) return;
        await new Promise((resolve) => {
          const t = setTimeout(() => {
            child.kill("SIGKILL");
            resolve();
          }, 2000);
          child.once("exit", () => {
            clearTimeout(t);
            resolve();
          });
        });
      },
    };
  }

  return {
    prefix,
    dir,
    countFile,
    children,
    argv,
    relayPrefix: () => [...shim, ...prefix],
    commands: () => statSync(countFile).size,
    execute,
    openDuplexChannel,
    killAll() {
      for (const c of children) c.kill("SIGKILL");
    },
  };
}
