//! Spawning the binary under test.
//!
//! * [`bridge_binary`] / [`bridge_command`]: the binary (`BRIDGE_TEST_BIN` when set) with a
//!   scrubbed environment.
//! * [`Proc`]: any spawned process, killed on drop. Its stdout and stderr are read by threads
//!   into line buffers, so a test waits for a line (the readiness line, the exit line, a log
//!   message) with a bound instead of sleeping. Its stderr is printed if the test panics.
//! * [`Bridge`]: `callback-bridge serve`, ready when its first stdout line says so.
//! * [`run_bridge`]: a one-shot run (`check`, `explain`, a refused start) bounded in time.

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::client::{endpoint_of_url, Agent, Endpoint, Req, Response};
use super::upstream::MockUpstream;
use super::{BRIDGE_TOKEN, RUN_ID, UPSTREAM_TOKEN, WAIT};

/// The binary under test: the one cargo built for this test run, or `BRIDGE_TEST_BIN` when set
/// (CI points it at the static release build, `scripts/build-static.sh`, to test what ships).
pub fn bridge_binary() -> std::path::PathBuf {
    std::env::var_os("BRIDGE_TEST_BIN")
        .map_or_else(|| env!("CARGO_BIN_EXE_callback-bridge").into(), Into::into)
}

/// [`bridge_binary`] as a string, for command lines built by tests (`sh -c`, exec prefixes).
pub fn bridge_binary_str() -> String {
    bridge_binary().to_string_lossy().into_owned()
}

/// A `Command` for the binary under test with a clean environment: every `CALLBACK_BRIDGE_*` and
/// `PAPERCLIP_*` variable of the outer environment (and `RUST_LOG`, so the log level is the one
/// the test chooses, and `HOST` / `PORT`) is removed, then `env` is applied.
pub fn bridge_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(bridge_binary());
    cmd.args(args);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        // `HOST` and `PORT` too: host-side roles derive a default upstream from them.
        if k.starts_with("CALLBACK_BRIDGE_")
            || k.starts_with("PAPERCLIP_")
            || ["RUST_LOG", "HOST", "PORT"].contains(&k.as_ref())
        {
            cmd.env_remove(&key);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// A `Command` for the binary under test with an empty environment but `PATH`, then `env`: what
/// a process started inside a bare sandbox sees.
pub fn bridge_command_bare(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(bridge_binary());
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Sends a signal with the `kill` utility (no libc, no unsafe code in the tests).
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// Pids of the live (not zombie) children of `parent`, from `/proc/*/stat`.
pub fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Fields after the parenthesised command name: state, ppid, …
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        let ppid: u32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == parent && state != "Z" {
            out.push(pid);
        }
    }
    out
}

/// Reads `/proc/<pid>/<file>` (environ, cmdline) as NUL-separated strings.
pub fn proc_strings(pid: u32, file: &str) -> Vec<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/{file}")).unwrap_or_default();
    bytes
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Output capture
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct OutputState {
    bytes: Vec<u8>,
    /// Complete lines so far (without the line end).
    lines: Vec<String>,
    /// Bytes after the last line end.
    partial: Vec<u8>,
    /// The stream reached end of file.
    closed: bool,
}

/// One output stream of a process, read by a thread; tests wait on it with a condition variable.
#[derive(Default)]
struct Output {
    state: Mutex<OutputState>,
    changed: Condvar,
}

impl Output {
    fn pump(self: Arc<Self>, mut from: impl std::io::Read + Send + 'static) -> JoinHandle<()> {
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let mut st = self.state.lock().unwrap();
                        st.bytes.extend_from_slice(&buf[..n]);
                        for &b in &buf[..n] {
                            if b == b'\n' {
                                let line = std::mem::take(&mut st.partial);
                                let line = String::from_utf8_lossy(&line)
                                    .trim_end_matches('\r')
                                    .to_string();
                                st.lines.push(line);
                            } else {
                                st.partial.push(b);
                            }
                        }
                        drop(st);
                        self.changed.notify_all();
                    }
                }
            }
            let mut st = self.state.lock().unwrap();
            if !st.partial.is_empty() {
                let line = String::from_utf8_lossy(&std::mem::take(&mut st.partial)).into_owned();
                st.lines.push(line);
            }
            st.closed = true;
            drop(st);
            self.changed.notify_all();
        })
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.state.lock().unwrap().bytes).into_owned()
    }

    fn lines(&self) -> Vec<String> {
        self.state.lock().unwrap().lines.clone()
    }

    /// Waits until `f` returns `Some` for the state, or the stream closed / time ran out (`None`,
    /// after one last look).
    fn wait<T>(
        &self,
        timeout: Duration,
        mut f: impl FnMut(&OutputState) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        let mut guard = self.state.lock().unwrap();
        loop {
            if let Some(v) = f(&guard) {
                return Some(v);
            }
            let now = Instant::now();
            if guard.closed || now >= deadline {
                return None;
            }
            guard = self.changed.wait_timeout(guard, deadline - now).unwrap().0;
        }
    }

    fn wait_closed(&self, timeout: Duration) -> bool {
        self.wait(timeout, |s| s.closed.then_some(())).is_some()
    }
}

/// The JSON object of a log or event line, if it is one.
fn json_line(line: &str) -> Option<Value> {
    serde_json::from_str::<Value>(line)
        .ok()
        .filter(Value::is_object)
}

// ---------------------------------------------------------------------------------------------
// Proc
// ---------------------------------------------------------------------------------------------

/// A spawned process: stdin piped (closed by [`Proc::close_stdin`]), stdout and stderr captured
/// line by line. Killed (and reaped) when dropped; if the test is panicking, its stderr is
/// printed first, labelled.
pub struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    /// `None` when the test took stdout ([`Proc::spawn_raw_stdout`]).
    stdout: Option<Arc<Output>>,
    /// Index of the next stdout line [`Proc::next_line`] returns.
    stdout_cursor: usize,
    stderr: Arc<Output>,
    /// Index of the next stderr line [`Proc::wait_stderr_event`] looks at.
    stderr_cursor: usize,
    label: String,
}

impl Proc {
    /// Spawns `cmd` with stdin, stdout and stderr piped.
    pub fn spawn(cmd: Command, label: &str) -> Proc {
        Self::spawn_inner(cmd, label, true).0
    }

    /// Spawns `cmd` and hands its stdout to the test (for a process whose stdout is a protocol
    /// channel, such as the stdio gateway): readiness then comes from stderr
    /// ([`Proc::wait_stderr_event`]).
    pub fn spawn_raw_stdout(cmd: Command, label: &str) -> (Proc, ChildStdout) {
        let (proc, out) = Self::spawn_inner(cmd, label, false);
        (proc, out.expect("stdout piped"))
    }

    fn spawn_inner(
        mut cmd: Command,
        label: &str,
        pump_stdout: bool,
    ) -> (Proc, Option<ChildStdout>) {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {label} ({:?}): {e}", cmd.get_program()));
        let stdin = child.stdin.take();
        let stdout_pipe = child.stdout.take().expect("stdout piped");
        let stderr = Arc::new(Output::default());
        Arc::clone(&stderr).pump(child.stderr.take().expect("stderr piped"));
        let (stdout, raw) = if pump_stdout {
            let out = Arc::new(Output::default());
            Arc::clone(&out).pump(stdout_pipe);
            (Some(out), None)
        } else {
            (None, Some(stdout_pipe))
        };
        let proc = Proc {
            child,
            stdin,
            stdout,
            stdout_cursor: 0,
            stderr,
            stderr_cursor: 0,
            label: label.to_string(),
        };
        (proc, raw)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's stdin (until [`Proc::close_stdin`]).
    pub fn stdin(&mut self) -> &mut ChildStdin {
        self.stdin.as_mut().expect("stdin still open")
    }

    /// Takes the stdin pipe (the test then owns its end of file).
    pub fn take_stdin(&mut self) -> ChildStdin {
        self.stdin.take().expect("stdin still open")
    }

    /// Closes stdin (the `--lifeline stdin` end of file).
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    fn out(&self) -> &Output {
        self.stdout
            .as_deref()
            .unwrap_or_else(|| panic!("{}: stdout was handed to the test", self.label))
    }

    /// The next stdout line, waiting at most `timeout`; `None` at end of stdout. Panics (showing
    /// stderr) on timeout.
    pub fn next_line(&mut self, timeout: Duration) -> Option<String> {
        let at = self.stdout_cursor;
        let got = self.out().wait(timeout, |s| s.lines.get(at).cloned());
        match got {
            Some(line) => {
                self.stdout_cursor += 1;
                Some(line)
            }
            None if self.out().wait_closed(Duration::ZERO) => None,
            None => panic!(
                "{}: no stdout line within {timeout:?}; stdout so far {:?}; stderr:\n{}",
                self.label,
                self.stdout_lines(),
                self.stderr_text()
            ),
        }
    }

    /// The next stdout line as JSON, waiting at most [`WAIT`]; `None` at end of stdout. Panics
    /// if the line is not JSON.
    pub fn next_json(&mut self) -> Option<Value> {
        let line = self.next_line(WAIT)?;
        Some(
            serde_json::from_str(&line)
                .unwrap_or_else(|_| panic!("{}: stdout line is not JSON: {line:?}", self.label)),
        )
    }

    /// Reads stdout lines until a JSON object whose `event` is `event` (other lines are skipped)
    /// and returns it; panics (showing stdout and stderr) after `timeout` or at end of stdout.
    pub fn wait_event_within(&mut self, event: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let at = self.stdout_cursor;
            let found = self.out().wait(left, |s| s.lines.get(at).cloned());
            match found {
                Some(line) => {
                    self.stdout_cursor += 1;
                    if let Some(v) = json_line(&line) {
                        if v["event"] == event {
                            return v;
                        }
                    }
                }
                None => panic!(
                    "{}: no {event:?} line on stdout within {timeout:?}; stdout so far {:?}; \
                     stderr:\n{}",
                    self.label,
                    self.stdout_lines(),
                    self.stderr_text()
                ),
            }
        }
    }

    /// [`Proc::wait_event_within`] bounded by [`WAIT`].
    pub fn wait_event(&mut self, event: &str) -> Value {
        self.wait_event_within(event, WAIT)
    }

    /// The readiness line, which must be the first stdout line: `{"event":"ready",…}`.
    pub fn wait_ready(&mut self) -> Value {
        let first = match self.next_line(WAIT) {
            Some(line) => line,
            None => {
                // The process ended: make sure its stderr was fully captured for the message.
                self.stderr.wait_closed(Duration::from_secs(2));
                panic!(
                    "{} printed no readiness line (stdout closed); stderr:\n{}",
                    self.label,
                    self.stderr_text()
                );
            }
        };
        let ready: Value = serde_json::from_str(&first).unwrap_or_else(|e| {
            panic!(
                "{}: first stdout line is not JSON ({e}): {first:?}",
                self.label
            )
        });
        assert_eq!(
            ready["event"], "ready",
            "{}: first stdout line must be the readiness line, got {first}",
            self.label
        );
        ready
    }

    /// Reads stdout until the exit-summary line `{"event":"exit",…}` and returns it.
    pub fn wait_exit_line(&mut self, timeout: Duration) -> Value {
        self.wait_event_within("exit", timeout)
    }

    /// Waits for a JSON line on stderr whose `event` is `event` (the stdio gateway prints its
    /// readiness and exit lines there, since its stdout is the HTTP/2 channel).
    pub fn wait_stderr_event(&mut self, event: &str) -> Value {
        let from = self.stderr_cursor;
        let found = self.stderr.wait(WAIT, |s| {
            s.lines
                .iter()
                .enumerate()
                .skip(from)
                .find_map(|(i, l)| json_line(l).filter(|v| v["event"] == event).map(|v| (i, v)))
        });
        match found {
            Some((i, v)) => {
                self.stderr_cursor = i + 1;
                v
            }
            None => panic!(
                "{}: no {event:?} line on stderr within {WAIT:?}; stderr:\n{}",
                self.label,
                self.stderr_text()
            ),
        }
    }

    /// Every stdout line received so far.
    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.as_ref().map(|o| o.lines()).unwrap_or_default()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.text()
    }

    /// Stderr so far, line by line.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.lines()
    }

    /// Waits until stderr contains `needle`; panics (showing stderr) after `timeout`.
    pub fn wait_stderr_contains(&self, needle: &str, timeout: Duration) {
        let found = self.stderr.wait(timeout, |s| {
            String::from_utf8_lossy(&s.bytes)
                .contains(needle)
                .then_some(())
        });
        if found.is_none() {
            panic!(
                "{}: stderr never contained {needle:?}; stderr:\n{}",
                self.label,
                self.stderr_text()
            );
        }
    }

    /// Sends a signal (`TERM`, `INT`, `KILL`, …).
    pub fn signal(&self, name: &str) {
        signal(self.pid(), name);
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Waits for the process to end and returns its exit status, having read its stdout and
    /// stderr to their end (bounded: a grandchild holding a pipe open does not hang the test).
    /// Panics after `timeout`.
    pub fn wait_exit_status(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        // Stdout closing is the event: the process is exiting.
        if let Some(out) = &self.stdout {
            out.wait_closed(timeout);
        }
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} did not exit within {timeout:?}; stderr:\n{}",
                    self.label,
                    self.stderr_text()
                );
            }
            // Bounded poll for the status of a process that is already ending.
            std::thread::sleep(Duration::from_millis(5));
        };
        self.stderr
            .wait_closed(deadline.saturating_duration_since(Instant::now()));
        status
    }

    /// [`Proc::wait_exit_status`] bounded by [`WAIT`].
    pub fn wait_exit(&mut self) -> ExitStatus {
        self.wait_exit_status(WAIT)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            self.stderr.wait_closed(Duration::from_secs(1));
            eprintln!("--- stderr of {} ---\n{}", self.label, self.stderr_text());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// serve
// ---------------------------------------------------------------------------------------------

/// A running `callback-bridge serve`, killed on drop. Derefs to its [`Proc`].
pub struct Bridge {
    proc: Proc,
    /// The parsed readiness line.
    pub ready: Value,
    /// `url` from the readiness line.
    pub url: String,
    /// TCP address to connect to (the `url`'s, with an unspecified host replaced by 127.0.0.1).
    /// For a bridge on a Unix socket it is `127.0.0.1:0`, where nothing can connect: use
    /// `endpoint`.
    pub addr: SocketAddr,
    /// Where the agent connects, TCP or Unix socket (from the `url`).
    pub endpoint: Endpoint,
    /// The bridge token: from the readiness line when generated, else from the environment.
    pub token: String,
}

impl Deref for Bridge {
    type Target = Proc;
    fn deref(&self) -> &Proc {
        &self.proc
    }
}

impl DerefMut for Bridge {
    fn deref_mut(&mut self) -> &mut Proc {
        &mut self.proc
    }
}

impl Bridge {
    /// Runs `callback-bridge serve ARGS` with the environment `env` (see [`bridge_command`]) and
    /// waits for the readiness line, which must be the first line on stdout.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Bridge {
        let mut full = vec!["serve"];
        full.extend_from_slice(args);
        let mut proc = Proc::spawn(bridge_command(&full, env), "serve");
        let ready = proc.wait_ready();
        let url = ready["url"]
            .as_str()
            .unwrap_or_else(|| panic!("readiness line without url: {ready}"))
            .to_string();
        let token = match ready.get("token").and_then(Value::as_str) {
            Some(t) => t.to_string(),
            None => env
                .iter()
                .find(|(k, _)| *k == "CALLBACK_BRIDGE_TOKEN")
                .map(|(_, v)| v.to_string())
                .unwrap_or_default(),
        };
        let endpoint = endpoint_of_url(&url);
        Bridge {
            proc,
            addr: match endpoint {
                Endpoint::Tcp(addr) => addr,
                Endpoint::Unix(_) => SocketAddr::from(([127, 0, 0, 1], 0)),
            },
            endpoint,
            url,
            token,
            ready,
        }
    }

    /// Spawns a bridge forwarding to `upstream` with the standard secrets in its environment:
    /// bridge token [`BRIDGE_TOKEN`], upstream credential [`UPSTREAM_TOKEN`], run id [`RUN_ID`].
    pub fn for_upstream(upstream: &MockUpstream, extra_args: &[&str]) -> Bridge {
        Self::for_upstream_env(upstream, extra_args, &[])
    }

    /// Like [`Bridge::for_upstream`] with additional environment variables.
    pub fn for_upstream_env(
        upstream: &MockUpstream,
        extra_args: &[&str],
        extra_env: &[(&str, &str)],
    ) -> Bridge {
        let url = upstream.url();
        let mut args = vec!["--upstream", url.as_str()];
        args.extend_from_slice(extra_args);
        let mut env = vec![
            ("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN),
            ("CALLBACK_BRIDGE_UPSTREAM_TOKEN", UPSTREAM_TOKEN),
            ("PAPERCLIP_RUN_ID", RUN_ID),
        ];
        env.extend_from_slice(extra_env);
        Bridge::spawn(&args, &env)
    }

    /// The agent-facing endpoint (address and token).
    pub fn agent(&self) -> Agent {
        Agent {
            addr: self.endpoint,
            token: self.token.clone(),
        }
    }

    /// Sends `req` with this bridge's token unless the request already carries `authorization`.
    pub fn send(&self, req: Req) -> Response {
        self.agent().send(req)
    }

    /// `GET path` with the bridge token.
    pub fn get(&self, target: &str) -> Response {
        self.send(Req::new("GET", target))
    }
}

// ---------------------------------------------------------------------------------------------
// One-shot runs
// ---------------------------------------------------------------------------------------------

/// The outcome of a one-shot run of the binary (`check`, `explain`, a refused `serve`).
#[derive(Debug)]
pub struct RunOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `cmd` to completion with stdin closed, bounded by `timeout`: a process still running
/// then is killed and the test fails.
pub fn run_command(mut cmd: Command, timeout: Duration) -> RunOutput {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("{:?}", cmd);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let out = Arc::new(Output::default());
    let err = Arc::new(Output::default());
    Arc::clone(&out).pump(child.stdout.take().unwrap());
    Arc::clone(&err).pump(child.stderr.take().unwrap());
    let deadline = Instant::now() + timeout;
    // Stdout closing is the event; then a bounded poll for the status.
    out.wait_closed(timeout);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} still running after {timeout:?}; stdout:\n{}\nstderr:\n{}",
                out.text(),
                err.text()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    out.wait_closed(Duration::from_secs(5));
    err.wait_closed(Duration::from_secs(5));
    RunOutput {
        status,
        stdout: out.text(),
        stderr: err.text(),
    }
}

/// Runs the binary with `args` (the subcommand included) and `env` (see [`bridge_command`]) to
/// completion, bounded by `timeout`.
pub fn run_bridge(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> RunOutput {
    run_command(bridge_command(args, env), timeout)
}
