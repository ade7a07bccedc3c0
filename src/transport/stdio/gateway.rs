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
use http::header::{HeaderValue, AUTHORIZATION, CONTENT_LENGTH};
use http::{Method, Request, Response, Uri};
use http_body_util::BodyExt;
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
use crate::body::{self, BodyState, BoxError, BridgeBody, GuardedBody};
use crate::config::{ListenAddr, StdioGatewayConfig, StdioHandshake, TokenConfig};
use crate::dispatch::{relay_answer, Allowed, Dispatch, ForwardError, Forwarded, Hop, RequestBody};
use crate::lifecycle::ExitReason;
use crate::pipeline::{LocalEndpoints, Pipeline, PipelineSettings};
use crate::policy::{Allow, BodyKind, HeaderRules};
use crate::server::{self, AgentSide, LineSink, ServeHooks};
use crate::telemetry::Metrics;
use crate::transport::TransportError;
use crate::unix_socket::{self, Occupant};

/// How long a request may wait for the session to come up after the listener was bound (the
/// session starts immediately after the READY line; only a wedged stdout takes longer).
const SESSION_START_WAIT: Duration = Duration::from_secs(10);
/// When restarted by the relay, the previous gateway may still hold the port (or socket) for a
/// moment (it exits as soon as it notices its session ended): wait this long for it to be free.
const PORT_WAIT: Duration = Duration::from_secs(5);
/// Pause between attempts to bind a port that is still in use.
const PORT_RETRY_INTERVAL: Duration = Duration::from_millis(50);

/// Waits (bounded) until `addr` can be bound: a gateway restarted by the relay may find its
/// predecessor still holding the port, or still accepting on the socket, for a moment. After the
/// wait the real bind decides (a socket still live then is refused).
async fn wait_for_address(addr: &ListenAddr) {
    let deadline = Instant::now() + PORT_WAIT;
    loop {
        let busy = match addr {
            ListenAddr::Tcp(addr) => matches!(
                std::net::TcpListener::bind(addr),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse
            ),
            ListenAddr::Unix(unix) => {
                matches!(unix_socket::probe(&unix.path).await, Occupant::Live)
            }
        };
        if !busy || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(PORT_RETRY_INTERVAL).await;
    }
}

/// `callback-bridge gateway --transport stdio`: serves the agent until the session with the
/// relay ends (an error: the relay restarts the gateway) or a stop reason.
pub async fn run(config: StdioGatewayConfig) -> Result<(), TransportError> {
    let StdioGatewayConfig {
        listener,
        common,
        handshake: source,
        response_timeout,
    } = config;
    let stdin = ProcessStdin::open();
    let stdout = ProcessStdout::open();
    let (hs, stdin, prefix) = match source {
        StdioHandshake::Env { token, nonce } => (Handshake { token, nonce }, stdin, Bytes::new()),
        StdioHandshake::Stdin => handshake::read_line(stdin).await.map_err(|e| match e {
            handshake::HandshakeError::Malformed(_) | handshake::HandshakeError::TooLong => {
                TransportError::HandshakeInput(e)
            }
            _ => TransportError::Handshake(e),
        })?,
    };
    let mut authorization = HeaderValue::from_str(&format!("Bearer {}", hs.token.expose()))
        .map_err(|_| {
            TransportError::HandshakeInput(handshake::HandshakeError::Malformed(
                "the bridge token is not a valid header value",
            ))
        })?;
    authorization.set_sensitive(true);

    let (state_tx, state_rx) = watch::channel(Session::Starting);
    let (lost_tx, lost_rx) = oneshot::channel::<()>();
    let metrics = Arc::new(Metrics::default());
    let dispatcher = StdioDispatch {
        session: state_rx,
        authorization,
        response_timeout,
        body_idle_timeout: common.limits.body_idle_timeout,
        max_body_bytes: common.limits.max_body_bytes,
        response_headers: common.policy.headers.clone(),
    };
    let pipeline = Pipeline::new(
        PipelineSettings::new(&common, Some(hs.token.clone()), LocalEndpoints::Answer),
        dispatcher,
        metrics,
    );
    let channel = Channel {
        stdin,
        stdout,
        prefix,
        nonce: hs.nonce,
    };
    let hooks = ServeHooks {
        lines: LineSink::Stderr,
        stop: Some(Box::pin(async move {
            let _ = lost_rx.await;
            ExitReason::Transport
        })),
        on_bound: Some(Box::new(move |_addr| {
            tokio::spawn(run_session(channel, state_tx, lost_tx));
            Ok(())
        })),
    };
    wait_for_address(&listener.addr).await;
    let token = TokenConfig {
        token: hs.token,
        generated: false,
    };
    let agent = AgentSide::new(listener, token, common);
    match server::serve(agent, pipeline, hooks).await? {
        ExitReason::Transport => Err(TransportError::SessionEnded),
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
        // A clean close is the relay's own doing (it is stopping): no fault to warn about.
        Ok(()) => tracing::info!("the relay closed the session"),
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
    /// The response-header allowlist the relay's answers pass through.
    response_headers: HeaderRules,
}

impl Dispatch for StdioDispatch {
    fn dispatch<B: RequestBody>(
        &self,
        req: Allowed<B>,
    ) -> impl std::future::Future<Output = Result<Forwarded, ForwardError>> + Send {
        self.send(req)
    }

    fn describe(&self) -> String {
        "relay over stdio (HTTP/2)".to_owned()
    }
}

/// The request never reached the relay: safe to retry, whatever the method.
fn not_dispatched(source: Option<hyper::Error>) -> ForwardError {
    ForwardError::Unsent {
        hop: Hop::Relay,
        source: source.map(|e| Box::new(e) as BoxError),
    }
}

/// How a stream to the relay failed, from the HTTP/2 error under hyper's.
enum StreamFailure {
    /// REFUSED_STREAM (RFC 9113 §8.7): the relay did not process it.
    Refused,
    /// The relay reset this one stream after taking it (e.g. the upstream's response broke):
    /// the session is fine, the request may have reached the upstream.
    Reset,
    /// The session itself failed (GOAWAY, pipe closed).
    Session,
}

fn stream_failure(err: &hyper::Error) -> StreamFailure {
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return match h2.reason() {
                Some(h2::Reason::REFUSED_STREAM) => StreamFailure::Refused,
                Some(_) if h2.is_reset() && h2.is_remote() => StreamFailure::Reset,
                _ => StreamFailure::Session,
            };
        }
        source = e.source();
    }
    StreamFailure::Session
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

    async fn send<B: RequestBody>(&self, req: Allowed<B>) -> Result<Forwarded, ForwardError> {
        let Allowed {
            method,
            allow,
            body,
            req_state,
            deadline,
            ..
        } = req;
        let Some(mut sender) = self.sender().await else {
            return Err(not_dispatched(None));
        };
        let is_head = method == Method::HEAD;
        let req = self.stream_request(method, allow, body, req_state.clone())?;
        let started = Instant::now();
        let pending = sender.try_send_request(req);
        let result = tokio::select! {
            r = tokio::time::timeout(self.response_timeout, pending) => r,
            () = deadline => return Err(ForwardError::ShuttingDown { sent: true }),
        };
        let upstream_time = started.elapsed();
        let response = match result {
            Ok(Ok(response)) => response,
            _ if req_state.failed() => return Err(ForwardError::body(&req_state)),
            Err(_elapsed) => return Err(ForwardError::TimedOut { hop: Hop::Relay }),
            Ok(Err(mut err)) => {
                let handed_back = err.take_message().is_some();
                let err = err.into_error();
                let failure = stream_failure(&err);
                return Err(match failure {
                    _ if handed_back => not_dispatched(Some(err)),
                    StreamFailure::Refused => not_dispatched(Some(err)),
                    StreamFailure::Reset => ForwardError::BadResponse {
                        hop: Hop::Relay,
                        source: Some(Box::new(err)),
                    },
                    StreamFailure::Session => ForwardError::MaybeApplied {
                        hop: Hop::Relay,
                        source: Some(Box::new(err)),
                    },
                });
            }
        };
        Ok(Forwarded {
            response: self.agent_response(response, is_head)?,
            upstream_time,
        })
    }

    /// The HTTP/2 request for one allowed agent request: checked target, token, allowlisted
    /// headers, the agent's body (streamed, under the route's limit).
    fn stream_request<B: RequestBody>(
        &self,
        method: Method,
        mut allow: Allow,
        body: B,
        req_state: Arc<BodyState>,
    ) -> Result<Request<BridgeBody>, ForwardError> {
        // The policy only allows canonical origin-form targets; this cannot fail for them.
        let uri = Uri::builder()
            .scheme("http")
            .authority(AUTHORITY)
            .path_and_query(allow.target.as_str())
            .build()
            .map_err(|e| ForwardError::Unsent {
                hop: Hop::Relay,
                source: Some(Box::new(e)),
            })?;
        let body: BridgeBody = match allow.body {
            BodyKind::None => body::empty(),
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
        headers.insert(
            super::WAIT_HEADER,
            HeaderValue::from(self.response_timeout.as_millis() as u64),
        );
        if let BodyKind::Length(n) = allow.body {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
        Ok(req)
    }

    /// The relay's answer as the agent gets it ([`relay_answer`]); the body is streamed under
    /// the size and idle limits.
    fn agent_response(
        &self,
        response: Response<Incoming>,
        is_head: bool,
    ) -> Result<Response<BridgeBody>, ForwardError> {
        let (parts, incoming) = response.into_parts();
        let status = parts.status;
        let headers = relay_answer(status, &parts.headers, &self.response_headers, is_head)?;
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
        Ok(out)
    }
}
