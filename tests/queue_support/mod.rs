//! Support for the queue transport's black-box tests: a mock upstream that records what it
//! receives (and can hold requests), a minimal blocking HTTP/1.1 client for the agent's side,
//! and helpers that spawn the real gateway and relay and wait on their readiness lines.
//! Every wait is bounded by [`WAIT`]; nothing sleeps in place of a readiness signal.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_callback-bridge");
/// Upper bound of every wait in these tests (only reached when something is broken).
pub const WAIT: Duration = Duration::from_secs(30);
/// The agent's bridge token.
pub const TOKEN: &str = "agent-token-0123456789";
/// The real upstream credential: must never appear in the sandbox.
pub const SECRET: &str = "upstream-secret-Zq9xW2";
pub const RUN_ID: &str = "run-42";

/// Polls `cond` every 10 ms until it holds; panics after [`WAIT`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > WAIT {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------------------------
// Mock upstream

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct UpState {
    requests: Mutex<Vec<Recorded>>,
    hold: tokio::sync::watch::Sender<bool>,
    download: Mutex<Vec<u8>>,
}

/// A loopback upstream. Paths with a `hold` segment wait while holding is on; `…/content`
/// answers the download bytes; `POST …/attachments` echoes the body; everything else answers a
/// small JSON document with an `etag` and headers the bridge must drop.
pub struct Upstream {
    pub url: String,
    state: Arc<UpState>,
}

impl Upstream {
    pub fn start() -> Upstream {
        let (hold, _) = tokio::sync::watch::channel(false);
        let state = Arc::new(UpState {
            requests: Mutex::new(Vec::new()),
            hold,
            download: Mutex::new(Vec::new()),
        });
        let (tx, rx) = mpsc::channel();
        let st = state.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    let st = st.clone();
                    tokio::spawn(async move {
                        let svc = hyper::service::service_fn(move |req| {
                            let st = st.clone();
                            async move { Ok::<_, std::convert::Infallible>(answer(st, req).await) }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
        });
        let addr = rx.recv_timeout(WAIT).expect("upstream bound");
        Upstream {
            url: format!("http://{addr}"),
            state,
        }
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Requests received for exactly this path (query excluded).
    pub fn count_path(&self, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.target.split('?').next() == Some(path))
            .count()
    }

    pub fn set_holding(&self, on: bool) {
        self.state.hold.send_replace(on);
    }

    pub fn set_download(&self, bytes: Vec<u8>) {
        *self.state.download.lock().unwrap() = bytes;
    }

    pub fn wait_for(&self, what: &str, n: usize, path: &str) {
        wait_until(what, || self.count_path(path) >= n);
    }
}

async fn answer(
    st: Arc<UpState>,
    req: hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes().to_vec())
        .unwrap_or_default();
    let target = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    let path = parts.uri.path().to_owned();
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let n = {
        let mut reqs = st.requests.lock().unwrap();
        reqs.push(Recorded {
            method: parts.method.to_string(),
            target,
            headers,
            body: body.clone(),
        });
        reqs.len()
    };
    if path.split('/').any(|s| s == "hold") {
        let mut rx = st.hold.subscribe();
        let _ = rx.wait_for(|on| !*on).await;
    }
    let mut resp = hyper::Response::builder();
    let payload = if path.ends_with("/content") {
        resp = resp.header("content-type", "application/octet-stream");
        st.download.lock().unwrap().clone()
    } else if parts.method == http::Method::POST && path.ends_with("/attachments") {
        resp = resp
            .status(201)
            .header("content-type", "application/octet-stream");
        body
    } else {
        resp = resp
            .status(if parts.method == http::Method::POST {
                201
            } else {
                200
            })
            .header("content-type", "application/json")
            .header("etag", "\"v1\"")
            .header("set-cookie", "session=upstream")
            .header("x-upstream-private", "internal");
        serde_json::to_vec(
            &serde_json::json!({"ok": true, "method": parts.method.as_str(), "n": n}),
        )
        .unwrap()
    };
    resp.body(Full::new(Bytes::from(payload))).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Agent-side HTTP client

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    /// The bridge's error code (`x-bridge-error`), if any.
    pub fn code(&self) -> &str {
        self.header("x-bridge-error").unwrap_or("")
    }
}

/// One request over a fresh connection (`Connection: close`).
pub fn http(base: &str, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let addr = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).expect("connect to the gateway");
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut head = format!("{method} {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" || method == "PUT" || method == "PATCH" {
        head.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the response");
    parse_response(&raw, method == "HEAD")
}

/// `http` with the agent's bearer token.
pub fn agent(
    base: &str,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let auth = format!("Bearer {TOKEN}");
    let mut all = vec![("authorization", auth.as_str())];
    all.extend_from_slice(headers);
    http(base, method, target, &all, body)
}

fn parse_response(raw: &[u8], head_only: bool) -> Resp {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    if chunked && !head_only {
        body = dechunk(&body);
    }
    Resp {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(nl) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&data[..nl])
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&data[nl + 2..nl + 2 + size]);
        data = &data[nl + 2 + size + 2..];
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Processes

/// A spawned bridge process; killed when dropped.
pub struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    pub stderr_path: PathBuf,
}

impl Proc {
    pub fn spawn(mut cmd: Command, stderr_path: PathBuf) -> Proc {
        let err = std::fs::File::create(&stderr_path).unwrap();
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .expect("spawn callback-bridge");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            child,
            lines,
            stderr_path,
        }
    }

    /// The next stdout line that is a JSON object with this `event`.
    pub fn wait_event(&mut self, event: &str) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        if v["event"] == event {
                            return v;
                        }
                    }
                }
                Err(_) => panic!(
                    "no {event:?} line from the process; stderr:\n{}",
                    self.stderr()
                ),
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(start.elapsed() < WAIT, "process did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test's working area: the queue directory (the "sandbox") and logs.
pub struct Sandbox {
    pub tmp: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            tmp: tempfile::tempdir().unwrap(),
        }
    }
    pub fn queue(&self) -> PathBuf {
        self.tmp.path().join("queue")
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
    pub fn requests(&self) -> PathBuf {
        self.queue().join("requests")
    }
    pub fn responses(&self) -> PathBuf {
        self.queue().join("responses")
    }
    /// Names in a directory, sorted.
    pub fn list(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Starts a gateway on this queue with the agent token; returns it and its URL.
    pub fn gateway(&self, args: &[&str]) -> (Proc, String) {
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CALLBACK_BRIDGE_TOKEN", TOKEN)
            .env("CALLBACK_BRIDGE_LOG_FORMAT", "json")
            .args(["gateway", "--transport", "queue", "--queue-dir"])
            .arg(self.queue())
            .args(args);
        let mut p = Proc::spawn(cmd, self.path("gateway.err"));
        let ready = p.wait_event("ready");
        let url = ready["url"].as_str().unwrap().to_owned();
        (p, url)
    }

    /// Starts a relay on this queue forwarding to `upstream` through `prefix`.
    pub fn relay(&self, upstream: &str, prefix: &[&str], args: &[&str]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CALLBACK_BRIDGE_UPSTREAM_TOKEN", SECRET)
            .env("PAPERCLIP_RUN_ID", RUN_ID)
            .env("CALLBACK_BRIDGE_LOG_FORMAT", "json")
            .args([
                "relay",
                "--transport",
                "queue",
                "--upstream",
                upstream,
                "--queue-dir",
            ])
            .arg(self.queue())
            .args(args)
            .arg("--")
            .args(prefix);
        let n = std::fs::read_dir(self.tmp.path())
            .map(|d| d.count())
            .unwrap_or(0);
        let mut p = Proc::spawn(cmd, self.path(&format!("relay-{n}.err")));
        p.wait_event("ready");
        p
    }

    /// Writes a counting exec prefix (`count.sh -c`, used like `sh -c`): it logs each command's
    /// first line (the operation), the number of queue entries it carried, its argv and
    /// environment, and runs the script with `sh -c`.
    pub fn counting_prefix(&self) -> Vec<String> {
        let log = self.path("commands.log");
        let env_log = self.path("commands.env");
        let script = format!(
            r#"#!/bin/sh
env >> '{env}'
printf 'ARGV %s\n' "$0" "$@" >> '{env}'
[ "$1" = -c ] && shift
op=$(printf '%s\n' "$1" | sed -n 1p)
out=$(sh -c "$1"); rc=$?
n=$(printf '%s\n' "$out" | grep -c '^:[FBW] ')
printf '%s|%s\n' "$op" "$n" >> '{log}'
printf '%s\n' "$out"
exit $rc
"#,
            env = env_log.display(),
            log = log.display()
        );
        let path = self.path("count.sh");
        std::fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        vec![path.display().to_string(), "-c".to_owned()]
    }

    /// The counting prefix's log: (operation, entries carried) per command.
    pub fn commands(&self) -> Vec<(String, usize)> {
        std::fs::read_to_string(self.path("commands.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.rsplit_once('|'))
            .map(|(op, n)| {
                (
                    op.trim_start_matches("# callback-bridge queue ").to_owned(),
                    n.parse().unwrap_or(0),
                )
            })
            .collect()
    }
}

/// Reads a JSON file.
pub fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// Runs `f` on another thread; the handle returns its result.
pub fn background<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(f)
}
