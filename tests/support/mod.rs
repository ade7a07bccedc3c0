//! Shared helpers for the black-box tests of `callback-bridge serve`.
//!
//! * [`Bridge`] spawns the real binary, waits for its readiness line, captures stderr and keeps
//!   reading stdout so that the exit-summary line can be awaited.
//! * [`MockUpstream`] is a small hyper HTTP/1.1 server on an ephemeral port that records every
//!   request it receives (method, raw target, headers, body) and answers per a [`Behaviour`].
//! * [`RawConn`], [`raw_request`] and [`Req`] speak HTTP/1.1 over a plain `TcpStream`, writing
//!   exactly the bytes a test gives them, so that malformed requests can be sent.
//!
//! Everything here is synchronous from the test's point of view; the mock upstream runs its own
//! single-threaded tokio runtime on a background thread. Every wait is bounded by [`WAIT`] so a
//! broken bridge makes a test fail, never hang.
#![allow(dead_code)]

/// Helpers for the adversarial suite (`tests/attack_*.rs`).
pub mod attack;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::pin::Pin;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use serde_json::Value;

/// Upper bound for every wait in the suite: generous, so that a slow machine does not fail a
/// test, but finite, so that a broken bridge does not hang the suite.
pub const WAIT: Duration = Duration::from_secs(15);

/// The bridge token the tests supply through `CALLBACK_BRIDGE_TOKEN` when they need a known one.
pub const BRIDGE_TOKEN: &str = "bridge-token-Zq8wK2mN5pR7tV9x";
/// The real upstream credential (`CALLBACK_BRIDGE_UPSTREAM_TOKEN`).
pub const UPSTREAM_TOKEN: &str = "upstream-credential-Hf3Jk6Lm9Np2Qr5S";
/// The run id (`PAPERCLIP_RUN_ID`).
pub const RUN_ID: &str = "run-0193f2c4-7a1e-7b55-9d3c-5e8f0a1b2c3d";

// ---------------------------------------------------------------------------------------------
// Spawning the binary
// ---------------------------------------------------------------------------------------------

/// The binary under test: the one cargo built for this test run, or `BRIDGE_TEST_BIN` when set
/// (CI points it at the static release build, `scripts/build-static.sh`, to test what ships).
pub fn bridge_binary() -> std::path::PathBuf {
    std::env::var_os("BRIDGE_TEST_BIN")
        .map_or_else(|| env!("CARGO_BIN_EXE_callback-bridge").into(), Into::into)
}

/// A `Command` for the binary under test with a clean environment: every `CALLBACK_BRIDGE_*` and
/// `PAPERCLIP_*` variable of the outer environment (and `RUST_LOG`, so the log level is the one
/// the test chooses) is removed, then `env` is applied.
pub fn bridge_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(bridge_binary());
    cmd.args(args);
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if k.starts_with("CALLBACK_BRIDGE_") || k.starts_with("PAPERCLIP_") || k == "RUST_LOG" {
            cmd.env_remove(&key);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Text shared between a reader thread and the test, with a condition variable so the test can
/// wait for a substring without sleeping.
#[derive(Default)]
struct SharedText {
    bytes: Mutex<(Vec<u8>, bool)>,
    changed: Condvar,
}

impl SharedText {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes.lock().unwrap().0).into_owned()
    }

    fn pump(self: Arc<Self>, mut from: impl Read + Send + 'static) -> JoinHandle<()> {
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            loop {
                match from.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        self.bytes.lock().unwrap().0.extend_from_slice(&buf[..n]);
                        self.changed.notify_all();
                    }
                }
            }
            self.bytes.lock().unwrap().1 = true;
            self.changed.notify_all();
        })
    }

    /// Waits until the text contains `needle` (true) or the stream ended / time ran out (false).
    fn wait_contains(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = self.bytes.lock().unwrap();
        loop {
            if String::from_utf8_lossy(&guard.0).contains(needle) {
                return true;
            }
            let now = Instant::now();
            if guard.1 || now >= deadline {
                return false;
            }
            guard = self.changed.wait_timeout(guard, deadline - now).unwrap().0;
        }
    }

    /// Waits until the stream reached end of file (true) or time ran out (false).
    fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = self.bytes.lock().unwrap();
        while !guard.1 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            guard = self.changed.wait_timeout(guard, deadline - now).unwrap().0;
        }
        true
    }
}

/// A running `callback-bridge serve`, killed on drop.
pub struct Bridge {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout_lines: Receiver<String>,
    /// Every stdout line read so far, in order (the readiness line first).
    seen_stdout: Vec<String>,
    stderr: Arc<SharedText>,
    /// The parsed readiness line.
    pub ready: Value,
    /// `url` from the readiness line.
    pub url: String,
    /// Address to connect to (the `url`'s, with an unspecified host replaced by 127.0.0.1).
    pub addr: SocketAddr,
    /// The bridge token: from the readiness line when generated, else from the environment.
    pub token: String,
}

impl Bridge {
    /// Runs `callback-bridge serve ARGS` with the environment `env` (see [`bridge_command`]) and
    /// waits for the readiness line, which must be the first line on stdout.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> Bridge {
        let mut full = vec!["serve"];
        full.extend_from_slice(args);
        let mut cmd = bridge_command(&full, env);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn callback-bridge");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout piped");
        let stderr_pipe = child.stderr.take().expect("stderr piped");

        let stderr = Arc::new(SharedText::default());
        Arc::clone(&stderr).pump(stderr_pipe);

        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if tx
                            .send(line.trim_end_matches(['\r', '\n']).to_string())
                            .is_err()
                        {
                            break;
                        }
                    }
                }
            }
        });

        let mut bridge = Bridge {
            child,
            stdin,
            stdout_lines: rx,
            seen_stdout: Vec::new(),
            stderr,
            ready: Value::Null,
            url: String::new(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            token: String::new(),
        };

        let first = match bridge.stdout_lines.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(e) => {
                // Give stderr a moment to be fully captured if the process already exited.
                bridge.stderr.wait_closed(Duration::from_secs(2));
                panic!(
                    "bridge printed no readiness line ({e:?}); args {args:?}; stderr:\n{}",
                    bridge.stderr_text()
                );
            }
        };
        bridge.seen_stdout.push(first.clone());
        let ready: Value = serde_json::from_str(&first)
            .unwrap_or_else(|e| panic!("first stdout line is not JSON ({e}): {first:?}"));
        assert_eq!(
            ready["event"], "ready",
            "first stdout line must be the readiness line, got {first}"
        );
        let url = ready["url"]
            .as_str()
            .unwrap_or_else(|| panic!("readiness line without url: {first}"))
            .to_string();
        bridge.addr = addr_of_url(&url);
        bridge.url = url;
        bridge.token = match ready.get("token").and_then(Value::as_str) {
            Some(t) => t.to_string(),
            None => env
                .iter()
                .find(|(k, _)| *k == "CALLBACK_BRIDGE_TOKEN")
                .map(|(_, v)| v.to_string())
                .unwrap_or_default(),
        };
        bridge.ready = ready;
        bridge
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

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the bridge wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.text()
    }

    /// Waits until stderr contains `needle`; panics (showing stderr) after `timeout`.
    pub fn wait_stderr_contains(&self, needle: &str, timeout: Duration) {
        if !self.stderr.wait_contains(needle, timeout) {
            panic!(
                "stderr never contained {needle:?}; stderr:\n{}",
                self.stderr_text()
            );
        }
    }

    /// Stdout lines read so far (the readiness line first).
    pub fn stdout_lines(&self) -> &[String] {
        &self.seen_stdout
    }

    /// Sends a signal with the `kill` utility (no libc dependency in the tests).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Closes the bridge's stdin (the `--lifeline stdin` end of file).
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    /// Reads stdout until the exit-summary line `{"event":"exit",…}` and returns it parsed.
    pub fn wait_exit_line(&mut self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout_lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen_stdout.push(line.clone());
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        if v["event"] == "exit" {
                            return v;
                        }
                    }
                }
                Err(e) => panic!(
                    "no exit line on stdout ({e:?}); stdout so far {:?}; stderr:\n{}",
                    self.seen_stdout,
                    self.stderr_text()
                ),
            }
        }
    }

    /// Waits for the process to end (after its stdout and stderr reached end of file) and
    /// returns its exit status. Panics after `timeout`.
    pub fn wait_exit_status(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout_lines.recv_timeout(left) {
                Ok(line) => self.seen_stdout.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!(
                    "bridge did not close stdout within {timeout:?}; stderr:\n{}",
                    self.stderr_text()
                ),
            }
        }
        self.stderr
            .wait_closed(deadline.saturating_duration_since(Instant::now()));
        // Stdout is closed: the process is exiting. Bounded poll for its status.
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                panic!("bridge closed stdout but did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends `req` with this bridge's token unless the request already carries `authorization`.
    pub fn send(&self, req: Req) -> Response {
        let req = if req.has_header("authorization") {
            req
        } else {
            req.bearer(&self.token)
        };
        req.send(self.addr)
    }

    /// `GET path` with the bridge token.
    pub fn get(&self, target: &str) -> Response {
        self.send(Req::new("GET", target))
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Parses `http://HOST:PORT` into a connectable address (an unspecified host becomes loopback).
pub fn addr_of_url(url: &str) -> SocketAddr {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("url is not http://: {url}"));
    let authority = rest.split('/').next().unwrap();
    let mut addr = authority
        .to_socket_addrs()
        .unwrap_or_else(|e| panic!("bad url authority {authority:?}: {e}"))
        .next()
        .unwrap();
    if addr.ip().is_unspecified() {
        addr.set_ip([127, 0, 0, 1].into());
    }
    addr
}

/// The outcome of a one-shot run of the binary (`check`, `explain`, a refused `serve`).
#[derive(Debug)]
pub struct RunOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the binary with `args` (the subcommand included) to completion, bounded by `timeout`:
/// a process still running then is killed and the test fails.
pub fn run_bridge(args: &[&str], env: &[(&str, &str)], timeout: Duration) -> RunOutput {
    let mut cmd = bridge_command(args, env);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn callback-bridge");
    let out = Arc::new(SharedText::default());
    let err = Arc::new(SharedText::default());
    Arc::clone(&out).pump(child.stdout.take().unwrap());
    Arc::clone(&err).pump(child.stderr.take().unwrap());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`callback-bridge {}` still running after {timeout:?}; stdout:\n{}\nstderr:\n{}",
                args.join(" "),
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

/// A loopback port with nothing listening on it (bound, then released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// `n` bytes from the OS CSPRNG.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    getrandom::fill(&mut v).expect("getrandom");
    v
}

// ---------------------------------------------------------------------------------------------
// Mock upstream
// ---------------------------------------------------------------------------------------------

/// How the mock upstream answers.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// 200 `{"ok":true}` as `application/json`, with `set-cookie` and `x-internal` headers that
    /// the bridge must drop.
    Ok,
    /// 200 with the request body, under the request's `content-type`.
    Echo,
    /// A fixed response. `chunked` streams the body in 8 KiB chunks with no `content-length`.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
        chunked: bool,
    },
    /// Waits this long before sending the [`Behaviour::Ok`] response head.
    Delay(Duration),
    /// Reads the request and never answers (until the mock is dropped).
    Hang,
    /// Reads the request, then closes the connection without answering.
    Close,
}

impl Behaviour {
    pub fn respond(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Behaviour {
        Behaviour::Respond {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.into(),
            chunked: false,
        }
    }

    pub fn respond_chunked(
        status: u16,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Behaviour {
        match Behaviour::respond(status, headers, body) {
            Behaviour::Respond {
                status,
                headers,
                body,
                ..
            } => Behaviour::Respond {
                status,
                headers,
                body,
                chunked: true,
            },
            _ => unreachable!(),
        }
    }
}

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Request target exactly as received (path and query for origin-form).
    pub target: String,
    /// Header names lower-case, in the order hyper reports them, duplicates kept.
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    /// Whether the body was received completely.
    pub body_complete: bool,
    /// Whether the sender aborted the body (connection closed or reset mid-body).
    pub body_aborted: bool,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    pub fn header_names(&self) -> Vec<String> {
        self.headers.iter().map(|(k, _)| k.clone()).collect()
    }
}

struct UpstreamState {
    requests: Mutex<Vec<Recorded>>,
    changed: Condvar,
    behaviour: Mutex<Behaviour>,
}

/// A recording HTTP/1.1 server on 127.0.0.1 with its own tokio runtime thread.
pub struct MockUpstream {
    addr: SocketAddr,
    state: Arc<UpstreamState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MockUpstream {
    /// Starts an upstream answering with [`Behaviour::Ok`].
    pub fn start() -> MockUpstream {
        Self::start_with(Behaviour::Ok)
    }

    pub fn start_with(behaviour: Behaviour) -> MockUpstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind mock upstream");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(UpstreamState {
            requests: Mutex::new(Vec::new()),
            changed: Condvar::new(),
            behaviour: Mutex::new(behaviour),
        });
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let st = Arc::clone(&state);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("mock upstream runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let accept = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let st = Arc::clone(&st);
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |req| {
                                handle_upstream(Arc::clone(&st), req)
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await;
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stop_rx => {}
                }
            });
            // Dropping the runtime cancels connections still hanging.
        });
        MockUpstream {
            addr,
            state,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `host:port`, what the bridge must send as `host`.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }

    pub fn set_behaviour(&self, behaviour: Behaviour) {
        *self.state.behaviour.lock().unwrap() = behaviour;
    }

    /// Every request received so far (a request appears as soon as its head arrived; its body is
    /// filled in as it is read).
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// Waits until at least `n` requests have arrived; panics after [`WAIT`].
    pub fn wait_for_requests(&self, n: usize) -> Vec<Recorded> {
        let deadline = Instant::now() + WAIT;
        let mut guard = self.state.requests.lock().unwrap();
        while guard.len() < n {
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "upstream received {} requests, expected at least {n}",
                    guard.len()
                );
            }
            guard = self
                .state
                .changed
                .wait_timeout(guard, deadline - now)
                .unwrap()
                .0;
        }
        guard.clone()
    }

    /// Waits until the body of request number `index` was completely received or aborted by
    /// the sender; panics after [`WAIT`] (a body left hanging is a failure too).
    pub fn wait_for_body_end(&self, index: usize) -> Recorded {
        let deadline = Instant::now() + WAIT;
        let mut guard = self.state.requests.lock().unwrap();
        loop {
            if let Some(r) = guard.get(index) {
                if r.body_complete || r.body_aborted {
                    return r.clone();
                }
            }
            let now = Instant::now();
            if now >= deadline {
                panic!("upstream request {index} body neither completed nor was aborted");
            }
            guard = self
                .state
                .changed
                .wait_timeout(guard, deadline - now)
                .unwrap()
                .0;
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The mock's error type when it decides to drop the connection instead of answering.
#[derive(Debug)]
struct CloseConnection;

impl std::fmt::Display for CloseConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("mock upstream closes the connection")
    }
}

impl std::error::Error for CloseConnection {}

async fn handle_upstream(
    state: Arc<UpstreamState>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<MockBody>, CloseConnection> {
    let (parts, mut body) = req.into_parts();
    let index = {
        let mut list = state.requests.lock().unwrap();
        list.push(Recorded {
            method: parts.method.to_string(),
            target: parts.uri.to_string(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: Vec::new(),
            body_complete: false,
            body_aborted: false,
        });
        list.len() - 1
    };
    state.changed.notify_all();

    let mut received = Vec::new();
    loop {
        match body.frame().await {
            None => break,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    received.extend_from_slice(&data);
                    state.requests.lock().unwrap()[index].body = received.clone();
                }
            }
            Some(Err(_)) => {
                // The sender aborted the body: keep what arrived, marked incomplete.
                state.requests.lock().unwrap()[index].body_aborted = true;
                state.changed.notify_all();
                return Err(CloseConnection);
            }
        }
    }
    state.requests.lock().unwrap()[index].body_complete = true;
    state.changed.notify_all();

    let behaviour = state.behaviour.lock().unwrap().clone();
    match behaviour {
        Behaviour::Ok => Ok(ok_response()),
        Behaviour::Delay(d) => {
            tokio::time::sleep(d).await;
            Ok(ok_response())
        }
        Behaviour::Echo => {
            let mut resp = hyper::Response::new(MockBody::full(received));
            if let Some(ct) = parts.headers.get("content-type") {
                resp.headers_mut().insert("content-type", ct.clone());
            }
            Ok(resp)
        }
        Behaviour::Respond {
            status,
            headers,
            body,
            chunked,
        } => {
            let body = if chunked {
                MockBody::chunked(body)
            } else {
                MockBody::full(body)
            };
            let mut resp = hyper::Response::new(body);
            *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
            for (k, v) in headers {
                resp.headers_mut().append(
                    hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                    hyper::header::HeaderValue::from_str(&v).unwrap(),
                );
            }
            Ok(resp)
        }
        Behaviour::Hang => std::future::pending().await,
        Behaviour::Close => Err(CloseConnection),
    }
}

fn ok_response() -> hyper::Response<MockBody> {
    hyper::Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("set-cookie", "session=upstream-session-cookie; HttpOnly")
        .header("x-internal", "internal-upstream-detail")
        .body(MockBody::full(&b"{\"ok\":true}"[..]))
        .unwrap()
}

/// Response body of the mock: either one buffer with a known length (`content-length`) or a
/// sequence of chunks with no declared length (chunked transfer coding).
pub struct MockBody {
    chunks: VecDeque<Bytes>,
    exact: Option<u64>,
}

impl MockBody {
    fn full(data: impl Into<Bytes>) -> MockBody {
        let data = data.into();
        MockBody {
            exact: Some(data.len() as u64),
            chunks: if data.is_empty() {
                VecDeque::new()
            } else {
                VecDeque::from([data])
            },
        }
    }

    fn chunked(data: Bytes) -> MockBody {
        let mut chunks = VecDeque::new();
        let mut rest = data;
        while !rest.is_empty() {
            let n = rest.len().min(8192);
            chunks.push_back(rest.split_to(n));
        }
        MockBody {
            chunks,
            exact: None,
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.chunks.pop_front().map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        match self.exact {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP/1.1 client
// ---------------------------------------------------------------------------------------------

/// A response as read off the wire.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// Header names lower-case, in wire order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// Asserts a response the bridge built itself (SPEC §4.1): the status, `content-type:
    /// application/json`, body `{"error":"<message>","code":"<code>"}` and `x-bridge-error`.
    pub fn assert_bridge_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status,
            status,
            "expected {status} {code}, got {} with body {:?}",
            self.status,
            self.text()
        );
        let ct = self.header("content-type").unwrap_or("");
        assert!(
            ct.starts_with("application/json"),
            "bridge error {code} must be application/json, got content-type {ct:?}"
        );
        let body = self.json();
        assert_eq!(body["code"], code, "body code; body {body}");
        assert!(
            body["error"].as_str().is_some_and(|m| !m.is_empty()),
            "body must carry a human message in \"error\": {body}"
        );
        assert_eq!(
            self.header("x-bridge-error"),
            Some(code),
            "x-bridge-error header; headers {:?}",
            self.headers
        );
    }

    /// For requests that hyper may refuse before the bridge sees them: the status must match and
    /// the body is either empty (hyper's own response) or the bridge's error with `code`.
    pub fn assert_status_maybe_from_parser(&self, status: u16, code: &str) {
        assert_eq!(
            self.status,
            status,
            "expected {status} ({code} or the HTTP parser's own), got {} with body {:?}",
            self.status,
            self.text()
        );
        if !self.body.is_empty() {
            self.assert_bridge_error(status, code);
        }
    }
}

/// A client connection writing exact bytes.
pub struct RawConn {
    reader: BufReader<TcpStream>,
}

impl RawConn {
    pub fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect_timeout(&addr, WAIT)
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        stream.set_nodelay(true).unwrap();
        RawConn {
            reader: BufReader::new(stream),
        }
    }

    /// Writes bytes; an error (the peer may already have answered and closed) is returned, not
    /// raised, so the caller can still read the response.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let stream = self.reader.get_mut();
        stream.write_all(bytes)?;
        stream.flush()
    }

    /// Reads one response. `head_request` means the response has no body whatever it declares.
    pub fn read_response(&mut self, head_request: bool) -> io::Result<Response> {
        loop {
            let (status, headers) = self.read_head()?;
            if (100..200).contains(&status) && status != 101 {
                continue; // interim response (100 Continue)
            }
            let body = if head_request || status == 204 || status == 304 {
                Vec::new()
            } else {
                self.read_body(&headers)?
            };
            return Ok(Response {
                status,
                headers,
                body,
            });
        }
    }

    fn read_head(&mut self) -> io::Result<(u16, Vec<(String, String)>)> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        let mut parts = line.split_whitespace();
        let version = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/1.") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {line:?}"),
            ));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad status code"))?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if self.reader.read_line(&mut h)? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in head"));
            }
            let h = h.trim_end_matches(['\r', '\n']);
            if h.is_empty() {
                break;
            }
            let (k, v) = h
                .split_once(':')
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad header"))?;
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        Ok((status, headers))
    }

    fn read_body(&mut self, headers: &[(String, String)]) -> io::Result<Vec<u8>> {
        let te = headers.iter().find(|(k, _)| k == "transfer-encoding");
        let cl = headers.iter().find(|(k, _)| k == "content-length");
        if let Some((_, te)) = te {
            if !te.eq_ignore_ascii_case("chunked") {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unexpected transfer-encoding {te:?}"),
                ));
            }
            let mut body = Vec::new();
            loop {
                let mut size = String::new();
                if self.reader.read_line(&mut size)? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "eof in chunked body",
                    ));
                }
                let size = size.trim_end_matches(['\r', '\n']);
                let size = size.split(';').next().unwrap().trim();
                let n = usize::from_str_radix(size, 16).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad chunk size {size:?}"),
                    )
                })?;
                if n == 0 {
                    // Trailers until the empty line.
                    loop {
                        let mut t = String::new();
                        if self.reader.read_line(&mut t)? == 0 || t == "\r\n" || t == "\n" {
                            break;
                        }
                    }
                    return Ok(body);
                }
                let start = body.len();
                body.resize(start + n, 0);
                self.reader.read_exact(&mut body[start..])?;
                let mut crlf = [0u8; 2];
                self.reader.read_exact(&mut crlf)?;
            }
        } else if let Some((_, cl)) = cl {
            let n: usize = cl
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?;
            let mut body = vec![0u8; n];
            self.reader.read_exact(&mut body)?;
            Ok(body)
        } else {
            let mut body = Vec::new();
            self.reader.read_to_end(&mut body)?;
            Ok(body)
        }
    }

    /// Whether the peer closed the connection: reads until end of file (true), data (false) or
    /// the [`WAIT`] bound (false).
    pub fn closed_by_peer(&mut self) -> bool {
        let mut buf = [0u8; 1];
        match self.reader.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
        }
    }

    /// Reads everything until the peer closes; errors (including the [`WAIT`] timeout) returned.
    pub fn read_to_close(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.reader.read_to_end(&mut out)?;
        Ok(out)
    }
}

/// Writes `bytes` on a new connection and reads one response.
pub fn try_raw_request(addr: SocketAddr, bytes: &[u8]) -> io::Result<Response> {
    let mut conn = RawConn::connect(addr);
    let write_result = conn.write(bytes);
    let head = bytes.starts_with(b"HEAD ");
    match conn.read_response(head) {
        Ok(r) => Ok(r),
        Err(e) => Err(match write_result {
            Err(w) => io::Error::new(e.kind(), format!("{e} (write failed too: {w})")),
            Ok(()) => e,
        }),
    }
}

/// Writes `bytes` on a new connection and reads one response; panics if none arrives.
pub fn raw_request(addr: SocketAddr, bytes: &[u8]) -> Response {
    try_raw_request(addr, bytes).unwrap_or_else(|e| {
        panic!(
            "no response to {:?}: {e}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        )
    })
}

/// Runs [`try_raw_request`] on a thread; the receiver yields its result.
pub fn raw_request_in_background(
    addr: SocketAddr,
    bytes: Vec<u8>,
) -> Receiver<io::Result<Response>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(try_raw_request(addr, &bytes));
    });
    rx
}

/// A well-formed HTTP/1.1 request, serialised to bytes by [`Req::to_bytes`]. It carries
/// `connection: close` so that each request uses its own connection.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

impl Req {
    pub fn new(method: &str, target: &str) -> Req {
        Req {
            method: method.to_string(),
            target: target.to_string(),
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn bearer(self, token: &str) -> Req {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// A body with its content type (and a matching `content-length`).
    pub fn body(self, content_type: &str, body: impl Into<Vec<u8>>) -> Req {
        let mut r = self.header("content-type", content_type);
        r.body = Some(body.into());
        r
    }

    pub fn json(self, body: &str) -> Req {
        self.body("application/json", body.as_bytes())
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
    }

    pub fn to_bytes(&self, addr: SocketAddr) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.target).into_bytes();
        if !self.has_header("host") {
            out.extend_from_slice(format!("host: {addr}\r\n").as_bytes());
        }
        for (k, v) in &self.headers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        if let Some(body) = &self.body {
            if !self.has_header("content-length") && !self.has_header("transfer-encoding") {
                out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
            }
        }
        if !self.has_header("connection") {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if let Some(body) = &self.body {
            out.extend_from_slice(body);
        }
        out
    }

    pub fn send(&self, addr: SocketAddr) -> Response {
        raw_request(addr, &self.to_bytes(addr))
    }
}

/// Encodes `body` with the chunked transfer coding in pieces of `piece` bytes.
pub fn chunked(body: &[u8], piece: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for c in body.chunks(piece) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// A multipart/form-data body with one file part, and its content type.
pub fn multipart_file(file_name: &str, content: &[u8]) -> (String, Vec<u8>) {
    let boundary = "----callback-bridge-test-boundary-7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
    body.extend_from_slice(
        format!("Content-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\n")
            .as_bytes(),
    );
    body.extend_from_slice(b"Content-Type: application/octet-stream\r\n\r\n");
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}
