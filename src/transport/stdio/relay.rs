//! The stdio relay (on the host): spawns the command that starts the gateway, accepts its READY
//! line, and serves HTTP/2 on the command's stdio, forwarding each stream upstream.
//!
//! Promise: every stream passes the bridge token check and the whole policy again (the relay never
//! trusts the gateway), then the same forwarding as `serve` with the failure table of SPEC §5;
//! denials carry the same JSON bodies. At most [`MAX_CONCURRENT_STREAMS`] streams run at once, a
//! session whose PINGs go unanswered for [`PING_TIMEOUT`] is dead, and a lost channel is restarted
//! with backoff ([`MAX_RESTARTS`] in [`RESTART_WINDOW`]), so the agent's URL keeps working.
//! Attacks defended: a hostile sandbox cannot skip a check by talking HTTP/2 directly, cannot
//! exhaust the relay with streams, headers or stalled bodies, and never sees the upstream
//! credential: it is not in the child's argv or environment (inherited `CALLBACK_BRIDGE_*`
//! variables and the configured credential variable are removed), and the bridge token travels
//! in the environment or on stdin, never in an argv.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::ffi::OsStr;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::Ordering;
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
use tokio::sync::{mpsc, watch};

use super::handshake::{self, PAPERCLIP_NONCE_ENV, PAPERCLIP_TOKEN_ENV};
use super::io::Duplex;
use super::peek::{self, PeekOutcome, Peeked};
use super::ready::{self, GateError};
use super::{
    CONNECTION_WINDOW_BYTES, MAX_CONCURRENT_STREAMS, MAX_HEADER_LIST_BYTES, MAX_HEADER_PAIRS,
    PING_INTERVAL, PING_TIMEOUT, STREAM_WINDOW_BYTES,
};
use crate::auth::BridgeToken;
use crate::cli::{self, RelayArgs};
use crate::config::{self, Config, DEFAULT_TOKEN_ENV, DEFAULT_UPSTREAM_TOKEN_ENV};
use crate::lifecycle::{self, Activity, ExitReason};
use crate::limits::{BodyState, RateLimit};
use crate::policy::{Decision, Deny, DenyCode, LocalEndpoint, Policy, RequestHead, TokenCheck};
use crate::proxy::respond;
use crate::proxy::{BridgeBody, Forwarder};
use crate::server;
use crate::telemetry::{self, AccessRecord, Logged, Metrics};
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
/// Prefix of the relay's own configuration variables, none of which the child inherits.
const CONFIG_ENV_PREFIX: &str = "CALLBACK_BRIDGE_";

/// `callback-bridge relay --transport stdio -- COMMAND…`.
pub fn run(args: RelayArgs) -> Result<(), TransportError> {
    let RelayArgs {
        handshake,
        options,
        command,
        ..
    } = args;
    let options = options.with_file()?;
    telemetry::init_logging(&config::log_config(&options));
    if command.first().map_or(true, |c| c.is_empty()) {
        return Err(TransportError::Usage(
            "relay --transport stdio needs the command that starts the gateway after `--`".into(),
        ));
    }
    // Names of the variables holding secrets, to keep them out of the child's environment.
    let secret_envs = vec![
        options
            .upstream_token_env
            .clone()
            .unwrap_or_else(|| DEFAULT_UPSTREAM_TOKEN_ENV.to_owned()),
        options
            .token_env
            .clone()
            .unwrap_or_else(|| DEFAULT_TOKEN_ENV.to_owned()),
    ];
    let config = Config::load(options)?;
    let launcher = Launcher {
        argv: command,
        mode: handshake.unwrap_or(cli::Handshake::Env),
        token: config.token.clone(),
        secret_envs,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| TransportError::Fatal(format!("cannot start the runtime: {e}")))?;
    let result = runtime.block_on(relay(config, launcher));
    // A blocking stdin read (lifeline) must not keep the process alive.
    runtime.shutdown_background();
    result
}

async fn relay(config: Config, launcher: Launcher) -> Result<(), TransportError> {
    let metrics = Arc::new(Metrics::default());
    let Config {
        target,
        token,
        token_generated,
        policy,
        limits,
        lifecycle,
        ..
    } = config;
    let forwarder = Forwarder::new(target, policy.headers.clone(), &limits, metrics.clone());
    let (deadline_tx, deadline_rx) = watch::channel(false);
    let relay = Arc::new(Relay {
        policy,
        token,
        forwarder,
        metrics: metrics.clone(),
        rate: RateLimit::new(limits.rate),
        body_idle_timeout: limits.body_idle_timeout,
        deadline: deadline_rx,
        activity: Arc::default(),
        ids: telemetry::RequestIds::default(),
    });
    let (stop_tx, stop_rx) = mpsc::channel(4);
    let counters = relay.metrics.clone();
    lifecycle::spawn_watchers(
        &lifecycle,
        relay.activity.clone(),
        move || counters.in_flight.load(Ordering::Acquire) > 0,
        stop_tx,
    );
    let ready_line = serde_json::to_string(&ReadyLine {
        event: "ready",
        transport: "stdio",
        pid: std::process::id(),
        token: token_generated.then(|| relay.token.expose()),
    })
    .unwrap_or_default();
    let mut supervisor = Supervisor {
        relay: relay.clone(),
        launcher,
        stop_rx,
        deadline_tx,
        drain_timeout: limits.drain_timeout,
        ready_line: Some(ready_line),
        ready_file: lifecycle.ready_file.clone(),
        restarts: VecDeque::new(),
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

/// The relay's readiness line (SPEC §6.3), fields in the documented order.
#[derive(serde::Serialize)]
struct ReadyLine<'a> {
    event: &'static str,
    transport: &'static str,
    pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
}

/// How to start the gateway command.
struct Launcher {
    argv: Vec<String>,
    mode: cli::Handshake,
    token: BridgeToken,
    /// Configured names of the variables holding the upstream credential and the bridge token.
    secret_envs: Vec<String>,
}

impl Launcher {
    /// Whether an inherited variable must not reach the child: the relay's own configuration
    /// (`CALLBACK_BRIDGE_*`, which includes the default credential variable), the configured
    /// secret variables, and stale Paperclip bridge secrets.
    fn scrubbed(&self, name: &OsStr) -> bool {
        let Some(name) = name.to_str() else {
            return false;
        };
        name.starts_with(CONFIG_ENV_PREFIX)
            || name == PAPERCLIP_TOKEN_ENV
            || name == PAPERCLIP_NONCE_ENV
            || self.secret_envs.iter().any(|s| s == name)
    }

    /// Spawns the command with its stdin and stdout piped to the relay (stderr is inherited: the
    /// gateway's diagnostics appear in the relay's log) and hands it the token and `nonce`.
    async fn spawn(&self, nonce: &str) -> std::io::Result<Child> {
        let mut cmd = tokio::process::Command::new(&self.argv[0]);
        cmd.args(&self.argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (name, _) in std::env::vars_os() {
            if self.scrubbed(&name) {
                cmd.env_remove(&name);
            }
        }
        if self.mode == cli::Handshake::Env {
            cmd.env(handshake::TOKEN_ENV, self.token.expose())
                .env(handshake::NONCE_ENV, nonce);
        }
        let mut child = cmd.spawn()?;
        if self.mode == cli::Handshake::Stdin {
            let line = handshake::encode_line(&self.token, nonce);
            if let Some(stdin) = child.stdin.as_mut() {
                stdin.write_all(line.as_bytes()).await?;
                stdin.flush().await?;
            }
        }
        Ok(child)
    }
}

/// A command whose READY line was accepted.
struct Launched {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    /// Bytes from the HTTP/2 preface on, read during the gate.
    prefix: Bytes,
}

enum LaunchError {
    Spawn(std::io::Error),
    Gate(GateError),
}

impl std::fmt::Display for LaunchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LaunchError::Spawn(e) => write!(f, "cannot start the gateway command: {e}"),
            LaunchError::Gate(e) => write!(f, "the gateway command was not accepted: {e}"),
        }
    }
}

enum SessionEnd {
    /// The relay was told to stop.
    Stopped(ExitReason),
    /// The channel died; the text says how.
    Lost(String),
}

/// Starts, watches and restarts the gateway command.
struct Supervisor {
    relay: Arc<Relay>,
    launcher: Launcher,
    stop_rx: mpsc::Receiver<ExitReason>,
    /// Turns true when the drain deadline passes (in-flight forwards answer 503/409 at once).
    deadline_tx: watch::Sender<bool>,
    drain_timeout: Duration,
    /// Printed once, when the first READY line is accepted.
    ready_line: Option<String>,
    ready_file: Option<std::path::PathBuf>,
    /// When each restart in the current window happened.
    restarts: VecDeque<Instant>,
}

impl Supervisor {
    async fn run(&mut self) -> Result<ExitReason, TransportError> {
        loop {
            let nonce = handshake::generate_nonce()
                .map_err(|e| TransportError::Fatal(format!("cannot generate a nonce: {e}")))?;
            let launched = tokio::select! {
                launched = launch(&self.launcher, &nonce) => launched,
                reason = self.stop_rx.recv() => return Ok(reason.unwrap_or(ExitReason::Signal)),
            };
            match launched {
                Ok(launched) => {
                    self.announce()?;
                    let Launched {
                        mut child,
                        stdin,
                        stdout,
                        prefix,
                    } = launched;
                    let end = self.serve_session(&mut child, stdin, stdout, prefix).await;
                    reap(child, CHILD_EXIT_GRACE).await;
                    match end {
                        SessionEnd::Stopped(reason) => return Ok(reason),
                        SessionEnd::Lost(why) => {
                            tracing::warn!(reason = %why, "the stdio channel to the gateway was lost");
                        }
                    }
                }
                // A foreign READY is never retried: something other than our gateway answers.
                Err(LaunchError::Gate(GateError::NonceMismatch)) => {
                    return Err(TransportError::Fatal(
                        LaunchError::Gate(GateError::NonceMismatch).to_string(),
                    ));
                }
                // The first launch failing means the command is wrong: say so at once.
                Err(e) if self.ready_line.is_some() => {
                    return Err(TransportError::Fatal(e.to_string()));
                }
                Err(e) => tracing::warn!(error = %e, "restarting the gateway command failed"),
            }
            let backoff = self.next_backoff()?;
            tracing::info!(
                backoff_ms = backoff.as_millis() as u64,
                restart = self.restarts.len(),
                "restarting the gateway command"
            );
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                reason = self.stop_rx.recv() => return Ok(reason.unwrap_or(ExitReason::Signal)),
            }
        }
    }

    /// Counts a restart; fails when the budget of the window is spent.
    fn next_backoff(&mut self) -> Result<Duration, TransportError> {
        let now = Instant::now();
        while self
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) >= RESTART_WINDOW)
        {
            self.restarts.pop_front();
        }
        if self.restarts.len() >= MAX_RESTARTS {
            return Err(TransportError::Fatal(format!(
                "the stdio channel was lost {} times within {} s; giving up",
                MAX_RESTARTS + 1,
                RESTART_WINDOW.as_secs()
            )));
        }
        self.restarts.push_back(now);
        let doublings = (self.restarts.len() - 1) as u32;
        Ok(RESTART_BACKOFF * 2u32.pow(doublings))
    }

    /// Prints the readiness line the first time a session comes up.
    fn announce(&mut self) -> Result<(), TransportError> {
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
        tracing::info!(to = %self.relay.forwarder.upstream().display(), "relay ready");
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
        let relay = self.relay.clone();
        let service = service_fn(move |req| {
            let relay = relay.clone();
            async move { Ok::<_, Infallible>(relay.handle(req).await) }
        });
        let io = TokioIo::new(Duplex::new(prefix, stdout, stdin));
        let builder = server_builder();
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        tokio::select! {
            result = conn.as_mut() => SessionEnd::Lost(match result {
                Ok(()) => "the gateway ended the session".to_owned(),
                Err(e) => e.to_string(),
            }),
            status = child.wait() => SessionEnd::Lost(exit_text(status)),
            reason = self.stop_rx.recv() => {
                let reason = reason.unwrap_or(ExitReason::Signal);
                tracing::info!(reason = reason.as_str(), "draining the session");
                conn.as_mut().graceful_shutdown();
                if tokio::time::timeout(self.drain_timeout, conn.as_mut()).await.is_err() {
                    let _ = self.deadline_tx.send(true);
                    let _ = tokio::time::timeout(FLUSH_GRACE, conn.as_mut()).await;
                }
                SessionEnd::Stopped(reason)
            }
        }
    }
}

/// Spawns the command and waits for its READY line.
async fn launch(launcher: &Launcher, nonce: &str) -> Result<Launched, LaunchError> {
    let mut child = launcher.spawn(nonce).await.map_err(LaunchError::Spawn)?;
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(LaunchError::Spawn(std::io::Error::other("stdio not piped")));
    };
    match ready::await_ready(stdout, nonce).await {
        Ok((stdout, prefix)) => Ok(Launched {
            child,
            stdin,
            stdout,
            prefix,
        }),
        Err(e) => {
            drop(stdin);
            reap(child, Duration::ZERO).await;
            Err(LaunchError::Gate(e))
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
/// kills it.
async fn reap(mut child: Child, grace: Duration) {
    if let Ok(Ok(status)) = tokio::time::timeout(grace, child.wait()).await {
        tracing::debug!(%status, "the gateway command exited");
        return;
    }
    let _ = child.start_kill();
    // SIGKILL of our own child is reaped at once; the bound only guards against the impossible.
    let _ = tokio::time::timeout(CHILD_EXIT_GRACE, child.wait()).await;
}

fn server_builder() -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_LIST_BYTES)
        .keep_alive_interval(PING_INTERVAL)
        .keep_alive_timeout(PING_TIMEOUT)
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .auto_date_header(false);
    builder
}

/// What every stream needs: the policy, the token, the forwarder and the counters.
struct Relay {
    policy: Policy,
    token: BridgeToken,
    forwarder: Forwarder,
    metrics: Arc<Metrics>,
    rate: RateLimit,
    /// Longest wait for a request body's first frame (the forwarder applies it to the rest).
    body_idle_timeout: Duration,
    deadline: watch::Receiver<bool>,
    activity: Arc<Activity>,
    ids: telemetry::RequestIds,
}

impl Relay {
    /// One stream: policy (token first), rate limit, forward; SPEC §4 order, as in `serve`.
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Logged<InFlightSlot>> {
        self.metrics.requests.fetch_add(1, Ordering::Relaxed);
        // Released when the response body ends, or here if the stream is reset mid-way.
        let slot = InFlightSlot::enter(&self.metrics);
        self.activity.touch();
        let (mut parts, body) = req.into_parts();
        let mut record =
            AccessRecord::new(self.ids.next(), parts.method.clone(), self.metrics.clone());
        let response = self.respond(&mut parts, body, &mut record).await;
        let (mut parts, inner) = response.into_parts();
        // Connection-specific headers do not exist in HTTP/2; the gateway adds its own.
        parts.headers.remove(CONNECTION);
        record.status = parts.status.as_u16();
        self.metrics
            .record_outcome(record.route.as_ref(), record.status, record.code);
        Response::from_parts(parts, Logged::new(inner, record, slot))
    }

    async fn respond(
        &self,
        parts: &mut http::request::Parts,
        body: Incoming,
        record: &mut AccessRecord,
    ) -> Response<BridgeBody> {
        let deny = |record: &mut AccessRecord, deny: Deny| {
            record.code = Some(deny.code);
            respond::deny_response(&deny)
        };
        if parts.headers.len() > MAX_HEADER_PAIRS {
            let too_many = Deny::new(DenyCode::HeadersTooLarge, "Too many request headers");
            return deny(record, too_many);
        }
        // HTTP/2 has no Transfer-Encoding: a body without Content-Length is what HTTP/1.1 calls
        // chunked, and the policy must see that it has a body (and only when it has one).
        let open_ended =
            !parts.headers.contains_key(CONTENT_LENGTH) && !http_body::Body::is_end_stream(&body);
        let token_ok = || {
            parts
                .headers
                .get(AUTHORIZATION)
                .is_some_and(|v| self.token.verify_authorization(v.as_bytes()))
        };
        let body = if open_ended && token_ok() {
            match peek::peek(body, self.body_idle_timeout).await {
                PeekOutcome::Empty(body) => body,
                PeekOutcome::Body(body) => {
                    parts
                        .headers
                        .insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
                    body
                }
                PeekOutcome::Stalled => {
                    let stalled = Deny::new(
                        DenyCode::BodyTimeout,
                        "Request body stalled longer than the body idle timeout",
                    );
                    return deny(record, stalled);
                }
                PeekOutcome::Failed => {
                    let failed = Deny::new(DenyCode::BadRequest, "Request body could not be read");
                    return deny(record, failed);
                }
            }
        } else {
            // Not open-ended, or the policy is about to refuse the token: nothing to read.
            Peeked::untouched(body)
        };
        let target = parts.uri.path_and_query().map_or("", |pq| pq.as_str());
        let head = RequestHead {
            method: &parts.method,
            target,
            headers: &parts.headers,
        };
        match self
            .policy
            .evaluate(&head, TokenCheck::Require(&self.token))
        {
            Decision::Local(LocalEndpoint::Health) => respond::json_ok(b"{\"status\":\"ok\"}"),
            Decision::Local(LocalEndpoint::Metrics) => respond::metrics_text(self.metrics.render()),
            Decision::Deny(d) => deny(record, d),
            Decision::Allow(allow) => {
                record.route = Some(allow.route_id.clone());
                record.query_keys = telemetry::query_keys(&allow.target);
                if let Err(retry_after) = self.rate.check() {
                    record.code = Some(DenyCode::RateLimited);
                    return respond::rate_limited(retry_after);
                }
                let req_state = Arc::new(BodyState::default());
                record.req_state = Some(req_state.clone());
                let mut deadline = self.deadline.clone();
                let deadline = async move {
                    let _ = deadline.wait_for(|passed| *passed).await;
                };
                match self
                    .forwarder
                    .forward(parts.method.clone(), allow, body, req_state, deadline)
                    .await
                {
                    Ok(forwarded) => {
                        record.upstream_time = Some(forwarded.upstream_time);
                        forwarded.response
                    }
                    Err(d) => deny(record, d),
                }
            }
        }
    }
}

/// One stream counted in the in-flight gauge until dropped.
struct InFlightSlot(Arc<Metrics>);

impl InFlightSlot {
    fn enter(metrics: &Arc<Metrics>) -> Self {
        metrics.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlightSlot(metrics.clone())
    }
}

impl Drop for InFlightSlot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launcher(secret_envs: &[&str]) -> Launcher {
        Launcher {
            argv: vec!["true".into()],
            mode: cli::Handshake::Env,
            token: BridgeToken::new("t".into()),
            secret_envs: secret_envs.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn scrubs_relay_config_and_secret_variables_only() {
        let l = launcher(&["MY_UPSTREAM_KEY"]);
        for name in [
            "CALLBACK_BRIDGE_UPSTREAM_TOKEN",
            "CALLBACK_BRIDGE_TOKEN_FILE",
            "CALLBACK_BRIDGE_UPSTREAM",
            "PAPERCLIP_BRIDGE_TOKEN",
            "PAPERCLIP_BRIDGE_NONCE",
            "MY_UPSTREAM_KEY",
        ] {
            assert!(l.scrubbed(OsStr::new(name)), "{name} kept");
        }
        for name in [
            "PATH",
            "HOME",
            "KUBECONFIG",
            "PAPERCLIP_BRIDGE_PORT",
            "SSH_AUTH_SOCK",
        ] {
            assert!(!l.scrubbed(OsStr::new(name)), "{name} scrubbed");
        }
    }

    #[test]
    fn restart_budget_is_five_per_window_with_doubling_backoff() {
        let (_tx, stop_rx) = mpsc::channel(1);
        let (deadline_tx, _) = watch::channel(false);
        let policy = crate::config::build_policy(&cli::ProxyOptions::default()).unwrap();
        let limits = Config::load(cli::ProxyOptions::default()).unwrap().limits;
        let forwarder = Forwarder::new(
            crate::config::Target {
                upstream: crate::config::Upstream::parse("http://127.0.0.1:9").unwrap(),
                credential: None,
                run_id: None,
            },
            policy.headers.clone(),
            &limits,
            Arc::default(),
        );
        let relay = Arc::new(Relay {
            policy,
            token: BridgeToken::new("t".into()),
            forwarder,
            metrics: Arc::default(),
            rate: RateLimit::new(None),
            body_idle_timeout: Duration::from_secs(1),
            deadline: deadline_tx.subscribe(),
            activity: Arc::default(),
            ids: telemetry::RequestIds::default(),
        });
        let mut s = Supervisor {
            relay,
            launcher: launcher(&[]),
            stop_rx,
            deadline_tx,
            drain_timeout: Duration::from_secs(1),
            ready_line: None,
            ready_file: None,
            restarts: VecDeque::new(),
        };
        let backoffs: Vec<Duration> = (0..MAX_RESTARTS)
            .map(|_| s.next_backoff().unwrap())
            .collect();
        assert_eq!(backoffs.first(), Some(&RESTART_BACKOFF));
        assert_eq!(backoffs.last(), Some(&(RESTART_BACKOFF * 16)));
        assert!(s.next_backoff().is_err());
    }
}
