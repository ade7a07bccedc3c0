//! The mock upstream: a hyper HTTP/1.1 server on an ephemeral loopback port, with its own
//! single-threaded tokio runtime on a background thread, that records every request it receives
//! (method, raw target, headers in wire order with duplicates, body as it streams in) and answers
//! per a [`Behaviour`] that a test may change at any time.
//!
//! Requests whose path has a segment `hold` wait, after their body was read, while
//! [`MockUpstream::set_holding`] is on: a test can keep requests in flight and release them.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;

use super::{pattern, WAIT};

/// Size of the binary document [`Behaviour::App`] serves under `…/content` until a test sets
/// another one with [`MockUpstream::set_download`]: over 1 MiB, not a multiple of any buffer.
pub const ATTACHMENT_BYTES: usize = 1024 * 1024 + 17;

/// How the mock upstream answers.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// 200 `{"ok":true}` as `application/json`, with `set-cookie` and `x-internal` headers that
    /// the bridge must drop.
    Ok,
    /// 200 with the request body, under the request's `content-type`.
    Echo,
    /// A small fake of the Paperclip API, for round trips:
    /// * `GET`/`HEAD` of a path ending in `/content`: 200 `application/octet-stream`, the download
    ///   bytes ([`MockUpstream::set_download`]; [`ATTACHMENT_BYTES`] of [`pattern`] by default);
    /// * any other method: the request body echoed under the request's `content-type`
    ///   (`application/octet-stream` if none), 201 for `POST`, else 200;
    /// * anything else: 200 `application/json` `{"ok":true,"method":…,"target":…,"n":…}` (`n`
    ///   counts the requests received so far) with `etag: "v1"`.
    ///
    /// Every answer also carries `set-cookie: session=upstream` and `x-upstream-private:
    /// internal`, which the bridge must drop.
    App,
    /// A fixed response. `chunked` streams the body in 8 KiB chunks with no `content-length`.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
        chunked: bool,
    },
    /// Waits this long before sending the [`Behaviour::Ok`] response head.
    Delay(Duration),
    /// A fixed response whose body is sent in `pieces` chunks (no `content-length`) with `gap`
    /// between them: a slow upstream body.
    SlowBody {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
        pieces: usize,
        gap: Duration,
    },
    /// Sends the response head declaring `content-length` of the whole `body`, then only its
    /// first `sent` bytes, then closes the connection: a response broken mid-body.
    CloseMidBody {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
        sent: usize,
    },
    /// Reads the request and never answers (until the mock is dropped).
    Hang,
    /// Reads the request, then closes the connection without answering.
    Close,
}

fn owned(headers: &[(&str, &str)]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

impl Behaviour {
    pub fn respond(status: u16, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Behaviour {
        Behaviour::Respond {
            status,
            headers: owned(headers),
            body: body.into(),
            chunked: false,
        }
    }

    pub fn respond_chunked(
        status: u16,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Behaviour {
        Behaviour::Respond {
            status,
            headers: owned(headers),
            body: body.into(),
            chunked: true,
        }
    }

    pub fn slow_body(
        status: u16,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
        pieces: usize,
        gap: Duration,
    ) -> Behaviour {
        Behaviour::SlowBody {
            status,
            headers: owned(headers),
            body: body.into(),
            pieces: pieces.max(1),
            gap,
        }
    }

    pub fn close_mid_body(
        status: u16,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
        sent: usize,
    ) -> Behaviour {
        let body = body.into();
        assert!(
            sent < body.len(),
            "close_mid_body must send less than the body"
        );
        Behaviour::CloseMidBody {
            status,
            headers: owned(headers),
            body,
            sent,
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

    /// Every header as `name: value` lines (values decoded lossily), for searching.
    pub fn headers_text(&self) -> String {
        self.headers
            .iter()
            .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v)))
            .collect()
    }

    /// The path: the target without its query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

struct UpstreamState {
    requests: Mutex<Vec<Recorded>>,
    changed: Condvar,
    behaviour: Mutex<Behaviour>,
    hold: tokio::sync::watch::Sender<bool>,
    download: Mutex<Bytes>,
}

/// A recording HTTP/1.1 server on 127.0.0.1 with its own tokio runtime thread; stopped (and
/// every connection still open dropped) when the value is dropped.
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

    /// Starts an upstream answering with [`Behaviour::App`].
    pub fn app() -> MockUpstream {
        Self::start_with(Behaviour::App)
    }

    pub fn start_with(behaviour: Behaviour) -> MockUpstream {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind mock upstream");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (hold, _) = tokio::sync::watch::channel(false);
        let state = Arc::new(UpstreamState {
            requests: Mutex::new(Vec::new()),
            changed: Condvar::new(),
            behaviour: Mutex::new(behaviour),
            hold,
            download: Mutex::new(Bytes::from(pattern(ATTACHMENT_BYTES, 7))),
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

    /// While on, requests whose path has a segment `hold` wait before being answered.
    pub fn set_holding(&self, on: bool) {
        self.state.hold.send_replace(on);
    }

    /// The bytes [`Behaviour::App`] serves under `…/content`.
    pub fn set_download(&self, bytes: impl Into<Bytes>) {
        *self.state.download.lock().unwrap() = bytes.into();
    }

    /// Every request received so far (a request appears as soon as its head arrived; its body is
    /// filled in as it is read).
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn request_count(&self) -> usize {
        self.state.requests.lock().unwrap().len()
    }

    /// Requests received for exactly this path (query excluded).
    pub fn count_path(&self, path: &str) -> usize {
        self.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.path() == path)
            .count()
    }

    /// The first recorded request with exactly this target (panics if there is none).
    pub fn find(&self, target: &str) -> Recorded {
        self.requests()
            .into_iter()
            .find(|r| r.target == target)
            .unwrap_or_else(|| panic!("upstream never saw {target}"))
    }

    /// Waits until `cond` holds for the recorded requests; panics with `what` after [`WAIT`].
    fn wait_requests(&self, what: &str, cond: impl Fn(&[Recorded]) -> bool) -> Vec<Recorded> {
        let deadline = Instant::now() + WAIT;
        let mut guard = self.state.requests.lock().unwrap();
        while !cond(&guard) {
            let now = Instant::now();
            if now >= deadline {
                panic!(
                    "upstream: timed out waiting for {what}; received {:?}",
                    guard
                        .iter()
                        .map(|r| format!("{} {}", r.method, r.target))
                        .collect::<Vec<_>>()
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

    /// Waits until at least `n` requests have arrived; panics after [`WAIT`].
    pub fn wait_for_requests(&self, n: usize) -> Vec<Recorded> {
        self.wait_requests(&format!("at least {n} requests"), |r| r.len() >= n)
    }

    /// Waits until at least `n` requests for exactly `path` have arrived; panics naming `what`.
    pub fn wait_for(&self, what: &str, n: usize, path: &str) {
        self.wait_requests(what, |r| r.iter().filter(|r| r.path() == path).count() >= n);
    }

    /// Waits until the body of request number `index` was completely received or aborted by
    /// the sender; panics after [`WAIT`] (a body left hanging is a failure too).
    pub fn wait_for_body_end(&self, index: usize) -> Recorded {
        let list = self.wait_requests(&format!("the end of request {index}'s body"), |r| {
            r.get(index)
                .is_some_and(|r| r.body_complete || r.body_aborted)
        });
        list[index].clone()
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
pub struct CloseConnection;

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

    if parts.uri.path().split('/').any(|s| s == "hold") {
        let mut rx = state.hold.subscribe();
        let _ = rx.wait_for(|on| !*on).await;
    }

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
        Behaviour::App => Ok(app_response(&state, &parts, received, index + 1)),
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
            Ok(with_head(body, status, &headers))
        }
        Behaviour::SlowBody {
            status,
            headers,
            body,
            pieces,
            gap,
        } => {
            let piece = body.len().div_ceil(pieces).max(1);
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tokio::spawn(async move {
                let mut rest = body;
                while !rest.is_empty() {
                    let n = rest.len().min(piece);
                    if tx.send(Ok(rest.split_to(n))).await.is_err() {
                        return;
                    }
                    if !rest.is_empty() {
                        tokio::time::sleep(gap).await;
                    }
                }
            });
            Ok(with_head(MockBody::channel(rx, None), status, &headers))
        }
        Behaviour::CloseMidBody {
            status,
            headers,
            body,
            sent,
        } => {
            let (tx, rx) = tokio::sync::mpsc::channel(2);
            let declared = body.len() as u64;
            tokio::spawn(async move {
                let _ = tx.send(Ok(body.slice(..sent))).await;
                let _ = tx.send(Err(CloseConnection)).await;
            });
            Ok(with_head(
                MockBody::channel(rx, Some(declared)),
                status,
                &headers,
            ))
        }
        Behaviour::Hang => std::future::pending().await,
        Behaviour::Close => Err(CloseConnection),
    }
}

fn with_head(
    body: MockBody,
    status: u16,
    headers: &[(String, String)],
) -> hyper::Response<MockBody> {
    let mut resp = hyper::Response::new(body);
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
    for (k, v) in headers {
        resp.headers_mut().append(
            hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            hyper::header::HeaderValue::from_str(v).unwrap(),
        );
    }
    resp
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

fn app_response(
    state: &UpstreamState,
    parts: &http::request::Parts,
    received: Vec<u8>,
    n: usize,
) -> hyper::Response<MockBody> {
    let safe = parts.method == http::Method::GET || parts.method == http::Method::HEAD;
    let resp = hyper::Response::builder()
        .header("set-cookie", "session=upstream")
        .header("x-upstream-private", "internal");
    let resp = if safe && parts.uri.path().ends_with("/content") {
        resp.status(200)
            .header("content-type", "application/octet-stream")
            .body(MockBody::full(state.download.lock().unwrap().clone()))
    } else if !safe {
        let ct = parts
            .headers
            .get("content-type")
            .cloned()
            .unwrap_or_else(|| http::HeaderValue::from_static("application/octet-stream"));
        let status = if parts.method == http::Method::POST {
            201
        } else {
            200
        };
        resp.status(status)
            .header("content-type", ct)
            .body(MockBody::full(received))
    } else {
        let doc = serde_json::json!({
            "ok": true,
            "method": parts.method.as_str(),
            "target": parts.uri.to_string(),
            "n": n,
        });
        resp.status(200)
            .header("content-type", "application/json")
            .header("etag", "\"v1\"")
            .body(MockBody::full(serde_json::to_vec(&doc).unwrap()))
    };
    resp.unwrap()
}

type BodyChannel = tokio::sync::mpsc::Receiver<Result<Bytes, CloseConnection>>;

/// Response body of the mock: one buffer with a known length (`content-length`), a sequence of
/// chunks with no declared length (chunked transfer coding), or chunks arriving over a channel
/// (slow bodies; an error item aborts the connection mid-body).
pub struct MockBody {
    chunks: VecDeque<Bytes>,
    channel: Option<BodyChannel>,
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
            channel: None,
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
            channel: None,
            exact: None,
        }
    }

    fn channel(rx: BodyChannel, exact: Option<u64>) -> MockBody {
        MockBody {
            chunks: VecDeque::new(),
            channel: Some(rx),
            exact,
        }
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = CloseConnection;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, CloseConnection>>> {
        if let Some(rx) = self.channel.as_mut() {
            return rx
                .poll_recv(cx)
                .map(|item| item.map(|r| r.map(Frame::data)));
        }
        Poll::Ready(self.chunks.pop_front().map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.channel.is_none() && self.chunks.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        match self.exact {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
