//! The agent-facing server: accept loop, per-request pipeline, graceful drain, lifecycle.
//!
//! Promise: the listener binds before the readiness line is printed (and nothing is printed on
//! stdout before it); at most `max_connections` connections are open; a client that does not
//! finish its request head in time is dropped while others are served; on a signal, lifeline EOF
//! or a lifetime/idle limit, accepting stops, in-flight requests get `drain_timeout` to finish, the
//! rest are answered 503 `shutting_down` (or 409 for forwarded mutations), and one exit-summary
//! line is printed.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;

use crate::auth::BridgeToken;
use crate::config::{Config, Lifecycle, Limits};
use crate::lifecycle::{self, Activity};
use crate::limits::{BodyState, InFlight, InFlightGuard, RateLimit};
use crate::policy::{Decision, Deny, DenyCode, LocalEndpoint, Policy, RequestHead, TokenCheck};
use crate::proxy::respond::{self, X_REQUEST_ID};
use crate::proxy::{BridgeBody, Forwarded, Forwarder};
use crate::telemetry::{self, AccessRecord, Logged, Metrics};

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
    #[error("cannot write ready file {path}: {source}")]
    ReadyFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write to stdout: {0}")]
    Stdout(std::io::Error),
}

/// The readiness line of SPEC §3, fields in the documented order.
#[derive(serde::Serialize)]
struct ReadyLine<'a> {
    event: &'static str,
    url: String,
    pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
}

/// Where allowed requests go: the upstream (`serve`) or the relay (gateway transports). The
/// server does everything before and after: policy, limits, logs, drain.
pub trait Dispatch: Send + Sync + 'static {
    /// Handles one allowed request. `deadline` resolves when the drain deadline passes; the
    /// dispatcher must then answer at once (503 `shutting_down`, or 409 for a dispatched mutation).
    fn dispatch(
        &self,
        method: Method,
        allow: crate::policy::Allow,
        body: Incoming,
        req_state: Arc<BodyState>,
        deadline: crate::limits::BoxFuture<()>,
    ) -> impl std::future::Future<Output = Result<Forwarded, Deny>> + Send;

    /// A one-line description for the startup log.
    fn describe(&self) -> String;
}

impl Dispatch for Forwarder {
    fn dispatch(
        &self,
        method: Method,
        allow: crate::policy::Allow,
        body: Incoming,
        req_state: Arc<BodyState>,
        deadline: crate::limits::BoxFuture<()>,
    ) -> impl std::future::Future<Output = Result<Forwarded, Deny>> + Send {
        self.forward(method, allow, body, req_state, deadline)
    }

    fn describe(&self) -> String {
        format!("upstream {}", self.upstream().display())
    }
}

/// What the server needs besides its dispatcher.
#[derive(Debug)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub token: BridgeToken,
    /// Whether the token was generated (then it is printed on the ready line).
    pub token_generated: bool,
    pub policy: Policy,
    pub limits: Limits,
    pub lifecycle: Lifecycle,
}

/// Shared state of the running bridge.
struct Bridge<D> {
    policy: Policy,
    token: BridgeToken,
    dispatcher: D,
    metrics: Arc<Metrics>,
    rate: RateLimit,
    in_flight: InFlight,
    /// Turns true when the drain deadline passes.
    deadline: watch::Receiver<bool>,
    activity: Arc<Activity>,
    ids: telemetry::RequestIds,
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
    /// stdout, where a spawner reads them (SPEC §3).
    #[default]
    Stdout,
    /// stderr: for a gateway whose stdout is a protocol channel (stdio transport, SPEC §6.2).
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

/// What a gateway adds to [`serve_with`]: where its lines go and a stop reason of its own.
#[derive(Default)]
pub struct ServeHooks {
    pub lines: LineSink,
    /// Resolves when the server must stop for a reason of the dispatcher (e.g. the transport to
    /// the relay died); the server then drains as for any other stop reason.
    pub stop: Option<crate::limits::BoxFuture<ExitReason>>,
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
pub async fn run(config: Config) -> Result<ExitReason, ServeError> {
    let metrics = Arc::new(Metrics::default());
    let Config {
        listen,
        target,
        token,
        token_generated,
        policy,
        limits,
        lifecycle,
        ..
    } = config;
    let forwarder = Forwarder::new(target, policy.headers.clone(), &limits, metrics.clone());
    let settings = ServerSettings {
        listen,
        token,
        token_generated,
        policy,
        limits,
        lifecycle,
    };
    serve_with(settings, forwarder, metrics, |_| Ok(())).await
}

/// Binds the listener. Separate so that callers can report a bind failure before anything else.
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

/// Pending connections the kernel queues before `accept`: std's default of 128 made a burst of
/// connects beyond it wait for a SYN retry (about 1 s each); the kernel caps this at somaxconn.
const LISTEN_BACKLOG: u32 = 1024;

/// Runs the agent-facing server with any dispatcher until a stop reason. `on_bound` runs after
/// the listener is bound and before the readiness line (the queue gateway writes `ready.json`).
pub async fn serve_with<D: Dispatch>(
    settings: ServerSettings,
    dispatcher: D,
    metrics: Arc<Metrics>,
    on_bound: impl FnOnce(SocketAddr) -> Result<(), ServeError>,
) -> Result<ExitReason, ServeError> {
    serve_until(
        settings,
        dispatcher,
        metrics,
        on_bound,
        ServeHooks::default(),
    )
    .await
}

/// [`serve_with`] plus [`ServeHooks`]: the lines may go to stderr and the dispatcher may end
/// the server (the stdio gateway stops when its session with the relay ends).
pub async fn serve_until<D: Dispatch>(
    settings: ServerSettings,
    dispatcher: D,
    metrics: Arc<Metrics>,
    on_bound: impl FnOnce(SocketAddr) -> Result<(), ServeError>,
    hooks: ServeHooks,
) -> Result<ExitReason, ServeError> {
    let (listener, addr) = bind(settings.listen)?;
    let (deadline_tx, deadline_rx) = watch::channel(false);
    let in_flight_gauge = Arc::new(AtomicU64::new(0));
    let ServerSettings {
        token,
        token_generated,
        policy,
        limits,
        lifecycle,
        ..
    } = settings;
    on_bound(addr)?;
    let ready = ReadyLine {
        event: "ready",
        url: format!("http://{addr}"),
        pid: std::process::id(),
        token: token_generated.then(|| token.expose()),
    };
    let ready = serde_json::to_string(&ready).unwrap_or_default();
    if let Some(path) = &lifecycle.ready_file {
        write_private_file(path, ready.as_bytes()).map_err(|source| ServeError::ReadyFile {
            path: path.clone(),
            source,
        })?;
    }
    let bridge = Arc::new(Bridge {
        policy,
        token,
        dispatcher,
        metrics: metrics.clone(),
        rate: RateLimit::new(limits.rate),
        in_flight: InFlight::new(limits.max_in_flight, in_flight_gauge.clone()),
        deadline: deadline_rx,
        activity: Arc::default(),
        ids: telemetry::RequestIds::default(),
    });
    let (stop_tx, mut stop_rx) = mpsc::channel::<ExitReason>(4);
    if let Some(stop) = hooks.stop {
        let stop_tx = stop_tx.clone();
        tokio::spawn(async move {
            let reason = stop.await;
            let _ = stop_tx.send(reason).await;
        });
    }
    lifecycle::spawn_watchers(
        &lifecycle,
        bridge.activity.clone(),
        move || in_flight_gauge.load(Ordering::Acquire) > 0,
        stop_tx,
    );
    hooks.lines.emit(&ready)?;
    tracing::info!(
        listen = %addr,
        to = %bridge.dispatcher.describe(),
        "ready"
    );

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(SERVER_READ_BUFFER)
        .keep_alive(true);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut conns = JoinSet::new();

    let reason = loop {
        tokio::select! {
            biased;
            reason = stop_rx.recv() => break reason.unwrap_or(ExitReason::Signal),
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            permit = connections.clone().acquire_owned() => {
                let Ok(permit) = permit else { break ExitReason::Signal };
                let (stream, _peer) = tokio::select! {
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
                let _ = stream.set_nodelay(true);
                let bridge = bridge.clone();
                let service = service_fn(move |req| {
                    let bridge = bridge.clone();
                    async move { Ok::<_, Infallible>(bridge.handle(req).await) }
                });
                let conn = http.serve_connection(TokioIo::new(stream), service);
                let mut shutdown = shutdown_rx.clone();
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
    };

    tracing::info!(reason = reason.as_str(), "shutting down");
    drop(listener);
    let _ = shutdown_tx.send(true);
    let drained = tokio::time::timeout(limits.drain_timeout, drain(&mut conns)).await;
    if drained.is_err() {
        // Deadline: in-flight handlers answer 503/409 now; give them a moment to be written.
        let _ = deadline_tx.send(true);
        if tokio::time::timeout(FLUSH_GRACE, drain(&mut conns))
            .await
            .is_err()
        {
            conns.abort_all();
        }
    }
    hooks.lines.emit(&metrics.exit_line(reason.as_str()))?;
    Ok(reason)
}

async fn drain(conns: &mut JoinSet<()>) {
    while conns.join_next().await.is_some() {}
}

/// The request target as received: origin-form path+query, `*`, or the absolute URI.
fn raw_target(uri: &http::Uri) -> std::borrow::Cow<'_, str> {
    if uri.scheme().is_some() || uri.authority().is_some() {
        return std::borrow::Cow::Owned(uri.to_string());
    }
    std::borrow::Cow::Borrowed(
        uri.path_and_query()
            .map(|pq| pq.as_str())
            .unwrap_or_else(|| uri.path()),
    )
}

impl<D: Dispatch> Bridge<D> {
    /// The per-request pipeline, in SPEC §4 order: policy (token, method, target, route,
    /// framing, content type, size, headers), then rate and load limits, then forwarding.
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Response<Logged<Option<InFlightGuard>>> {
        self.metrics.requests.fetch_add(1, Ordering::Relaxed);
        self.activity.touch();
        let request_id = self.ids.next();
        let (parts, body) = req.into_parts();
        let target = raw_target(&parts.uri);
        let head = RequestHead {
            method: &parts.method,
            target: &target,
            headers: &parts.headers,
        };
        let decision = self
            .policy
            .evaluate(&head, TokenCheck::Require(&self.token));
        let mut record = AccessRecord::new(request_id, parts.method.clone(), self.metrics.clone());
        let mut slot = None;
        let response: Response<BridgeBody> = match decision {
            Decision::Local(LocalEndpoint::Health) => respond::json_ok(b"{\"status\":\"ok\"}"),
            Decision::Local(LocalEndpoint::Metrics) => respond::metrics_text(self.metrics.render()),
            Decision::Deny(deny) => {
                record.code = Some(deny.code);
                respond::deny_response(&deny)
            }
            Decision::Allow(allow) => {
                record.route = Some(allow.route_id.clone());
                record.query_keys = telemetry::query_keys(&allow.target);
                if let Err(retry_after) = self.rate.check() {
                    record.code = Some(DenyCode::RateLimited);
                    respond::rate_limited(retry_after)
                } else if let Some(guard) = self.in_flight.try_enter() {
                    slot = Some(guard);
                    let req_state = Arc::new(BodyState::default());
                    record.req_state = Some(req_state.clone());
                    let deadline = self.deadline.clone();
                    match self
                        .dispatcher
                        .dispatch(
                            parts.method.clone(),
                            allow,
                            body,
                            req_state,
                            Box::pin(deadline_passed(deadline)),
                        )
                        .await
                    {
                        Ok(fwd) => {
                            record.upstream_time = Some(fwd.upstream_time);
                            fwd.response
                        }
                        Err(deny) => {
                            record.code = Some(deny.code);
                            respond::deny_response(&deny)
                        }
                    }
                } else {
                    let deny = Deny::new(DenyCode::Overloaded, "Too many requests in flight");
                    record.code = Some(deny.code);
                    respond::deny_response(&deny)
                }
            }
        };
        let (mut parts, inner) = response.into_parts();
        if let Ok(v) = http::HeaderValue::from_str(&record.request_id) {
            parts.headers.insert(X_REQUEST_ID, v);
        }
        record.status = parts.status.as_u16();
        self.metrics
            .record_outcome(record.route.as_ref(), record.status, record.code);
        Response::from_parts(parts, Logged::new(inner, record, slot))
    }
}

/// Most a connection's read buffer grows to: a request head (16 KiB of headers plus the request
/// line) must fit, and body chunks are passed on at this size rather than buffered whole, which
/// keeps memory per connection flat under large uploads.
const SERVER_READ_BUFFER: usize = 48 * 1024;

/// Resolves when the drain deadline passes.
async fn deadline_passed(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|d| *d).await;
}
