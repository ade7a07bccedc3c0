//! The stdio gateway (inside the sandbox): the agent-facing HTTP/1.1 server of `serve`, whose
//! dispatcher sends every allowed request as one HTTP/2 stream over this process's stdout/stdin.
//!
//! Promise: the port is bound before the READY line; stdout carries the READY line and then only
//! HTTP/2 (readiness, exit summary and logs go to stderr); each stream carries the checked target
//! byte for byte, `authorization: Bearer <token>` and the allowlisted headers, with the body
//! streamed under the route's limit. When the session ends, requests never sent are answered 503
//! `bridge_unavailable`, unsafe requests that may have reached the relay 409
//! `outcome_indeterminate`, and the process exits non-zero so that the relay restarts it.
//! Attacks defended: the agent cannot reach the relay without passing the same policy as `serve`;
//! the token and nonce never come from argv.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_LENGTH};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::sync::{oneshot, watch};

use super::handshake::{self, Handshake};
use super::io::{Duplex, ProcessStdin, ProcessStdout};
use super::{
    ready, AUTHORITY, CONNECTION_WINDOW_BYTES, MAX_CONCURRENT_STREAMS, MAX_HEADER_LIST_BYTES,
    PING_INTERVAL, PING_TIMEOUT, STREAM_WINDOW_BYTES,
};
use crate::cli::{self, GatewayArgs, Lifeline, ProxyOptions};
use crate::config::{self, Config};
use crate::limits::{BodyState, BoxFuture, GuardedBody};
use crate::policy::{Allow, BodyKind, Deny, DenyCode};
use crate::proxy::respond::{X_BRIDGE_ERROR, X_OUTCOME, X_REQUEST_ID};
use crate::proxy::{unknown_outcome, BridgeBody, Forwarded};
use crate::server::{self, Dispatch, ExitReason, LineSink, ServeHooks, ServerSettings};
use crate::telemetry::{self, Metrics};
use crate::transport::TransportError;

/// How long the gateway waits for the relay's response head. Longer than the relay's default
/// `upstream_timeout` (30 s) so that the relay's own, more precise answer (504/409) wins the race.
pub const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(35);
/// How long a request may wait for the session to come up after the listener was bound (the
/// session starts immediately after the READY line; only a wedged stdout takes longer).
const SESSION_START_WAIT: Duration = Duration::from_secs(10);
/// When restarted by the relay, the previous gateway may still hold the port for a moment (it
/// exits as soon as it notices its session ended): wait this long for the port to be free.
const PORT_WAIT: Duration = Duration::from_secs(5);
/// Pause between attempts to bind a port that is still in use.
const PORT_RETRY_INTERVAL: Duration = Duration::from_millis(50);

// Paperclip's gateway environment (SPEC §6), read only where no flag or `CALLBACK_BRIDGE_*`
// variable gave the value.
/// Listen host (default `127.0.0.1`), used together with [`PAPERCLIP_PORT_ENV`].
const PAPERCLIP_HOST_ENV: &str = "PAPERCLIP_BRIDGE_HOST";
/// Listen port; makes `listen` = `PAPERCLIP_BRIDGE_HOST:PAPERCLIP_BRIDGE_PORT`.
const PAPERCLIP_PORT_ENV: &str = "PAPERCLIP_BRIDGE_PORT";
/// `max_body_bytes`.
const PAPERCLIP_MAX_BODY_ENV: &str = "PAPERCLIP_BRIDGE_MAX_BODY_BYTES";
/// `--response-timeout`, in milliseconds.
const PAPERCLIP_RESPONSE_TIMEOUT_ENV: &str = "PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS";

/// `callback-bridge gateway --transport stdio`.
pub fn run(args: GatewayArgs) -> Result<(), TransportError> {
    let GatewayArgs {
        handshake,
        response_timeout,
        mut options,
        ..
    } = args;
    apply_paperclip_aliases(&mut options)?;
    let options = options.with_file()?;
    if options.lifeline == Some(Lifeline::Stdin) {
        return Err(TransportError::Usage(
            "--lifeline stdin cannot be used with --transport stdio: stdin carries the session, \
             whose end already stops the gateway"
                .into(),
        ));
    }
    telemetry::init_logging(&config::log_config(&options));
    let response_timeout = match response_timeout {
        Some(d) if !d.0.is_zero() => d.0,
        Some(_) => {
            return Err(TransportError::Usage(
                "--response-timeout must be > 0".into(),
            ))
        }
        None => paperclip_response_timeout()?.unwrap_or(DEFAULT_RESPONSE_TIMEOUT),
    };
    let config = Config::load(options)?;
    if config.listen.port() == 0 {
        return Err(TransportError::Usage(
            "the stdio gateway needs a fixed port (--listen 127.0.0.1:PORT or \
             PAPERCLIP_BRIDGE_PORT): the agent's URL must stay the same when the relay restarts it"
                .into(),
        ));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| TransportError::Fatal(format!("cannot start the runtime: {e}")))?;
    let mode = handshake.unwrap_or(cli::Handshake::Env);
    let result = runtime.block_on(serve(config, mode, response_timeout));
    // A blocking stdin read (terminal fallback) must not keep the process alive.
    runtime.shutdown_background();
    result
}

/// `PAPERCLIP_BRIDGE_HOST`/`PORT` → `listen`, `PAPERCLIP_BRIDGE_MAX_BODY_BYTES` → `max_body_bytes`.
fn apply_paperclip_aliases(opts: &mut ProxyOptions) -> Result<(), TransportError> {
    if opts.listen.is_none() {
        if let Some(port) = env_nonempty(PAPERCLIP_PORT_ENV) {
            let port: u16 = port
                .trim()
                .parse()
                .map_err(|_| TransportError::Usage(format!("invalid {PAPERCLIP_PORT_ENV}")))?;
            let host = env_nonempty(PAPERCLIP_HOST_ENV).unwrap_or_else(|| "127.0.0.1".into());
            opts.listen = Some(if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            });
        }
    }
    if opts.max_body_bytes.is_none() {
        if let Some(max) = env_nonempty(PAPERCLIP_MAX_BODY_ENV) {
            opts.max_body_bytes =
                Some(max.trim().parse().map_err(|_| {
                    TransportError::Usage(format!("invalid {PAPERCLIP_MAX_BODY_ENV}"))
                })?);
        }
    }
    Ok(())
}

fn paperclip_response_timeout() -> Result<Option<Duration>, TransportError> {
    env_nonempty(PAPERCLIP_RESPONSE_TIMEOUT_ENV)
        .map(|ms| match ms.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
            _ => Err(TransportError::Usage(format!(
                "invalid {PAPERCLIP_RESPONSE_TIMEOUT_ENV}"
            ))),
        })
        .transpose()
}

fn env_nonempty(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Token and nonce from the environment (`--handshake env`).
fn handshake_from_env(config: &Config) -> Result<Handshake, TransportError> {
    let token = if config.token_generated {
        // Config generated one because none was configured; a gateway must be given its token.
        let value = env_nonempty(handshake::PAPERCLIP_TOKEN_ENV).ok_or_else(|| {
            TransportError::Usage(format!(
                "no bridge token: set {} (or {}), or use --handshake stdin",
                handshake::TOKEN_ENV,
                handshake::PAPERCLIP_TOKEN_ENV
            ))
        })?;
        crate::auth::BridgeToken::new(value)
    } else {
        config.token.clone()
    };
    let nonce = env_nonempty(handshake::NONCE_ENV)
        .or_else(|| env_nonempty(handshake::PAPERCLIP_NONCE_ENV))
        .ok_or_else(|| {
            TransportError::Usage(format!(
                "no session nonce: set {} (or {}), or use --handshake stdin",
                handshake::NONCE_ENV,
                handshake::PAPERCLIP_NONCE_ENV
            ))
        })?;
    if !handshake::valid_nonce(&nonce) {
        return Err(TransportError::Usage(format!(
            "invalid {}: at most {} printable characters",
            handshake::NONCE_ENV,
            handshake::MAX_NONCE_LEN
        )));
    }
    Ok(Handshake { token, nonce })
}

/// Waits (bounded) until `addr` can be bound: a gateway restarted by the relay may find its
/// predecessor still holding the port for a moment.
async fn wait_for_port(addr: std::net::SocketAddr) {
    let deadline = Instant::now() + PORT_WAIT;
    loop {
        match std::net::TcpListener::bind(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                tokio::time::sleep(PORT_RETRY_INTERVAL).await;
            }
            // Free, or another error that the real bind will report.
            _ => return,
        }
    }
}

async fn serve(
    config: Config,
    mode: cli::Handshake,
    response_timeout: Duration,
) -> Result<(), TransportError> {
    let stdin = ProcessStdin::open();
    let stdout = ProcessStdout::open();
    let (hs, stdin, prefix) = match mode {
        cli::Handshake::Env => (handshake_from_env(&config)?, stdin, Bytes::new()),
        cli::Handshake::Stdin => handshake::read_line(stdin).await.map_err(|e| match e {
            handshake::HandshakeError::Malformed(_) | handshake::HandshakeError::TooLong => {
                TransportError::Usage(format!("--handshake stdin: {e}"))
            }
            _ => TransportError::Fatal(format!("--handshake stdin: {e}")),
        })?,
    };
    let Config {
        listen,
        policy,
        limits,
        lifecycle,
        ..
    } = config;
    let mut authorization = HeaderValue::from_str(&format!("Bearer {}", hs.token.expose()))
        .map_err(|_| {
            TransportError::Usage("the bridge token is not a valid header value".into())
        })?;
    authorization.set_sensitive(true);

    let (state_tx, state_rx) = watch::channel(Session::Starting);
    let (lost_tx, lost_rx) = oneshot::channel::<()>();
    let dispatcher = StdioDispatch {
        session: state_rx,
        authorization,
        response_timeout,
        body_idle_timeout: limits.body_idle_timeout,
        max_body_bytes: limits.max_body_bytes,
    };
    let settings = ServerSettings {
        listen,
        token: hs.token,
        token_generated: false,
        policy,
        limits,
        lifecycle,
    };
    let channel = Channel {
        stdin,
        stdout,
        prefix,
        nonce: hs.nonce,
    };
    let on_bound = move |_addr| {
        tokio::spawn(run_session(channel, state_tx, lost_tx));
        Ok(())
    };
    let hooks = ServeHooks {
        lines: LineSink::Stderr,
        stop: Some(Box::pin(async move {
            let _ = lost_rx.await;
            ExitReason::Transport
        })),
    };
    wait_for_port(listen).await;
    let metrics = Arc::new(Metrics::default());
    match server::serve_until(settings, dispatcher, metrics, on_bound, hooks).await? {
        ExitReason::Transport => Err(TransportError::Fatal(
            "the HTTP/2 session with the relay ended".into(),
        )),
        _ => Ok(()),
    }
}

/// This process's stdio, before the session starts on it.
struct Channel {
    stdin: ProcessStdin,
    stdout: ProcessStdout,
    /// Bytes read past the handshake line (normally none).
    prefix: Bytes,
    nonce: String,
}

/// The session as the dispatcher sees it.
#[derive(Clone)]
enum Session {
    Starting,
    Up(SendRequest<BridgeBody>),
    Lost,
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot write the READY line: {0}")]
    Ready(std::io::Error),
    #[error(transparent)]
    Http2(#[from] hyper::Error),
}

/// Writes READY, runs the HTTP/2 client until the session ends, then reports the loss.
async fn run_session(channel: Channel, state: watch::Sender<Session>, lost: oneshot::Sender<()>) {
    match drive_session(channel, &state).await {
        Ok(()) => tracing::warn!("the relay closed the session"),
        Err(e) => tracing::error!(error = %e, "the session with the relay failed"),
    }
    state.send_replace(Session::Lost);
    let _ = lost.send(());
}

async fn drive_session(
    channel: Channel,
    state: &watch::Sender<Session>,
) -> Result<(), SessionError> {
    let Channel {
        stdin,
        mut stdout,
        prefix,
        nonce,
    } = channel;
    stdout
        .write_all(ready::encode(&nonce).as_bytes())
        .await
        .map_err(SessionError::Ready)?;
    stdout.flush().await.map_err(SessionError::Ready)?;
    let io = TokioIo::new(Duplex::new(prefix, stdin, stdout));
    let (sender, connection) = client_builder().handshake(io).await?;
    state.send_replace(Session::Up(sender));
    tracing::info!("HTTP/2 session with the relay started");
    connection.await?;
    Ok(())
}

fn client_builder() -> hyper::client::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        // Never open more streams than the relay serves, even before its SETTINGS arrive.
        .initial_max_send_streams(MAX_CONCURRENT_STREAMS as usize)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .max_header_list_size(MAX_HEADER_LIST_BYTES)
        .keep_alive_interval(PING_INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT)
        .keep_alive_while_idle(true);
    builder
}

/// Sends allowed requests to the relay, one HTTP/2 stream each.
struct StdioDispatch {
    session: watch::Receiver<Session>,
    /// `Bearer <token>`, marked sensitive (never HPACK-indexed).
    authorization: HeaderValue,
    response_timeout: Duration,
    body_idle_timeout: Duration,
    max_body_bytes: u64,
}

impl Dispatch for StdioDispatch {
    fn dispatch(
        &self,
        method: Method,
        allow: Allow,
        body: Incoming,
        req_state: Arc<BodyState>,
        deadline: BoxFuture<()>,
    ) -> impl std::future::Future<Output = Result<Forwarded, Deny>> + Send {
        self.send(method, allow, body, req_state, deadline)
    }

    fn describe(&self) -> String {
        "relay over stdio (HTTP/2)".to_owned()
    }
}

/// The request never reached the relay: safe to retry, whatever the method.
fn not_dispatched() -> Deny {
    Deny::new(
        DenyCode::BridgeUnavailable,
        "The bridge relay is not connected",
    )
}

/// Whether the relay refused the stream (RFC 9113 §8.7: REFUSED_STREAM means not processed).
fn refused(err: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = e.source();
    }
    false
}

impl StdioDispatch {
    /// The session's sender once it is up; `None` if it is lost (or never came up).
    async fn sender(&self) -> Option<SendRequest<BridgeBody>> {
        // Fast path: the session is up (or lost) already; no timer, no wait.
        match &*self.session.borrow() {
            Session::Up(sender) => return Some(sender.clone()),
            Session::Lost => return None,
            Session::Starting => {}
        }
        let mut rx = self.session.clone();
        let waited = tokio::time::timeout(SESSION_START_WAIT, async {
            rx.wait_for(|s| !matches!(s, Session::Starting))
                .await
                .ok()
                .map(|state| state.clone())
        })
        .await;
        match waited {
            Ok(Some(Session::Up(sender))) => Some(sender),
            _ => None,
        }
    }

    async fn send(
        &self,
        method: Method,
        allow: Allow,
        body: Incoming,
        req_state: Arc<BodyState>,
        deadline: BoxFuture<()>,
    ) -> Result<Forwarded, Deny> {
        let Some(mut sender) = self.sender().await else {
            return Err(not_dispatched());
        };
        let is_head = method == Method::HEAD;
        let req = self.stream_request(method.clone(), allow, body, req_state.clone())?;
        let started = Instant::now();
        let pending = sender.try_send_request(req);
        let result = tokio::select! {
            r = tokio::time::timeout(self.response_timeout, pending) => r,
            () = deadline => {
                return Err(unknown_outcome(
                    &method,
                    DenyCode::ShuttingDown,
                    "The bridge is shutting down",
                ));
            }
        };
        let upstream_time = started.elapsed();
        let response = match result {
            Ok(Ok(response)) => response,
            _ if req_state.failed() => return Err(crate::proxy::body_failure(&req_state)),
            Err(_elapsed) => {
                return Err(unknown_outcome(
                    &method,
                    DenyCode::BridgeTimeout,
                    "The bridge relay did not answer in time",
                ))
            }
            Ok(Err(err)) => {
                if err.message().is_some() || refused(err.error()) {
                    return Err(not_dispatched());
                }
                tracing::warn!(error = %err.error(), "stream to the relay failed");
                return Err(unknown_outcome(
                    &method,
                    DenyCode::BridgeUnavailable,
                    "The session with the bridge relay ended before a response",
                ));
            }
        };
        Ok(Forwarded {
            response: self.agent_response(response, is_head),
            upstream_time,
        })
    }

    /// The HTTP/2 request for one allowed agent request: checked target, token, allowlisted
    /// headers, the agent's body (streamed, under the route's limit).
    fn stream_request(
        &self,
        method: Method,
        mut allow: Allow,
        body: Incoming,
        req_state: Arc<BodyState>,
    ) -> Result<Request<BridgeBody>, Deny> {
        let uri = Uri::builder()
            .scheme("http")
            .authority(AUTHORITY)
            .path_and_query(allow.target.as_str())
            .build()
            .map_err(|_| Deny::new(DenyCode::InvalidPath, "Request target cannot be forwarded"))?;
        let body: BridgeBody = match allow.body {
            BodyKind::None => Empty::new().map_err(|never| match never {}).boxed(),
            BodyKind::Length(_) | BodyKind::Chunked => GuardedBody::new(
                body,
                allow.max_body_bytes,
                self.body_idle_timeout,
                req_state,
            )
            .boxed(),
        };
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        let headers = req.headers_mut();
        *headers = std::mem::take(&mut allow.headers);
        headers.insert(AUTHORIZATION, self.authorization.clone());
        if let BodyKind::Length(n) = allow.body {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
        Ok(req)
    }

    /// The relay's answer as the agent gets it: a response marked indeterminate becomes 409
    /// (SPEC §5, §6); the body is streamed under the size and idle limits.
    fn agent_response(&self, response: Response<Incoming>, is_head: bool) -> Response<BridgeBody> {
        let (parts, incoming) = response.into_parts();
        let mut headers = HeaderMap::with_capacity(parts.headers.len());
        for (name, value) in &parts.headers {
            // Framing is the HTTP/1.1 server's business (except a HEAD's declared length), and
            // the request id is the gateway's own.
            if (name == CONTENT_LENGTH && !is_head) || name == X_REQUEST_ID {
                continue;
            }
            headers.append(name.clone(), value.clone());
        }
        let mut status = parts.status;
        let indeterminate = headers
            .get(X_OUTCOME)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"indeterminate"));
        if indeterminate {
            status = StatusCode::CONFLICT;
            if !headers.contains_key(X_BRIDGE_ERROR) {
                headers.insert(
                    X_BRIDGE_ERROR,
                    HeaderValue::from_static(DenyCode::OutcomeIndeterminate.as_str()),
                );
            }
        }
        // A denial the relay made closes the agent's connection exactly as `serve` would.
        let closes = headers
            .get(X_BRIDGE_ERROR)
            .and_then(|v| {
                DenyCode::ALL
                    .iter()
                    .find(|c| c.as_str().as_bytes() == v.as_bytes())
            })
            .is_some_and(|code| code.status() == status && code.closes_connection());
        if closes {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        let body = GuardedBody::new(
            incoming,
            self.max_body_bytes,
            self.body_idle_timeout,
            Arc::new(BodyState::default()),
        )
        .boxed();
        let mut out = Response::new(body);
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        out
    }
}
