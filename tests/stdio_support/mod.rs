//! Helpers for the stdio transport tests: a recording mock upstream, a relay/serve/gateway
//! process harness that waits on readiness lines, and small HTTP/1.1 clients.
//!
//! Every wait is bounded (`WAIT`); nothing sleeps in place of a readiness signal.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdout, Command};

/// Upper bound of every wait in these tests (process start, readiness, responses, exits).
pub const WAIT: Duration = Duration::from_secs(30);
/// The real upstream credential the relay holds; must never reach the sandbox side.
pub const UPSTREAM_SECRET: &str = "upstream-secret-9f8e7d6c5b4a";
/// A bridge token supplied by the spawner (the relay then does not print it).
pub const BRIDGE_TOKEN: &str = "bridge-token-0123456789abcdef";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_callback-bridge")
}

/// A loopback port that is free right now (bind :0, read it, drop the listener).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Deterministic bytes covering every byte value.
pub fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

/// Size of the binary body the mock upstream serves under `/api/attachments/{id}/content`.
pub const ATTACHMENT_BYTES: usize = 1024 * 1024 + 17;

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

/// A recording upstream: echoes request bodies of mutations, serves a binary attachment, and
/// otherwise answers JSON naming the method and target it received. It also sends a
/// `set-cookie` header that the bridge must drop.
pub struct MockUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockUpstream {
    pub async fn start() -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle_upstream(req, record.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        MockUpstream { addr, seen, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The recorded request with this target (panics if there is none).
    pub fn find(&self, target: &str) -> Seen {
        self.seen()
            .into_iter()
            .find(|s| s.target == target)
            .unwrap_or_else(|| panic!("upstream never saw {target}"))
    }
}

async fn handle_upstream(
    req: Request<Incoming>,
    record: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let target = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_default();
    record.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        target: target.clone(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let (content_type, out) = if target.starts_with("/api/attachments/") {
        (
            "application/octet-stream".to_owned(),
            pattern(ATTACHMENT_BYTES, 7),
        )
    } else if parts.method != http::Method::GET && parts.method != http::Method::HEAD {
        let ct = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        (ct, body)
    } else {
        let json = serde_json::json!({"method": parts.method.as_str(), "target": target});
        ("application/json".to_owned(), json.to_string().into_bytes())
    };
    let resp = Response::builder()
        .header("content-type", content_type)
        .header("set-cookie", "session=upstream")
        .header("x-upstream-internal", "1")
        .body(Full::new(Bytes::from(out)))
        .unwrap();
    Ok(resp)
}

/// A response as the agent saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| {
            panic!(
                "not JSON ({}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `code` field of a bridge-made JSON body.
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_owned()
    }
}

/// How a test request sends its body.
pub enum Send {
    Empty,
    /// With `Content-Length`.
    Sized(Vec<u8>),
    /// With `Transfer-Encoding: chunked`, in pieces of this many bytes.
    Chunked(Vec<u8>, usize),
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Sends one HTTP/1.1 request on a fresh connection and reads the whole response.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Send,
) -> Reply {
    tokio::time::timeout(WAIT, request_inner(addr, method, target, headers, body))
        .await
        .unwrap_or_else(|_| panic!("no response to {method} {target} within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("{method} {target}: {e}"))
}

/// Like [`request`] but returns connection errors (for polling a restarting gateway).
pub async fn try_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, String> {
    tokio::time::timeout(
        WAIT,
        request_inner(addr, method, target, headers, Send::Empty),
    )
    .await
    .map_err(|_| "timeout".to_owned())?
}

async fn request_inner(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Send,
) -> Result<Reply, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut builder = Request::builder()
        .method(method)
        .uri(target)
        .header("host", addr.to_string());
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let body: TestBody = match body {
        Send::Empty => Full::new(Bytes::new()).boxed(),
        Send::Sized(bytes) => Full::new(Bytes::from(bytes)).boxed(),
        Send::Chunked(bytes, piece) => {
            let frames: Vec<Result<Frame<Bytes>, Infallible>> = bytes
                .chunks(piece.max(1))
                .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                .collect();
            StreamBody::new(futures_iter(frames)).boxed()
        }
    };
    let req = builder.body(body).map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok(Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.to_vec(),
    })
}

/// A stream over a vector, without size hint (so hyper frames the body as chunked).
fn futures_iter<T: Unpin>(items: Vec<T>) -> impl futures_core::Stream<Item = T> {
    struct Iter<T>(std::vec::IntoIter<T>);
    impl<T: Unpin> futures_core::Stream for Iter<T> {
        type Item = T;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<T>> {
            std::task::Poll::Ready(self.0.next())
        }
    }
    Iter(items.into_iter())
}

/// Sends raw request bytes and reads one response (head + `Content-Length` body). For requests
/// an HTTP client library would refuse to build.
pub async fn raw_request(addr: SocketAddr, bytes: &[u8]) -> Reply {
    let work = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(bytes).await.unwrap();
        let mut buf = Vec::new();
        let head_end = loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed before a response head");
            buf.extend_from_slice(&chunk[..n]);
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
        let mut lines = head.split("\r\n");
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("status line");
        let mut headers = HeaderMap::new();
        for line in lines.filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once(':').expect("header line");
            headers.append(
                http::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
                http::HeaderValue::from_str(value.trim()).unwrap(),
            );
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = buf[head_end..].to_vec();
        while body.len() < len {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed mid-body");
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(len);
        Reply {
            status,
            headers,
            body,
        }
    };
    tokio::time::timeout(WAIT, work)
        .await
        .expect("raw request timed out")
}

/// A spawned `callback-bridge` process whose stdout lines are read on demand and whose stderr is
/// collected (printed if the test fails).
pub struct Proc {
    pub child: Child,
    pub pid: u32,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Arc<Mutex<Vec<String>>>,
    stderr_done: Option<tokio::task::JoinHandle<()>>,
    label: &'static str,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- stderr of {} ---", self.label);
            for line in self.stderr.lock().unwrap().iter() {
                eprintln!("{line}");
            }
        }
    }
}

impl Proc {
    /// Spawns `cmd` (stdin, stdout and stderr piped; killed when dropped).
    pub fn spawn(mut cmd: Command, label: &'static str) -> Proc {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn callback-bridge");
        let pid = child.id().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = stderr.clone();
        let mut err_lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let stderr_done = tokio::spawn(async move {
            while let Ok(Some(line)) = err_lines.next_line().await {
                sink.lock().unwrap().push(line);
            }
        });
        Proc {
            child,
            pid,
            stdout,
            stderr,
            stderr_done: Some(stderr_done),
            label,
        }
    }

    /// The next stdout line as JSON, waiting at most [`WAIT`]; `None` at end of stdout.
    pub async fn next_json(&mut self) -> Option<serde_json::Value> {
        let line = tokio::time::timeout(WAIT, self.stdout.next_line())
            .await
            .unwrap_or_else(|_| panic!("{}: no stdout line within {WAIT:?}", self.label))
            .expect("read stdout")?;
        Some(serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}")))
    }

    /// Collected stderr so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    pub fn signal(&self, sig: &str) {
        signal(self.pid, sig);
    }

    /// Waits for the exit, then for stderr to be read to its end.
    pub async fn wait(&mut self) -> ExitStatus {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit within {WAIT:?}", self.label))
            .unwrap();
        if let Some(done) = self.stderr_done.take() {
            let _ = tokio::time::timeout(WAIT, done).await;
        }
        status
    }
}

/// Sends a signal with `kill(1)` (no unsafe code in tests either).
pub fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid} failed");
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

/// Environment every bridge process in these tests gets: the mock upstream, its credential,
/// JSON logs, and no rate limit (the concurrency tests would otherwise hit the burst).
pub fn bridge_command(upstream: &MockUpstream) -> Command {
    let mut cmd = Command::new(bin());
    cmd.env("CALLBACK_BRIDGE_UPSTREAM", upstream.url())
        .env("CALLBACK_BRIDGE_UPSTREAM_TOKEN", UPSTREAM_SECRET)
        .env("CALLBACK_BRIDGE_LOG_FORMAT", "json")
        .env("CALLBACK_BRIDGE_RATE_LIMIT_PER_SECOND", "0")
        .env_remove("CALLBACK_BRIDGE_TOKEN")
        .env_remove("PAPERCLIP_API_BRIDGE_MODE")
        .env_remove("RUST_LOG");
    cmd
}

/// A running relay and the agent-facing address of its gateway.
pub struct Relay {
    pub proc: Proc,
    pub agent: SocketAddr,
    pub token: String,
    pub ready: serde_json::Value,
}

/// How a relay test starts its gateway.
#[derive(Default)]
pub struct RelayOptions<'a> {
    /// Extra relay arguments before `--` (e.g. `--handshake stdin`).
    pub relay_args: &'a [&'a str],
    /// Extra gateway arguments.
    pub gateway_args: &'a [&'a str],
    /// Supply the bridge token (else the relay generates and prints it).
    pub supplied_token: bool,
    /// Wrap the gateway in `sh -c '<prefix>; exec "$0" "$@"'`.
    pub shell_prefix: Option<&'a str>,
}

impl Relay {
    /// `relay --transport stdio -- callback-bridge gateway --transport stdio --listen 127.0.0.1:PORT`,
    /// waiting for the relay's readiness line.
    pub async fn start(upstream: &MockUpstream, opts: RelayOptions<'_>) -> Relay {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut cmd = bridge_command(upstream);
        cmd.args(["relay", "--transport", "stdio"])
            .args(opts.relay_args)
            .arg("--");
        if opts.supplied_token {
            cmd.env("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN);
        }
        if let Some(prefix) = opts.shell_prefix {
            cmd.args(["sh", "-c", &format!("{prefix}; exec \"$0\" \"$@\"")]);
        }
        cmd.arg(bin())
            .args(["gateway", "--transport", "stdio", "--listen", &listen])
            .args(opts.gateway_args);
        let mut proc = Proc::spawn(cmd, "relay");
        let ready = proc.next_json().await.expect("relay readiness line");
        assert_eq!(ready["event"], "ready", "{ready}");
        let token = if opts.supplied_token {
            assert!(ready.get("token").is_none(), "supplied token printed");
            BRIDGE_TOKEN.to_owned()
        } else {
            ready["token"].as_str().expect("generated token").to_owned()
        };
        Relay {
            proc,
            agent: listen.parse().unwrap(),
            token,
            ready,
        }
    }

    pub fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// The gateway process (the relay's only child when spawned without a shell).
    pub fn gateway_pid(&self) -> u32 {
        let children = children_of(self.proc.pid);
        assert_eq!(children.len(), 1, "relay children: {children:?}");
        children[0]
    }

    /// SIGTERM, then the exit-summary line and the exit status.
    pub async fn stop(mut self) -> (serde_json::Value, ExitStatus) {
        self.proc.signal("TERM");
        let exit = self.proc.next_json().await.expect("exit line");
        let status = self.proc.wait().await;
        (exit, status)
    }
}
