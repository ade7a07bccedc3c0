//! The agent-facing server: accept loop, per-request pipeline, graceful drain, lifecycle.
//!
//! Promise: the listener binds before the readiness line is printed (and nothing is printed on
//! stdout before it); at most `max_connections` connections are open; a client that does not
//! finish its request head in time is dropped while others are served; on a signal, lifeline EOF
//! or a lifetime/idle limit, accepting stops, in-flight requests get `drain_timeout` to finish, the
//! rest are answered 503 `shutting_down` (or 409 for forwarded mutations), and one exit-summary
//! line is printed. The listener is loopback TCP or a Unix socket (`unix_socket`); on a socket
//! with a peer allow-list, a connection from any other uid/gid is closed before a byte is read
//! (counted and logged), so a process outside the agent's identity never reaches the token check.
//! An answer given before the request body was read to its end is followed by a bounded
//! read-and-discard of the rest ([`LingeringBody`]), so a client still writing sees the answer.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::config::{Common, Lifecycle, ListenAddr, Listener, PeerCheck, ServeConfig, TokenConfig};
use crate::dispatch::Dispatch;
use crate::limits::BoxFuture;
use crate::pipeline::{LocalEndpoints, Pipeline, PipelineSettings};
use crate::proxy::Forwarder;
use crate::telemetry::Metrics;
use crate::unix_socket::{self, BoundSocket, UnixBindError};

/// After the drain deadline, time allowed for the 503/409 answers to be written before the
/// remaining connections are cut.
const FLUSH_GRACE: Duration = Duration::from_millis(500);
pub use crate::lifecycle::ExitReason;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    BindUnix(#[from] UnixBindError),
    #[error("cannot write ready file {path}: {source}")]
    ReadyFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write to stdout: {0}")]
    Stdout(std::io::Error),
}

/// The readiness line of docs/reference.md §3, fields in the documented order.
#[derive(serde::Serialize)]
struct ReadyLine<'a> {
    event: &'static str,
    url: String,
    pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
    /// The admin listener's URL, when one is configured (docs/reference.md §3.8).
    #[serde(skip_serializing_if = "Option::is_none")]
    admin: Option<String>,
}

/// A readiness line: the role's own fields, then `run_id` and `role`, like every log line.
pub fn ready_json<T: serde::Serialize>(fields: &T) -> String {
    #[derive(serde::Serialize)]
    struct WithContext<'a, T> {
        #[serde(flatten)]
        fields: &'a T,
        run_id: &'a str,
        role: &'a str,
    }
    let (run_id, role) = crate::telemetry::line_context();
    serde_json::to_string(&WithContext {
        fields,
        run_id,
        role,
    })
    .unwrap_or_default()
}

/// Prints one JSON line on stdout and flushes it.
pub fn print_line(line: &str) -> Result<(), ServeError> {
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush())
        .map_err(ServeError::Stdout)
}

/// Where the readiness and exit-summary lines of the agent-facing server are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LineSink {
    /// stdout, where a spawner reads them (docs/reference.md §3).
    #[default]
    Stdout,
    /// stderr: for a gateway whose stdout is a protocol channel (stdio transport, docs/reference.md §6.2).
    Stderr,
}

impl LineSink {
    fn emit(self, line: &str) -> Result<(), ServeError> {
        match self {
            LineSink::Stdout => print_line(line),
            LineSink::Stderr => {
                let mut err = std::io::stderr().lock();
                // Diagnostics only: a closed stderr must not stop the server.
                let _ = err
                    .write_all(line.as_bytes())
                    .and_then(|()| err.write_all(b"\n"));
                Ok(())
            }
        }
    }
}

/// Where the listener was bound: the real port for TCP, the absolute path for a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundAddr {
    Tcp(SocketAddr),
    Unix(std::path::PathBuf),
}

impl BoundAddr {
    /// The readiness line's `url`: `http://IP:PORT`, or `unix:/abs/path` for a socket (the agent
    /// connects to that path and sends any `Host`; docs/reference.md §3.1).
    pub fn url(&self) -> String {
        match self {
            BoundAddr::Tcp(addr) => format!("http://{addr}"),
            BoundAddr::Unix(path) => format!("{}{}", crate::config::UNIX_PREFIX, path.display()),
        }
    }
}

impl std::fmt::Display for BoundAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BoundAddr::Tcp(addr) => addr.fmt(f),
            BoundAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Runs after the listener is bound, with its address, before the readiness line.
pub type OnBound = Box<dyn FnOnce(&BoundAddr) -> Result<(), ServeError> + Send>;

/// What a gateway adds to [`serve`]: where its lines go, a stop reason of its own, and a step
/// after the listener is bound and before the readiness line (the queue gateway writes
/// `ready.json`).
#[derive(Default)]
pub struct ServeHooks {
    pub lines: LineSink,
    /// Resolves when the server must stop for a reason of the dispatcher (e.g. the transport to
    /// the relay died); the server then drains as for any other stop reason.
    pub stop: Option<BoxFuture<ExitReason>>,
    pub on_bound: Option<OnBound>,
}

/// Writes `contents` to `path` atomically (temp file in the same directory + rename), mode 0600.
pub fn write_private_file(path: &std::path::Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| std::path::Path::new("."));
    // tempfile creates with mode 0600 on Unix.
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(contents)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Runs `serve` until a stop reason; returns it after draining and printing the exit line.
pub async fn run(config: ServeConfig) -> Result<ExitReason, ServeError> {
    let metrics = Arc::new(Metrics::default());
    let ServeConfig {
        listener,
        target,
        token,
        common,
    } = config;
    let forwarder = Forwarder::new(target, &common, metrics.clone());
    let pipeline = Pipeline::new(
        PipelineSettings::new(&common, Some(token.token.clone()), LocalEndpoints::Answer),
        forwarder,
        metrics,
    );
    serve(
        AgentSide::new(listener, token, common),
        pipeline,
        ServeHooks::default(),
    )
    .await
}

/// The agent-facing side of `serve` and the gateways.
pub struct AgentSide {
    listener: Listener,
    /// The token; printed on the readiness line when it was generated.
    token: TokenConfig,
    lifecycle: Lifecycle,
    drain_timeout: Duration,
    /// The admin listener's address, if any.
    admin: Option<SocketAddr>,
}

impl AgentSide {
    pub fn new(listener: Listener, token: TokenConfig, common: Common) -> AgentSide {
        AgentSide {
            listener,
            token,
            lifecycle: common.lifecycle,
            drain_timeout: common.limits.drain_timeout,
            admin: common.admin,
        }
    }
}

/// A bound listener: TCP, or a Unix socket (removed from the file system when dropped).
enum Bound {
    Tcp(TcpListener, SocketAddr),
    Unix(BoundSocket, PeerCheck),
}

/// One accepted connection; a Unix one with the listener's peer allow-list.
enum Accepted<'a> {
    Tcp(TcpStream),
    Unix(UnixStream, &'a PeerCheck),
}

impl Bound {
    async fn new(addr: &ListenAddr) -> Result<Bound, ServeError> {
        match addr {
            ListenAddr::Tcp(listen) => {
                let (listener, addr) = bind(*listen)?;
                Ok(Bound::Tcp(listener, addr))
            }
            ListenAddr::Unix(unix) => Ok(Bound::Unix(
                unix_socket::bind(&unix.path, unix.mode).await?,
                unix.peers.clone(),
            )),
        }
    }

    fn addr(&self) -> BoundAddr {
        match self {
            Bound::Tcp(_, addr) => BoundAddr::Tcp(*addr),
            Bound::Unix(socket, _) => BoundAddr::Unix(socket.path().to_owned()),
        }
    }

    async fn accept(&self) -> std::io::Result<Accepted<'_>> {
        match self {
            Bound::Tcp(listener, _) => listener.accept().await.map(|(s, _)| Accepted::Tcp(s)),
            Bound::Unix(socket, peers) => socket
                .listener()
                .accept()
                .await
                .map(|(s, _)| Accepted::Unix(s, peers)),
        }
    }
}

/// Binds the TCP listener. Separate so that callers can report a bind failure before anything
/// else.
fn bind(listen: SocketAddr) -> Result<(TcpListener, SocketAddr), ServeError> {
    let err = |source| ServeError::Bind {
        addr: listen,
        source,
    };
    let socket = if listen.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(err)?;
    // As std's `TcpListener::bind` does: a restarted gateway rebinds its port at once.
    socket.set_reuseaddr(true).map_err(err)?;
    socket.bind(listen).map_err(err)?;
    let listener = socket.listen(LISTEN_BACKLOG).map_err(err)?;
    let addr = listener.local_addr().map_err(err)?;
    Ok((listener, addr))
}

/// The peer check of a Unix socket, before anything is read: the kernel's credentials of the
/// connecting process must be in the allow-list. A refused connection is dropped (closed unread),
/// counted and logged; `None` means "serve it".
fn check_peer(stream: UnixStream, peers: &PeerCheck, metrics: &Metrics) -> Option<UnixStream> {
    if !peers.is_set() {
        return Some(stream);
    }
    match stream.peer_cred() {
        Ok(cred) if peers.allows(cred.uid(), cred.gid()) => Some(stream),
        Ok(cred) => {
            metrics.record_peer_refused();
            tracing::warn!(
                peer_uid = cred.uid(),
                peer_gid = cred.gid(),
                peer_pid = cred.pid(),
                "connection closed: peer not allowed"
            );
            None
        }
        Err(e) => {
            metrics.record_peer_refused();
            tracing::warn!(error = %e, "connection closed: peer credentials unavailable");
            None
        }
    }
}

/// Pending connections the kernel queues before `accept`: std's default of 128 made a burst of
/// connects beyond it wait for a SYN retry (about 1 s each); the kernel caps this at somaxconn.
const LISTEN_BACKLOG: u32 = 1024;

/// Runs the agent-facing HTTP/1.1 server with any dispatcher until a stop reason: every request
/// goes through `pipeline`; on a stop, accepting ends, in-flight requests get `drain_timeout`,
/// then the rest are answered at once and the exit line is printed.
pub async fn serve<D: Dispatch>(
    agent: AgentSide,
    pipeline: Pipeline<D>,
    hooks: ServeHooks,
) -> Result<ExitReason, ServeError> {
    let AgentSide {
        listener: config,
        token,
        lifecycle,
        drain_timeout,
        admin,
    } = agent;
    let listener = Bound::new(&config.addr).await?;
    let addr = listener.addr();
    let admin = crate::admin::Admin::bind(admin).await?;
    if let Some(on_bound) = hooks.on_bound {
        on_bound(&addr)?;
    }
    let ready = ReadyLine {
        event: "ready",
        url: addr.url(),
        pid: std::process::id(),
        token: token.generated.then(|| token.token.expose()),
        admin: admin.as_ref().map(crate::admin::Admin::url),
    };
    let ready = ready_json(&ready);
    if let Some(path) = &lifecycle.ready_file {
        write_private_file(path, ready.as_bytes()).map_err(|source| ServeError::ReadyFile {
            path: path.clone(),
            source,
        })?;
    }
    let pipeline = Arc::new(pipeline);
    let (stop_tx, mut stop_rx) = mpsc::channel::<ExitReason>(4);
    if let Some(stop) = hooks.stop {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            let reason = stop.await;
            let _ = stop_tx.send(reason).await;
        });
    }
    pipeline.watch_lifecycle(&lifecycle, stop_tx);
    if let Some(admin) = admin {
        admin.spawn(pipeline.metrics().clone());
    }
    hooks.lines.emit(&ready)?;
    pipeline.metrics().readiness.serving(true);
    tracing::info!(
        listen = %addr,
        to = %pipeline.dispatcher().describe(),
        "ready"
    );

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(SERVER_READ_BUFFER)
        .keep_alive(true);
    let connections = Arc::new(Semaphore::new(config.max_connections));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut conns = JoinSet::new();

    let reason = loop {
        tokio::select! {
            biased;
            reason = stop_rx.recv() => break reason.unwrap_or(ExitReason::Signal),
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            permit = connections.clone().acquire_owned() => {
                let Ok(permit) = permit else { break ExitReason::Signal };
                let accepted = tokio::select! {
                    biased;
                    reason = stop_rx.recv() => break reason.unwrap_or(ExitReason::Signal),
                    accepted = listener.accept() => match accepted {
                        Ok(s) => s,
                        Err(e) => {
                            // EMFILE and friends: back off briefly instead of spinning.
                            tracing::warn!(error = %e, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let conn = Connection {
                    http: &http,
                    pipeline: &pipeline,
                    shutdown: &shutdown_rx,
                    permit,
                };
                match accepted {
                    Accepted::Tcp(stream) => {
                        let _ = stream.set_nodelay(true);
                        conn.spawn(&mut conns, stream);
                    }
                    Accepted::Unix(stream, peers) => {
                        if let Some(stream) = check_peer(stream, peers, pipeline.metrics()) {
                            conn.spawn(&mut conns, stream);
                        }
                    }
                }
            }
        }
    };

    pipeline.metrics().readiness.stopping();
    tracing::info!(reason = reason.as_str(), "shutting down");
    drop(listener);
    let _ = shutdown_tx.send(true);
    let drained = tokio::time::timeout(drain_timeout, drain(&mut conns)).await;
    if drained.is_err() {
        // Deadline: in-flight handlers answer 503/409 now; give them a moment to be written.
        pipeline.pass_deadline();
        if tokio::time::timeout(FLUSH_GRACE, drain(&mut conns))
            .await
            .is_err()
        {
            conns.abort_all();
        }
    }
    hooks
        .lines
        .emit(&pipeline.metrics().exit_line(reason.as_str()))?;
    Ok(reason)
}

/// What a new connection's task needs; [`Connection::spawn`] serves one stream of any kind.
struct Connection<'a, D: Dispatch> {
    http: &'a hyper::server::conn::http1::Builder,
    pipeline: &'a Arc<Pipeline<D>>,
    shutdown: &'a watch::Receiver<bool>,
    permit: tokio::sync::OwnedSemaphorePermit,
}

impl<D: Dispatch> Connection<'_, D> {
    fn spawn<S>(self, conns: &mut JoinSet<()>, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let pipeline = self.pipeline.clone();
        let service = service_fn(move |req: http::Request<Incoming>| {
            let pipeline = pipeline.clone();
            let req = req.map(LingeringBody::new);
            async move { Ok::<_, Infallible>(pipeline.handle(req.into()).await) }
        });
        let conn = self.http.serve_connection(TokioIo::new(stream), service);
        let mut shutdown = self.shutdown.clone();
        let permit = self.permit;
        conns.spawn(async move {
            let _permit = permit;
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = async { let _ = shutdown.wait_for(|s| *s).await; } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

async fn drain(conns: &mut JoinSet<()>) {
    while conns.join_next().await.is_some() {}
}

/// Most a connection's read buffer grows to: a request head (16 KiB of headers plus the request
/// line) must fit, and body chunks are passed on at this size rather than buffered whole, which
/// keeps memory per connection flat under large uploads.
const SERVER_READ_BUFFER: usize = 48 * 1024;

/// Most request-body bytes read and discarded after the bridge stopped reading an agent's body
/// early (docs/reference.md §4.1): enough for an upload a few times the default body limit, so a
/// client that writes its whole body before reading (Node's `http`, `fetch`) sees the answer.
pub const LINGER_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Longest time spent reading and discarding that rest, from the moment the bridge let go of it.
pub const LINGER_MAX_TIME: Duration = Duration::from_secs(10);

/// The agent's request body on every agent-facing role. When whoever reads it (the pipeline, a
/// dispatcher, the upstream client) lets go of it before its end — a denial such as 413
/// `body_too_large`, a body that grew past the limit, an upstream that answered early — the rest
/// is read and discarded, up to [`LINGER_MAX_BYTES`] and [`LINGER_MAX_TIME`], before hyper may
/// close the connection, like a lingering close. Without it the connection closes with unread
/// bytes, the kernel resets it, and a client still writing gets `EPIPE` instead of the answer.
/// Nothing read here goes anywhere.
pub struct LingeringBody {
    inner: Option<Incoming>,
    ended: bool,
}

impl LingeringBody {
    fn new(inner: Incoming) -> LingeringBody {
        LingeringBody {
            inner: Some(inner),
            ended: false,
        }
    }
}

impl http_body::Body for LingeringBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, hyper::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return std::task::Poll::Ready(None);
        };
        let polled = std::pin::Pin::new(inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None | Some(Err(_)))) {
            self.ended = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.ended || self.inner.as_ref().map_or(true, |b| b.is_end_stream())
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| http_body::SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Drop for LingeringBody {
    fn drop(&mut self) {
        use http_body::Body;
        let Some(body) = self.inner.take() else {
            return;
        };
        if self.ended || body.is_end_stream() {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(linger(body));
        }
    }
}

/// Reads and discards the rest of a body, within the linger bounds; returns the bytes discarded.
async fn linger(mut body: Incoming) -> u64 {
    use http_body_util::BodyExt;
    let mut discarded = 0u64;
    let read = async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                discarded += data.len() as u64;
                if discarded >= LINGER_MAX_BYTES {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_MAX_TIME, read).await;
    tracing::debug!(discarded, "agent's unread request body discarded");
    discarded
}
