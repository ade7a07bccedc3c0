//! The stdio relay (on the host): spawns the command that starts the gateway, accepts its READY
//! line, and serves HTTP/2 on the command's stdio, forwarding each stream upstream.
//!
//! Promise: every stream passes the bridge token check and the whole policy again (the relay never
//! trusts the gateway), then the same forwarding as `serve` with the failure table of docs/reference.md §5;
//! denials carry the same JSON bodies. At most [`MAX_CONCURRENT_STREAMS`] streams run at once; a
//! session that reads nothing, or cannot write, for the stall timeout ([`STALL_TIMEOUT`](super::STALL_TIMEOUT)) is
//! dead whatever the HTTP/2 library is doing, and one that floods control frames is closed as
//! hostile (`watch.rs`); the command is then killed and restarted with backoff ([`MAX_RESTARTS`]
//! in [`RESTART_WINDOW`]), so the agent's URL keeps working.
//! Attacks defended: a hostile sandbox cannot skip a check by talking HTTP/2 directly, cannot
//! exhaust the relay with streams, headers, stalled bodies, a frozen pipe or a control-frame
//! flood, and never sees the upstream
//! credential: it is not in the child's argv or environment (inherited `CALLBACK_BRIDGE_*`
//! variables and the configured credential variable are removed), and the bridge token travels
//! in the environment or on stdin, never in an argv.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::mpsc;

use super::handshake;
use super::io::Duplex;
use super::peek::{self, PeekOutcome, Peeked};
use super::ready::{self, GateError, H2_PREFACE};
use super::watch::{ChannelFault, ChannelWatch, Watched};
use super::{
    CONNECTION_WINDOW_BYTES, MAX_CONCURRENT_STREAMS, MAX_HEADER_LIST_BYTES, MAX_HEADER_PAIRS,
    PING_INTERVAL, PING_TIMEOUT, STREAM_WINDOW_BYTES,
};
use crate::auth::BridgeToken;
use crate::cli::Handshake;
use crate::config::{Scrub, StdioRelayConfig};
use crate::dispatch::Dispatch;
use crate::lifecycle::ExitReason;
use crate::pipeline::{Inbound, LocalEndpoints, Pipeline, PipelineSettings, Target};
use crate::policy::{Deny, DenyCode};
use crate::proxy::Forwarder;
use crate::server;
use crate::telemetry::{Logged, Metrics};
use crate::transport::diag::{self, StderrTail};
use crate::transport::TransportError;

/// Restarts allowed within [`RESTART_WINDOW`] before the relay gives up (exit 1): enough to ride
/// out a dropped `ssh` or a restarted container, few enough that a crash loop ends quickly.
pub const MAX_RESTARTS: usize = 5;
/// The sliding window in which [`MAX_RESTARTS`] are counted.
pub const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// Delay before the first restart; doubled for each further restart in the window
/// (250 ms, 500 ms, 1 s, 2 s, 4 s), so a flapping channel is not hammered.
pub const RESTART_BACKOFF: Duration = Duration::from_millis(250);
/// After the session ends, how long the command may take to exit by itself (the gateway exits as
/// soon as its stdin closes) before it is killed.
pub const CHILD_EXIT_GRACE: Duration = Duration::from_secs(2);
/// After the drain deadline, time for the 503/409 answers to be written before the session is cut.
const FLUSH_GRACE: Duration = Duration::from_millis(500);

/// `callback-bridge relay --transport stdio -- COMMAND…`: runs until a stop reason, then prints
/// the exit line.
pub async fn run(config: StdioRelayConfig) -> Result<(), TransportError> {
    run_launched(config, None).await
}

/// A gateway command that was started and passed the READY gate, not yet served.
pub struct FirstLaunch(Launched);

/// Starts the gateway command once, as the relay's first launch would (`--transport auto` tries
/// this before it commits to the stdio transport).
pub async fn try_launch(config: &StdioRelayConfig) -> Result<FirstLaunch, LaunchError> {
    let launcher = Launcher {
        argv: config.command.clone(),
        mode: config.handshake,
        token: config.token.token.clone(),
        scrub: config.scrub.clone(),
    };
    let nonce = handshake::generate_nonce().map_err(|source| LaunchError::Spawn {
        command: launcher.describe(),
        source,
    })?;
    launch(&launcher, &nonce).await.map(FirstLaunch)
}

/// [`run`], serving `first` (from [`try_launch`]) as the first session when given.
pub async fn run_launched(
    config: StdioRelayConfig,
    first: Option<FirstLaunch>,
) -> Result<(), TransportError> {
    let StdioRelayConfig {
        target,
        token,
        common,
        handshake,
        command,
        scrub,
        stall_timeout,
    } = config;
    let metrics = Arc::new(Metrics::default());
    let forwarder = Forwarder::new(target, &common, metrics.clone());
    let pipeline = Arc::new(Pipeline::new(
        PipelineSettings::new(&common, Some(token.token.clone()), LocalEndpoints::NotFound),
        forwarder,
        metrics.clone(),
    ));
    let (stop_tx, stop_rx) = mpsc::channel(4);
    pipeline.watch_lifecycle(&common.lifecycle, stop_tx);
    let admin = crate::admin::start(common.admin, &metrics).await?;
    let ready_line = crate::server::ready_json(&ReadyLine {
        event: "ready",
        transport: "stdio",
        pid: std::process::id(),
        token: token.generated.then(|| token.token.expose()),
        admin,
    });
    let launcher = Launcher {
        argv: command,
        mode: handshake,
        token: token.token,
        scrub,
    };
    let mut supervisor = Supervisor {
        pipeline,
        body_idle_timeout: common.limits.body_idle_timeout,
        launcher,
        stop_rx,
        drain_timeout: common.limits.drain_timeout,
        ready_line: Some(ready_line),
        ready_file: common.lifecycle.ready_file.clone(),
        restarts: RestartBudget::default(),
        stall_timeout,
        first: first.map(|f| f.0),
    };
    let outcome = supervisor.run().await;
    let reason = match &outcome {
        Ok(reason) => *reason,
        Err(_) => ExitReason::Transport,
    };
    tracing::info!(reason = reason.as_str(), "relay stopped");
    server::print_line(&metrics.exit_line(reason.as_str()))?;
    outcome.map(|_| ())
}

/// The relay's readiness line (docs/reference.md §6.3), fields in the documented order.
#[derive(serde::Serialize)]
struct ReadyLine<'a> {
    event: &'static str,
    transport: &'static str,
    pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    admin: Option<String>,
}

/// How to start the gateway command.
struct Launcher {
    argv: Vec<String>,
    mode: Handshake,
    token: BridgeToken,
    /// The inherited variables the child must not see.
    scrub: Scrub,
}

impl Launcher {
    /// The command as logged: its argv, bounded, `NAME=value` values hidden.
    fn describe(&self) -> String {
        diag::describe_argv(&self.argv)
    }

    /// Spawns the command with its stdin and stdout piped to the relay and hands it the token and
    /// `nonce`. Its stderr is passed through to the relay's stderr (the gateway's diagnostics
    /// appear in the relay's log) by a task that also keeps its end for the failure messages.
    async fn spawn(&self, nonce: &str) -> std::io::Result<(Child, StderrWatch)> {
        let mut cmd = tokio::process::Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        self.scrub.apply(&mut cmd);
        if self.mode == Handshake::Env {
            cmd.env(handshake::TOKEN_ENV, self.token.expose())
                .env(handshake::NONCE_ENV, nonce);
        }
        let mut child = cmd.spawn()?;
        let stderr = StderrWatch::start(child.stderr.take());
        if self.mode == Handshake::Stdin {
            let line = handshake::encode_line(&self.token, nonce);
            if let Some(stdin) = child.stdin.as_mut() {
                stdin.write_all(line.as_bytes()).await?;
                stdin.flush().await?;
            }
        }
        Ok((child, stderr))
    }
}

/// The gateway command's stderr: copied to the relay's stderr as it arrives (in whole lines
/// where they are shorter than the copy buffer, so they do not split the relay's own log lines),
/// its end kept for the failure messages.
struct StderrWatch {
    tail: Arc<std::sync::Mutex<StderrTail>>,
    done: tokio::sync::watch::Receiver<bool>,
}

impl StderrWatch {
    fn start(stderr: Option<tokio::process::ChildStderr>) -> StderrWatch {
        let tail = Arc::new(std::sync::Mutex::new(StderrTail::default()));
        let (done_tx, done) = tokio::sync::watch::channel(false);
        let kept = tail.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            if let Some(mut err) = stderr {
                let mut out = tokio::io::stderr();
                let mut buf = vec![0u8; 8192];
                let mut filled = 0;
                loop {
                    let n = match err.read(&mut buf[filled..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    kept.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(&buf[filled..filled + n]);
                    filled += n;
                    // Whole lines go out; a partial one waits unless the buffer is full.
                    let cut = match buf[..filled].iter().rposition(|b| *b == b'\n') {
                        Some(i) => i + 1,
                        None if filled == buf.len() => filled,
                        None => continue,
                    };
                    // Flushed at once: tokio's stderr completes writes in the background.
                    let _ = out.write_all(&buf[..cut]).await;
                    let _ = out.flush().await;
                    buf.copy_within(cut..filled, 0);
                    filled -= cut;
                }
                if filled > 0 {
                    let _ = out.write_all(&buf[..filled]).await;
                    let _ = out.flush().await;
                }
            }
            let _ = done_tx.send(true);
        });
        StderrWatch { tail, done }
    }

    /// The end of the command's stderr, once it closed it (waiting at most `grace`).
    async fn summary(mut self, grace: Duration) -> String {
        let _ = tokio::time::timeout(grace, self.done.wait_for(|d| *d)).await;
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        diag::summarize_stderr(&tail, None)
    }
}

/// A command whose READY line was accepted.
struct Launched {
    child: Child,
    stderr: StderrWatch,
    stdin: ChildStdin,
    stdout: ChildStdout,
    /// Bytes from the HTTP/2 preface on, read during the gate.
    prefix: Bytes,
}

/// Why the gateway command did not come up. `command` is the command as logged (bounded,
/// `NAME=value` values hidden); `stderr` the end of its stderr, summarized.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot start the gateway command ({command}): {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("the gateway command was not accepted ({command}): {source}{}", exit_suffix(.status, .stderr))]
    Gate {
        command: String,
        source: GateError,
        /// How it ended, when it ended by itself right after (it is killed otherwise).
        status: Option<ExitStatus>,
        stderr: String,
    },
}

impl LaunchError {
    fn is_nonce_mismatch(&self) -> bool {
        matches!(
            self,
            LaunchError::Gate {
                source: GateError::NonceMismatch,
                ..
            }
        )
    }
}

/// `; it exited (exit status: 1): <stderr>`, `; it exited (signal: 9 (SIGKILL); no stderr)`,
/// or, for a command that was killed, `; its stderr: <stderr>` (or nothing).
fn exit_suffix(status: &Option<ExitStatus>, stderr: &str) -> String {
    match (status, stderr.is_empty()) {
        (Some(status), true) => format!("; it exited ({status}; no stderr)"),
        (Some(status), false) => format!("; it exited ({status}): {stderr}"),
        (None, true) => String::new(),
        (None, false) => format!("; its stderr: {stderr}"),
    }
}

impl LaunchError {
    /// A fixed word for why the channel did not start (`--transport auto`'s `fallback_reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            // Paperclip's host's words where the cause is the same (docs/paperclip-compatibility.md).
            // The handshake could not be written: the command had already exited.
            LaunchError::Spawn { source, .. }
                if source.kind() == std::io::ErrorKind::BrokenPipe =>
            {
                "exited_before_ready"
            }
            LaunchError::Spawn { .. }
            | LaunchError::Gate {
                source: GateError::Io(_),
                ..
            } => "channel_open_failed",
            LaunchError::Gate {
                source: GateError::Timeout(_),
                ..
            } => "ready_timeout",
            LaunchError::Gate {
                source: GateError::ChannelClosed,
                ..
            } => "exited_before_ready",
            LaunchError::Gate {
                source: GateError::TooMuchOutput(_),
                ..
            } => "contaminated",
            LaunchError::Gate {
                source: GateError::NonceMismatch,
                ..
            } => "ready_nonce_mismatch",
        }
    }
}

enum SessionEnd {
    /// The relay was told to stop.
    Stopped(ExitReason),
    /// The channel died; the text says how.
    Lost(String),
    /// The relay ended the session: the channel stalled or flooded.
    Faulted(ChannelFault),
}

/// Starts, watches and restarts the gateway command.
struct Supervisor {
    pipeline: Arc<Pipeline<Forwarder>>,
    /// Longest wait for an open-ended request body's first frame.
    body_idle_timeout: Duration,
    launcher: Launcher,
    stop_rx: mpsc::Receiver<ExitReason>,
    drain_timeout: Duration,
    /// Printed once, when the first READY line is accepted.
    ready_line: Option<String>,
    ready_file: Option<std::path::PathBuf>,
    restarts: RestartBudget,
    /// See [`StdioRelayConfig::stall_timeout`].
    stall_timeout: Duration,
    /// A session already launched (by [`try_launch`]), served before any launch of its own.
    first: Option<Launched>,
}

/// The restarts of the current window: at most [`MAX_RESTARTS`] in [`RESTART_WINDOW`], each
/// after a doubling backoff.
#[derive(Debug, Default)]
struct RestartBudget {
    /// When each restart in the current window happened.
    at: VecDeque<Instant>,
}

impl RestartBudget {
    /// Counts a restart and returns its backoff; fails when the budget of the window is spent.
    fn next_backoff(&mut self) -> Result<Duration, TransportError> {
        let now = Instant::now();
        while self
            .at
            .front()
            .is_some_and(|t| now.duration_since(*t) >= RESTART_WINDOW)
        {
            self.at.pop_front();
        }
        if self.at.len() >= MAX_RESTARTS {
            return Err(TransportError::RestartBudget {
                lost: MAX_RESTARTS + 1,
                window_secs: RESTART_WINDOW.as_secs(),
            });
        }
        self.at.push_back(now);
        let doublings = (self.at.len() - 1) as u32;
        Ok(RESTART_BACKOFF * 2u32.pow(doublings))
    }

    fn len(&self) -> usize {
        self.at.len()
    }
}

impl Supervisor {
    async fn run(&mut self) -> Result<ExitReason, TransportError> {
        loop {
            let launched = match self.first.take() {
                Some(launched) => Ok(launched),
                None => {
                    let nonce = handshake::generate_nonce().map_err(TransportError::Nonce)?;
                    tokio::select! {
                        launched = launch(&self.launcher, &nonce) => launched,
                        reason = self.stop_rx.recv() => return Ok(reason.unwrap_or(ExitReason::Signal)),
                    }
                }
            };
            // A lost channel is warned about only when the relay restarts the command: a stop
            // signal sent to the relay's whole process group (a supervisor, `timeout`, Ctrl-C)
            // ends the gateway too, and that loss is part of the stop.
            let mut lost = None;
            match launched {
                Ok(launched) => {
                    self.announce()?;
                    let Launched {
                        mut child,
                        stderr,
                        stdin,
                        stdout,
                        prefix,
                    } = launched;
                    let end = self.serve_session(&mut child, stdin, stdout, prefix).await;
                    self.pipeline.metrics().readiness.serving(false);
                    let grace = match &end {
                        SessionEnd::Stopped(_) | SessionEnd::Lost(_) => CHILD_EXIT_GRACE,
                        // A frozen or hostile command will not exit by itself: kill it at once.
                        SessionEnd::Faulted(fault) => {
                            tracing::warn!(
                                reason = %fault,
                                hostile = fault.is_hostile(),
                                "the stdio channel to the gateway was lost; killing the command"
                            );
                            Duration::ZERO
                        }
                    };
                    reap(child, grace).await;
                    match end {
                        SessionEnd::Stopped(reason) => {
                            // Its last lines (its exit line) reach the log before the relay's.
                            let _ = stderr.summary(CHILD_EXIT_GRACE).await;
                            return Ok(reason);
                        }
                        SessionEnd::Lost(why) => {
                            let stderr = stderr.summary(CHILD_EXIT_GRACE).await;
                            lost = Some(if stderr.is_empty() {
                                why
                            } else {
                                format!("{why}; its stderr: {stderr}")
                            });
                        }
                        SessionEnd::Faulted(_) => {}
                    }
                }
                // A foreign READY is never retried: something other than our gateway answers.
                Err(e) if e.is_nonce_mismatch() => return Err(TransportError::Launch(e)),
                // The first launch failing means the command is wrong: say so at once.
                Err(e) if self.ready_line.is_some() => return Err(TransportError::Launch(e)),
                Err(e) => tracing::warn!(error = %e, "restarting the gateway command failed"),
            }
            let warn_lost = |lost: Option<String>| {
                if let Some(why) = lost {
                    tracing::warn!(reason = %why, "the stdio channel to the gateway was lost");
                }
            };
            if let Ok(reason) = self.stop_rx.try_recv() {
                if let Some(why) = lost {
                    tracing::info!(reason = %why, "the stdio channel to the gateway ended with the stop");
                }
                return Ok(reason);
            }
            let backoff = match self.restarts.next_backoff() {
                Ok(backoff) => backoff,
                Err(e) => {
                    warn_lost(lost);
                    return Err(e);
                }
            };
            tokio::select! {
                biased;
                reason = self.stop_rx.recv() => {
                    if let Some(why) = lost {
                        tracing::info!(reason = %why, "the stdio channel to the gateway ended with the stop");
                    }
                    return Ok(reason.unwrap_or(ExitReason::Signal));
                }
                () = tokio::time::sleep(backoff) => {}
            }
            warn_lost(lost);
            tracing::info!(
                backoff_ms = backoff.as_millis() as u64,
                restart = self.restarts.len(),
                "restarting the gateway command"
            );
        }
    }

    /// Prints the readiness line the first time a session comes up.
    fn announce(&mut self) -> Result<(), TransportError> {
        self.pipeline.metrics().readiness.serving(true);
        let Some(line) = self.ready_line.take() else {
            tracing::info!("the gateway command is back; session restarted");
            return Ok(());
        };
        if let Some(path) = &self.ready_file {
            server::write_private_file(path, line.as_bytes()).map_err(|source| {
                server::ServeError::ReadyFile {
                    path: path.clone(),
                    source,
                }
            })?;
        }
        server::print_line(&line)?;
        tracing::info!(to = %self.pipeline.dispatcher().describe(), "relay ready");
        Ok(())
    }

    /// Serves HTTP/2 on the command's stdio until the channel dies or the relay is stopped.
    async fn serve_session(
        &mut self,
        child: &mut Child,
        stdin: ChildStdin,
        stdout: ChildStdout,
        prefix: Bytes,
    ) -> SessionEnd {
        let pipeline = self.pipeline.clone();
        let idle = self.body_idle_timeout;
        let service = service_fn(move |req| {
            let pipeline = pipeline.clone();
            async move { Ok::<_, Infallible>(stream(&pipeline, idle, req).await) }
        });
        let watch = ChannelWatch::new(self.stall_timeout);
        let duplex = Duplex::new(prefix, stdout, stdin);
        let io = TokioIo::new(Watched::new(duplex, H2_PREFACE.len(), watch.clone()));
        let builder = server_builder(self.stall_timeout);
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        // The watch decides on its own clock: the HTTP/2 library may be stuck writing a GOAWAY
        // into a pipe nobody reads.
        tokio::select! {
            result = conn.as_mut() => match watch.recorded() {
                // The library saw the read error a flood caused.
                Some(fault) => SessionEnd::Faulted(fault),
                None => SessionEnd::Lost(match result {
                    Ok(()) => "the gateway ended the session".to_owned(),
                    Err(e) => e.to_string(),
                }),
            },
            fault = watch.fault() => SessionEnd::Faulted(fault),
            status = child.wait() => SessionEnd::Lost(exit_text(status)),
            reason = self.stop_rx.recv() => {
                let reason = reason.unwrap_or(ExitReason::Signal);
                tracing::info!(reason = reason.as_str(), "draining the session");
                conn.as_mut().graceful_shutdown();
                if tokio::time::timeout(self.drain_timeout, conn.as_mut()).await.is_err() {
                    self.pipeline.pass_deadline();
                    let _ = tokio::time::timeout(FLUSH_GRACE, conn.as_mut()).await;
                }
                SessionEnd::Stopped(reason)
            }
        }
    }
}

/// Spawns the command and waits for its READY line.
async fn launch(launcher: &Launcher, nonce: &str) -> Result<Launched, LaunchError> {
    let spawn_error = |source| LaunchError::Spawn {
        command: launcher.describe(),
        source,
    };
    let (mut child, stderr) = launcher.spawn(nonce).await.map_err(spawn_error)?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(spawn_error(std::io::Error::other("stdio not piped")));
    };
    match ready::await_ready(stdout, nonce).await {
        Ok((stdout, prefix)) => Ok(Launched {
            child,
            stderr,
            stdin,
            stdout,
            prefix,
        }),
        Err(e) => {
            drop(stdin);
            // A command that closed its stdout has usually exited: say how. Anything else (a
            // wrong READY, a timeout) is killed at once.
            let grace = if matches!(e, GateError::ChannelClosed) {
                CHILD_EXIT_GRACE
            } else {
                Duration::ZERO
            };
            let status = reap(child, grace).await;
            Err(LaunchError::Gate {
                command: launcher.describe(),
                source: e,
                status,
                stderr: stderr.summary(CHILD_EXIT_GRACE).await,
            })
        }
    }
}

fn exit_text(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => format!("the gateway command exited ({s})"),
        Err(e) => format!("cannot wait for the gateway command: {e}"),
    }
}

/// Waits up to `grace` for the command to exit by itself (its stdin is closed by now), then
/// kills it. Returns how it exited when it did so by itself.
async fn reap(mut child: Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Ok(status)) = tokio::time::timeout(grace, child.wait()).await {
        tracing::debug!(%status, "the gateway command exited");
        return Some(status);
    }
    let _ = child.start_kill();
    // SIGKILL of our own child is reaped at once; the bound only guards against the impossible.
    let _ = tokio::time::timeout(CHILD_EXIT_GRACE, child.wait()).await;
    None
}

/// The HTTP/2 server. Its keep-alive follows the stall timeout (a PING after a quarter of it
/// without a byte, so a live gateway is never taken for a stalled one): [`PING_INTERVAL`] and
/// [`PING_TIMEOUT`] with the default.
fn server_builder(stall_timeout: Duration) -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST_BYTES)
        .keep_alive_interval(
            stall_timeout.mul_f64(PING_INTERVAL.as_secs_f64() / PING_TIMEOUT.as_secs_f64()),
        )
        .keep_alive_timeout(stall_timeout)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .auto_date_header(false);
    builder
}

/// One stream: the transport's own checks (header count, HTTP/2 framing made explicit), then
/// the pipeline, as for any other request.
async fn stream(
    pipeline: &Pipeline<Forwarder>,
    body_idle_timeout: Duration,
    req: Request<Incoming>,
) -> Response<Logged> {
    let (mut parts, body) = req.into_parts();
    // Our gateway's wait: answer a margin before it (never forwarded, never policy-checked).
    if let Some(wait) = parts.headers.remove(super::WAIT_HEADER) {
        if let Some(ms) = wait.to_str().ok().and_then(|v| v.parse::<u64>().ok()) {
            let wait = Duration::from_millis(ms);
            parts
                .extensions
                .insert(super::UpstreamDeadline(super::relay_deadline(wait)));
        }
    }
    let mut response = if parts.headers.len() > MAX_HEADER_PAIRS {
        pipeline.reject(
            &parts.method,
            Deny::new(DenyCode::HeadersTooLarge, "Too many request headers"),
        )
    } else {
        match http2_body(pipeline, &mut parts, body, body_idle_timeout).await {
            Ok(body) => {
                // `:path` alone is the target (the `:authority` is the bridge's own).
                // An origin-form URI shares `:path`'s bytes: no copy per stream.
                let target = match parts.uri.path_and_query() {
                    Some(pq) => Target::Uri(http::Uri::from(pq.clone())),
                    None => Target::Text(String::new()),
                };
                let inbound = Inbound {
                    method: parts.method,
                    target,
                    headers: parts.headers,
                    extensions: parts.extensions,
                    body,
                };
                pipeline.handle(inbound).await
            }
            Err(refusal) => pipeline.reject(&parts.method, refusal),
        }
    };
    // Connection-specific headers do not exist in HTTP/2; the gateway adds its own.
    response.headers_mut().remove(CONNECTION);
    response
}

/// Gives an HTTP/2 request the framing the policy reads. For a stream without `Content-Length`
/// (HTTP/2 has no Transfer-Encoding): none when it carries no body; `Content-Length` when its body
/// ended within the first [`peek::WHOLE_UP_TO`] bytes; `transfer-encoding: chunked` otherwise. Only
/// a stream with the bridge token is read from.
async fn http2_body(
    pipeline: &Pipeline<Forwarder>,
    parts: &mut http::request::Parts,
    body: Incoming,
    idle: Duration,
) -> Result<Peeked, Deny> {
    let open_ended =
        !parts.headers.contains_key(CONTENT_LENGTH) && !http_body::Body::is_end_stream(&body);
    if !open_ended || !pipeline.token_ok(parts.headers.get(AUTHORIZATION)) {
        // Not open-ended, or the policy is about to refuse the token: nothing to read.
        return Ok(Peeked::untouched(body));
    }
    match peek::peek(body, idle).await {
        PeekOutcome::Empty(body) => Ok(body),
        PeekOutcome::Whole(body, len) => {
            // Read to its end: forwarded with its length, as Paperclip's host does.
            parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
            Ok(body)
        }
        PeekOutcome::Body(body) => {
            parts
                .headers
                .insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
            Ok(body)
        }
        PeekOutcome::Stalled => Err(Deny::new(
            DenyCode::BodyTimeout,
            "Request body stalled longer than the body idle timeout",
        )),
        PeekOutcome::Failed => Err(Deny::new(
            DenyCode::BadRequest,
            "Request body could not be read",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_budget_is_five_per_window_with_doubling_backoff() {
        let mut budget = RestartBudget::default();
        let backoffs: Vec<Duration> = (0..MAX_RESTARTS)
            .map(|_| budget.next_backoff().unwrap())
            .collect();
        assert_eq!(backoffs.first(), Some(&RESTART_BACKOFF));
        assert_eq!(backoffs.last(), Some(&(RESTART_BACKOFF * 16)));
        assert!(budget.next_backoff().is_err());
    }
}
