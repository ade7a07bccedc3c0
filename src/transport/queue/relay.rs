//! The queue relay (on the host): takes request files out of the sandbox through one-shot
//! commands, applies the whole policy again, forwards with the real credential, writes the
//! response files back.
//!
//! Promise: every file read from the sandbox is untrusted input — it passes the same policy as an
//! HTTP request (without the token, which files do not carry) and the wire-format checks, or it
//! gets the same denial as over HTTP, and nothing reaches the upstream; a request is forwarded at
//! most once unless it is safe (exactly-once hand-off of SPEC §6.1: claim by rename in the
//! command that reads it, answer only while the claim exists, and after a restart re-forward
//! only safe methods); the credential never enters the sandbox (not in argv, env or files); few
//! commands: idle ≤ 1 per 5 s, a burst is taken by one command and answered by one.
//! Attacks defended: planted or edited request files, a hostile command output (parsed strictly,
//! size-capped), a hung or dead exec channel (30 s cap per command, backoff, bounded retries).

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::exec::{secret_env_names, ExecError, Output, Runner};
use super::file::{
    self, decode_body, encode_body, envelope_limit, FileError, RelayAnnouncement, RequestFile,
    ResponseFile, CLAIMS_PROTOCOL,
};
use super::scripts::{self, Announcement, Ops, PutOutput, TakeOutput, TakeParams, Taken};
use crate::cli::RelayArgs;
use crate::config::Config;
use crate::lifecycle::{self, Activity, ExitReason};
use crate::limits::{BodyError, BodyState, RateLimit};
use crate::policy::{Allow, Decision, Deny, DenyCode, Policy, RequestHead, TokenCheck};
use crate::proxy::respond::{deny_body, X_BRIDGE_ERROR, X_OUTCOME};
use crate::proxy::{is_safe, unknown_outcome, Forwarder};
use crate::server::print_line;
use crate::telemetry::{self, Metrics};
use crate::transport::TransportError;

/// Requests forwarded at the same time (SPEC §6.1). More would only queue at the upstream.
pub const MAX_CONCURRENT_FORWARDS: usize = 8;
/// Most request files one command takes (SPEC §6.1).
pub const MAX_BATCH_FILES: usize = 16;
/// Most request bytes one command reads (SPEC §6.1); a single larger file is still taken alone.
pub const MAX_BATCH_BYTES: u64 = 8 * 1024 * 1024;
/// The idle wait inside the sandbox for the first request file (SPEC §6.1: ≤ 1 command per
/// 4 s when idle).
pub const IDLE_WAIT: Duration = Duration::from_secs(5);
/// How long a finished response may wait for the other requests of its batch before it is
/// written on its own: one command answers a whole burst, and a slow request delays the fast
/// ones by at most this much.
pub const PUT_LINGER: Duration = Duration::from_millis(20);
/// Attempts to write one response before giving up on it (the gateway then times out).
pub const PUT_ATTEMPTS: u32 = 3;
/// Most response bytes one helper `put` carries on stdin.
pub const MAX_PUT_BYTES: usize = 32 * 1024 * 1024;
/// First retry delay after a failed command; doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest retry delay: the sandbox is polled at least this often while it fails.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Commands failing without a break for this long mean the sandbox is gone: exit 1.
pub const TRANSPORT_LOSS_LIMIT: Duration = Duration::from_secs(60);
/// Attempts of the start-up command before giving up (exit 1).
pub const STARTUP_ATTEMPTS: u32 = 5;
/// A take that returns empty-handed well before its wait ended saw files it could not take
/// (unwritable directory, files vanishing): pause this long instead of spinning commands.
pub const EARLY_EMPTY_PAUSE: Duration = Duration::from_secs(1);
/// Largest put output: a marker line per response.
const PUT_STDOUT_CAP: usize = 64 * 1024;

/// `callback-bridge relay --transport queue`.
pub fn run(args: RelayArgs) -> Result<(), TransportError> {
    let opts = args.options.with_file()?;
    telemetry::init_logging(&crate::config::log_config(&opts));
    let scrub = secret_env_names(&[
        opts.upstream_token_env
            .as_deref()
            .unwrap_or(crate::config::DEFAULT_UPSTREAM_TOKEN_ENV),
        opts.token_env
            .as_deref()
            .unwrap_or(crate::config::DEFAULT_TOKEN_ENV),
    ]);
    let config = Config::load(opts)?;
    let dir = args
        .queue_dir
        .ok_or_else(|| TransportError::Usage("--queue-dir is required".into()))?;
    let dir = dir
        .to_str()
        .filter(|d| !d.is_empty() && !d.contains('\0'))
        .ok_or_else(|| TransportError::Usage("--queue-dir must be UTF-8 text".into()))?
        .to_owned();
    if args.command.is_empty() {
        return Err(TransportError::Usage(
            "the exec prefix is required after `--` (e.g. `-- sh -c`)".into(),
        ));
    }
    let ops = match args.sandbox_helper {
        Some(path) if !path.is_empty() => Ops::Helper(path),
        _ => Ops::Sh,
    };
    let runner = Runner::new(args.command, scrub);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| TransportError::Fatal(format!("cannot start the runtime: {e}")))?;
    let result = runtime.block_on(relay(config, dir, ops, runner));
    runtime.shutdown_background();
    result.map(|_| ())
}

/// What the relay loop shares with its forwarding tasks.
struct Core {
    dir: String,
    ops: Ops,
    runner: Runner,
    policy: Policy,
    forwarder: Forwarder,
    rate: RateLimit,
    metrics: Arc<Metrics>,
    max_body_bytes: u64,
    envelope: u64,
    /// This relay's `relay.json` (protocol, pid, start time): written at start-up, and checked
    /// by every take before it claims.
    announcement: String,
    deadline: watch::Receiver<bool>,
    activity: Arc<Activity>,
}

/// What the access log says about one request file.
struct Meta {
    id: String,
    method: Method,
    route: Option<Arc<str>>,
    req_bytes: usize,
    /// The query's keys only (values are never logged).
    query_keys: String,
    received: Instant,
}

impl Meta {
    fn new(id: &str, received: Instant) -> Meta {
        Meta {
            id: id.to_owned(),
            method: Method::POST,
            route: None,
            req_bytes: 0,
            query_keys: String::new(),
            received,
        }
    }
}

/// A request that passed the policy, waiting for a forwarding slot.
struct Job {
    meta: Meta,
    allow: Allow,
    body: Bytes,
}

/// A response file waiting to be written into the sandbox.
struct Ready {
    id: String,
    json: Vec<u8>,
    since: Instant,
    attempts: u32,
}

enum Prepared {
    Answer(Ready),
    Forward(Box<Job>),
    /// Nothing to answer (the gateway withdrew the request).
    Drop,
}

/// Runs the relay until a stop reason; prints the ready and exit lines.
pub async fn relay(
    config: Config,
    dir: String,
    ops: Ops,
    runner: Runner,
) -> Result<ExitReason, TransportError> {
    let metrics = Arc::new(Metrics::default());
    let Config {
        target,
        policy,
        limits,
        lifecycle,
        ..
    } = config;
    let forwarder = Forwarder::new(target, policy.headers.clone(), &limits, metrics.clone());
    let (deadline_tx, deadline_rx) = watch::channel(false);
    let core = Arc::new(Core {
        dir,
        ops,
        runner,
        policy,
        forwarder,
        rate: RateLimit::new(limits.rate),
        metrics: metrics.clone(),
        max_body_bytes: limits.max_body_bytes,
        envelope: envelope_limit(limits.max_body_bytes),
        announcement: serde_json::to_string(&RelayAnnouncement {
            protocol: CLAIMS_PROTOCOL.to_owned(),
            pid: std::process::id(),
            started_at: file::now_iso8601(),
        })
        .unwrap_or_default(),
        deadline: deadline_rx,
        activity: Arc::default(),
    });

    let recovered = start_up(&core).await?;
    // Watchers (signal handlers included) exist before the ready line: a SIGTERM right after
    // readiness must stop the relay cleanly, not kill it.
    let (stop_tx, stop_rx) = mpsc::channel(4);
    // Requests are forwarded inside the relay's own loop, which the idle check never interrupts.
    lifecycle::spawn_watchers(&lifecycle, core.activity.clone(), || false, stop_tx);
    #[derive(serde::Serialize)]
    struct ReadyLine<'a> {
        event: &'static str,
        transport: &'static str,
        queue_dir: &'a str,
        pid: u32,
    }
    let line = serde_json::to_string(&ReadyLine {
        event: "ready",
        transport: "queue",
        queue_dir: &core.dir,
        pid: std::process::id(),
    })
    .unwrap_or_default();
    print_line(&line).map_err(TransportError::from)?;
    tracing::info!(queue = %core.dir, prefix = ?core.runner.prefix(), to = %core.forwarder.upstream().display(), "relay ready");

    let mut lp = Loop::new(core.clone(), stop_rx, deadline_tx, limits.drain_timeout);
    lp.accept(recovered, true);
    let reason = lp.run().await?;
    print_line(&metrics.exit_line(reason.as_str())).map_err(TransportError::from)?;
    Ok(reason)
}

fn take_params(core: &Core, wait: Duration) -> TakeParams {
    TakeParams {
        wait_ms: wait.as_millis() as u64,
        max_files: MAX_BATCH_FILES,
        max_bytes: MAX_BATCH_BYTES,
        envelope: core.envelope,
        relay: Some(core.announcement.clone()),
    }
}

/// Bound of a take's stdout: the bytes it may read, base64-encoded with line breaks, plus markers.
fn take_stdout_cap(core: &Core) -> usize {
    let read = core.envelope.max(MAX_BATCH_BYTES);
    let encoded = read.saturating_mul(14) / 10;
    usize::try_from(encoded)
        .unwrap_or(usize::MAX)
        .saturating_add(MAX_BATCH_FILES * 512 + 64 * 1024)
}

/// The start-up command: directories, `relay.json`, and claims left by a previous relay.
async fn start_up(core: &Arc<Core>) -> Result<TakeOutput, TransportError> {
    let mut delay = BACKOFF_START;
    let mut last_error = String::new();
    for attempt in 1..=STARTUP_ATTEMPTS {
        let script = scripts::start(
            &core.ops,
            &core.dir,
            Some(&core.announcement),
            &take_params(core, Duration::ZERO),
        );
        match core.runner.run(script, None, take_stdout_cap(core)).await {
            Ok(out) => {
                let parsed = scripts::parse_take(&out.stdout);
                if out.success && parsed.complete {
                    return Ok(parsed);
                }
                last_error = format!("start-up command failed: {}", out.stderr.trim());
            }
            Err(e) => last_error = e.to_string(),
        }
        tracing::warn!(attempt, error = %last_error, "relay start-up failed");
        if attempt < STARTUP_ATTEMPTS {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(BACKOFF_MAX);
        }
    }
    Err(TransportError::Fatal(format!(
        "cannot reach the sandbox queue: {last_error}"
    )))
}

/// A sandbox command running in its own task.
type Command = JoinHandle<Result<Output, ExecError>>;

/// The relay's event loop: one take lane, one put lane, up to eight forwards.
struct Loop {
    core: Arc<Core>,
    stop_rx: mpsc::Receiver<ExitReason>,
    deadline_tx: watch::Sender<bool>,
    drain_timeout: Duration,
    /// Ids taken and not yet answered (or given up on): never taken twice.
    in_progress: HashSet<String>,
    backlog: VecDeque<Job>,
    forwarding: JoinSet<Ready>,
    ready: Vec<Ready>,
    /// The running take (or recovery) command, when it started, and whether it is a recovery.
    take: Option<(Command, Instant, bool)>,
    /// The running put command and the responses it carries.
    put: Option<(Command, Vec<Ready>)>,
    take_not_before: Instant,
    put_not_before: Instant,
    take_failures: u32,
    put_failures: u32,
    failing_since: Option<Instant>,
    recovery_needed: bool,
    /// `relay.json` vanished: write it again (with the next recovery).
    announce_needed: bool,
    stopping: Option<(ExitReason, Instant)>,
}

impl Loop {
    fn new(
        core: Arc<Core>,
        stop_rx: mpsc::Receiver<ExitReason>,
        deadline_tx: watch::Sender<bool>,
        drain_timeout: Duration,
    ) -> Loop {
        let now = Instant::now();
        Loop {
            core,
            stop_rx,
            deadline_tx,
            drain_timeout,
            in_progress: HashSet::new(),
            backlog: VecDeque::new(),
            forwarding: JoinSet::new(),
            ready: Vec::new(),
            take: None,
            put: None,
            take_not_before: now,
            put_not_before: now,
            take_failures: 0,
            put_failures: 0,
            failing_since: None,
            recovery_needed: false,
            announce_needed: false,
            stopping: None,
        }
    }

    /// Handles the entries of a take (or recovery) output.
    fn accept(&mut self, out: TakeOutput, recovered: bool) {
        for item in out.items {
            if !self.in_progress.insert(item.id().to_owned()) {
                continue;
            }
            self.core.activity.touch();
            let id = item.id().to_owned();
            match prepare(&self.core, item, recovered) {
                Prepared::Answer(ready) => self.ready.push(ready),
                Prepared::Forward(job) => self.backlog.push_back(*job),
                // Not ours to answer now; a recovery may find it again (a cut-off output).
                Prepared::Drop => {
                    self.in_progress.remove(&id);
                }
            }
        }
        if recovered && out.more {
            self.recovery_needed = true;
        }
    }

    fn finished(&mut self) -> bool {
        self.stopping.is_some()
            && self.take.is_none()
            && self.put.is_none()
            && self.backlog.is_empty()
            && self.forwarding.is_empty()
            && self.ready.is_empty()
    }

    fn note_failure(&mut self, what: &str, error: &str) -> Result<(), TransportError> {
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        tracing::warn!(command = what, error, "sandbox command failed");
        if since.elapsed() >= TRANSPORT_LOSS_LIMIT {
            return Err(TransportError::Fatal(format!(
                "sandbox commands have failed for {} s: {error}",
                since.elapsed().as_secs()
            )));
        }
        Ok(())
    }

    fn backoff(failures: u32) -> Duration {
        BACKOFF_START
            .saturating_mul(1 << failures.saturating_sub(1).min(16))
            .min(BACKOFF_MAX)
    }

    /// Starts what can start: forwards from the backlog, a put, a take.
    fn schedule(&mut self) {
        let now = Instant::now();
        while self.forwarding.len() < MAX_CONCURRENT_FORWARDS {
            let Some(job) = self.backlog.pop_front() else {
                break;
            };
            if self.stopping.is_some() {
                let deny = Deny::new(DenyCode::ShuttingDown, "The relay is shutting down");
                self.ready.push(answer(&self.core, &job.meta, &deny));
                continue;
            }
            self.forwarding.spawn(forward(self.core.clone(), job));
        }

        let batch_done = self.forwarding.is_empty() && self.backlog.is_empty();
        let oldest = self.ready.iter().map(|r| r.since).min();
        let due = batch_done
            || self.stopping.is_some()
            || oldest.is_some_and(|t| now.duration_since(t) >= PUT_LINGER);
        if self.put.is_none() && !self.ready.is_empty() && due && now >= self.put_not_before {
            self.start_put();
        }

        let room = self.backlog.len() < MAX_BATCH_FILES;
        if self.take.is_none() && self.stopping.is_none() && room && now >= self.take_not_before {
            let core = self.core.clone();
            let announce = std::mem::take(&mut self.announce_needed);
            let recovery = std::mem::take(&mut self.recovery_needed) || announce;
            let script = if recovery {
                scripts::start(
                    &core.ops,
                    &core.dir,
                    announce.then_some(core.announcement.as_str()),
                    &take_params(&core, Duration::ZERO),
                )
            } else {
                scripts::take(&core.ops, &core.dir, &take_params(&core, IDLE_WAIT))
            };
            let cap = take_stdout_cap(&core);
            let handle = tokio::spawn(async move { core.runner.run(script, None, cap).await });
            self.take = Some((handle, now, recovery));
        }
    }

    /// Writes as many ready responses as one command carries.
    fn start_put(&mut self) {
        self.ready.sort_by_key(|r| r.since);
        let mut batch = Vec::new();
        let (script, stdin) = match &self.core.ops {
            Ops::Helper(path) => {
                let mut bytes = 0;
                while let Some(r) = self.ready.first() {
                    if !batch.is_empty() && bytes + r.json.len() > MAX_PUT_BYTES {
                        break;
                    }
                    bytes += r.json.len();
                    batch.push(self.ready.remove(0));
                }
                let items: Vec<(&str, &[u8])> = batch
                    .iter()
                    .map(|r: &Ready| (r.id.as_str(), &r.json[..]))
                    .collect();
                (
                    scripts::put_helper(path, &self.core.dir),
                    Some(scripts::put_helper_stdin(&items)),
                )
            }
            Ops::Sh => {
                let mut stdin_item = None;
                let mut inline = 0;
                let mut rest = Vec::new();
                for r in self.ready.drain(..) {
                    if r.json.len() > scripts::INLINE_RESPONSE_MAX {
                        if stdin_item.is_none() {
                            stdin_item = Some(r);
                        } else {
                            rest.push(r);
                        }
                    } else if inline + r.json.len() <= scripts::INLINE_SCRIPT_BUDGET {
                        inline += r.json.len();
                        batch.push(r);
                    } else {
                        rest.push(r);
                    }
                }
                self.ready = rest;
                let items: Vec<(&str, &[u8])> =
                    batch.iter().map(|r| (r.id.as_str(), &r.json[..])).collect();
                let script = scripts::put_sh(
                    &self.core.dir,
                    &items,
                    stdin_item.as_ref().map(|r| (r.id.as_str(), r.json.len())),
                );
                let stdin = stdin_item.as_ref().map(|r| r.json.clone());
                if let Some(r) = stdin_item {
                    batch.push(r);
                }
                (script, stdin)
            }
        };
        let core = self.core.clone();
        let handle =
            tokio::spawn(async move { core.runner.run(script, stdin, PUT_STDOUT_CAP).await });
        self.put = Some((handle, batch));
    }

    fn take_done(
        &mut self,
        result: Result<Output, ExecError>,
        started: Instant,
        recovery: bool,
    ) -> Result<(), TransportError> {
        let (out, error) = match result {
            Ok(out) => {
                let parsed = scripts::parse_take(&out.stdout);
                let error = (!out.success || !parsed.complete)
                    .then(|| format!("exit failure: {}", out.stderr.trim()));
                (parsed, error)
            }
            Err(e) => (TakeOutput::default(), Some(e.to_string())),
        };
        let empty = out.items.is_empty();
        let complete = out.complete;
        let announcement = out.announcement;
        self.accept(out, recovery);
        match announcement {
            Some(Announcement::Other) => {
                return Err(TransportError::Fatal(
                    "another relay announced itself in relay.json; this one stops".into(),
                ))
            }
            Some(Announcement::Missing) => {
                tracing::warn!("relay.json vanished from the queue; announcing again");
                self.announce_needed = true;
            }
            None => {}
        }
        if let Some(error) = error {
            // Some claims may have been made without us seeing them: look for them next.
            self.recovery_needed = true;
            self.take_failures += 1;
            self.take_not_before = Instant::now() + Self::backoff(self.take_failures);
            return self.note_failure(if recovery { "recover" } else { "take" }, &error);
        }
        debug_assert!(complete);
        self.take_failures = 0;
        if self.put_failures == 0 {
            self.failing_since = None;
        }
        if !recovery && empty && started.elapsed() < IDLE_WAIT / 2 {
            self.take_not_before = Instant::now() + EARLY_EMPTY_PAUSE;
        }
        Ok(())
    }

    fn put_done(
        &mut self,
        result: Result<Output, ExecError>,
        batch: Vec<Ready>,
    ) -> Result<(), TransportError> {
        let (out, error) = match result {
            Ok(out) => {
                let parsed = scripts::parse_put(&out.stdout);
                let error = (!out.success || !parsed.complete)
                    .then(|| format!("exit failure: {}", out.stderr.trim()));
                (parsed, error)
            }
            Err(e) => (PutOutput::default(), Some(e.to_string())),
        };
        for r in batch {
            if out.written.contains(&r.id) {
                self.in_progress.remove(&r.id);
            } else if out.skipped.contains(&r.id) {
                tracing::info!(request_id = %r.id, "response not written: nobody waits for it");
                self.in_progress.remove(&r.id);
            } else if r.attempts + 1 < PUT_ATTEMPTS {
                self.ready.push(Ready {
                    attempts: r.attempts + 1,
                    ..r
                });
            } else {
                tracing::warn!(request_id = %r.id, "giving up writing a response");
                self.in_progress.remove(&r.id);
            }
        }
        if let Some(error) = error {
            self.put_failures += 1;
            self.put_not_before = Instant::now() + Self::backoff(self.put_failures);
            return self.note_failure("put", &error);
        }
        self.put_failures = 0;
        if self.take_failures == 0 {
            self.failing_since = None;
        }
        Ok(())
    }

    async fn run(&mut self) -> Result<ExitReason, TransportError> {
        loop {
            self.schedule();
            if self.finished() {
                return Ok(self.stopping.map_or(ExitReason::Signal, |(r, _)| r));
            }
            let now = Instant::now();
            // The next moment something may become due without an event.
            let mut wake: Option<Instant> = None;
            let mut consider = |t: Instant| {
                if t > now {
                    wake = Some(wake.map_or(t, |w: Instant| w.min(t)));
                }
            };
            if let Some(oldest) = self.ready.iter().map(|r| r.since).min() {
                consider(oldest + PUT_LINGER);
                consider(self.put_not_before);
            }
            if self.take.is_none() {
                consider(self.take_not_before);
            }
            let drain_at = self.stopping.map(|(_, at)| at);
            let deadline_fired = *self.deadline_tx.borrow();
            tokio::select! {
                r = async { (&mut self.take.as_mut().expect("take").0).await }, if self.take.is_some() => {
                    let (_, started, recovery) = self.take.take().expect("take");
                    let r = r.unwrap_or_else(|e| Err(ExecError::Io(std::io::Error::other(e))));
                    self.take_done(r, started, recovery)?;
                }
                r = async { (&mut self.put.as_mut().expect("put").0).await }, if self.put.is_some() => {
                    let (_, batch) = self.put.take().expect("put");
                    let r = r.unwrap_or_else(|e| Err(ExecError::Io(std::io::Error::other(e))));
                    self.put_done(r, batch)?;
                }
                Some(done) = self.forwarding.join_next(), if !self.forwarding.is_empty() => {
                    if let Ok(ready) = done {
                        self.ready.push(ready);
                    }
                }
                reason = self.stop_rx.recv(), if self.stopping.is_none() => {
                    let reason = reason.unwrap_or(ExitReason::Signal);
                    tracing::info!(reason = reason.as_str(), "relay stopping");
                    self.stopping = Some((reason, Instant::now() + self.drain_timeout));
                }
                () = tokio::time::sleep_until(drain_at.unwrap_or(now).into()), if drain_at.is_some() && !deadline_fired => {
                    // In-flight forwards answer now (503, or 409 for dispatched mutations).
                    let _ = self.deadline_tx.send(true);
                }
                () = tokio::time::sleep_until(wake.unwrap_or(now).into()), if wake.is_some() => {}
            }
        }
    }
}

/// Checks one taken file: envelope, wire format, body encoding, then the whole policy.
fn prepare(core: &Core, item: Taken, recovered: bool) -> Prepared {
    core.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let mut meta = Meta::new(item.id(), Instant::now());
    let bytes = match item {
        Taken::Unreadable { id } => {
            tracing::info!(request_id = %id, "request file vanished after it was claimed");
            return Prepared::Drop;
        }
        Taken::TooLarge { id, size } => {
            tracing::warn!(request_id = %id, size, "request envelope too large");
            let deny = Deny::new(
                DenyCode::BodyTooLarge,
                "Bridge request envelope exceeded the configured size limit",
            );
            return Prepared::Answer(answer(core, &meta, &deny));
        }
        Taken::File { bytes, .. } => bytes,
    };
    meta.req_bytes = bytes.len();
    let file = match RequestFile::parse(&bytes, &meta.id, core.envelope) {
        Ok(f) => f,
        Err(e) => return Prepared::Answer(answer(core, &meta, &file_deny(&e))),
    };
    drop(bytes);
    meta.method = match Method::from_bytes(file.method.as_bytes()) {
        Ok(m) => m,
        Err(_) => {
            let deny = Deny::new(
                DenyCode::BadRequest,
                "Invalid bridge request payload: method",
            );
            return Prepared::Answer(answer(core, &meta, &deny));
        }
    };
    let body = match decode_body(
        &file.body,
        file.body_encoding.as_deref(),
        core.max_body_bytes,
    ) {
        Ok(b) => Bytes::from(b),
        Err(e) => return Prepared::Answer(answer(core, &meta, &file_deny(&e))),
    };
    meta.req_bytes = body.len();
    let headers = match file_headers(&file, body.len()) {
        Ok(h) => h,
        Err(deny) => return Prepared::Answer(answer(core, &meta, &deny)),
    };
    let target = file.target();
    let head = RequestHead {
        method: &meta.method,
        target: &target,
        headers: &headers,
    };
    let decision = core.policy.evaluate(&head, TokenCheck::Skip);
    let allow = match decision {
        Decision::Allow(allow) => allow,
        Decision::Deny(deny) => return Prepared::Answer(answer(core, &meta, &deny)),
        Decision::Local(_) => {
            let deny = Deny::new(
                DenyCode::NotFound,
                "Bridge-local paths are answered by the gateway, not carried over the queue",
            );
            return Prepared::Answer(answer(core, &meta, &deny));
        }
    };
    meta.route = Some(allow.route_id.clone());
    meta.query_keys = telemetry::query_keys(&allow.target);
    if recovered && !is_safe(&meta.method) {
        let deny = Deny::new(
            DenyCode::OutcomeIndeterminate,
            "The relay restarted while this request was in flight; it may or may not have been applied",
        );
        return Prepared::Answer(answer(core, &meta, &deny));
    }
    if let Err(retry_after) = core.rate.check() {
        let deny = Deny::new(DenyCode::RateLimited, "Rate limit exceeded");
        let mut ready = answer(core, &meta, &deny);
        ready.json = with_retry_after(&ready.json, retry_after);
        return Prepared::Answer(ready);
    }
    Prepared::Forward(Box::new(Job { meta, allow, body }))
}

fn with_retry_after(json: &[u8], secs: u64) -> Vec<u8> {
    match serde_json::from_slice::<ResponseFile>(json) {
        Ok(mut f) => {
            f.headers
                .insert(RETRY_AFTER.as_str().to_owned(), secs.to_string());
            f.to_bytes()
        }
        Err(_) => json.to_vec(),
    }
}

/// The denial for a file that failed the wire-format checks.
fn file_deny(e: &FileError) -> Deny {
    match e {
        FileError::EnvelopeTooLarge { .. } => Deny::new(
            DenyCode::BodyTooLarge,
            "Bridge request envelope exceeded the configured size limit",
        ),
        FileError::BodyTooLarge(_) => Deny::new(
            DenyCode::BodyTooLarge,
            "Request body exceeds the size limit",
        ),
        FileError::Malformed(why) => Deny::new(
            DenyCode::BadRequest,
            format!("Invalid bridge request payload: {why}"),
        ),
        FileError::UnsupportedEncoding(_) => {
            Deny::new(DenyCode::BadRequest, "Unsupported bridge body encoding")
        }
        FileError::InvalidBase64 => Deny::new(
            DenyCode::BadRequest,
            "Bridge request body is not valid base64",
        ),
    }
}

/// The file's headers as a request head: names and values must be valid; the framing is the
/// relay's own (`content-length` of the decoded body), never the file's.
fn file_headers(file: &RequestFile, body_len: usize) -> Result<HeaderMap, Deny> {
    let mut headers = HeaderMap::new();
    for (name, value) in &file.headers {
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            Deny::new(
                DenyCode::BadRequest,
                "Invalid bridge request payload: header name",
            )
        })?;
        if name == CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING {
            continue;
        }
        let value = HeaderValue::from_str(value).map_err(|_| {
            Deny::new(
                DenyCode::BadRequest,
                "Invalid bridge request payload: header value",
            )
        })?;
        headers.append(name, value);
    }
    if body_len > 0 {
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body_len));
    }
    Ok(headers)
}

/// A response file for a denial, with the access log and metrics. An indeterminate outcome is
/// written as 504 + `x-paperclip-bridge-outcome: indeterminate` (Paperclip's host convention;
/// every gateway turns it into 409).
fn answer(core: &Core, meta: &Meta, deny: &Deny) -> Ready {
    let indeterminate = deny.code == DenyCode::OutcomeIndeterminate;
    let status = if indeterminate {
        StatusCode::GATEWAY_TIMEOUT
    } else {
        deny.code.status()
    };
    let mut headers = std::collections::BTreeMap::new();
    headers.insert(
        CONTENT_TYPE.as_str().to_owned(),
        "application/json".to_owned(),
    );
    headers.insert(X_BRIDGE_ERROR.to_owned(), deny.code.as_str().to_owned());
    if indeterminate {
        headers.insert(X_OUTCOME.to_owned(), "indeterminate".to_owned());
    }
    let body = deny_body(deny);
    log_outcome(
        core,
        meta,
        status.as_u16(),
        Some(deny.code),
        body.len(),
        None,
    );
    let file = ResponseFile {
        id: meta.id.clone(),
        status: status.as_u16(),
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        body_encoding: None,
        completed_at: file::now_iso8601(),
    };
    Ready {
        id: meta.id.clone(),
        json: file.to_bytes(),
        since: Instant::now(),
        attempts: 0,
    }
}

/// One access-log event and the outcome metrics for a request file.
fn log_outcome(
    core: &Core,
    meta: &Meta,
    status: u16,
    code: Option<DenyCode>,
    resp_bytes: usize,
    upstream: Option<Duration>,
) {
    core.metrics
        .record_outcome(meta.route.as_ref(), status, code);
    let route = meta.route.as_deref().unwrap_or("-");
    tracing::info!(
        target: "access",
        request_id = %meta.id,
        method = %meta.method,
        route,
        status,
        code = code.map_or("", DenyCode::as_str),
        req_bytes = meta.req_bytes,
        resp_bytes,
        total_ms = meta.received.elapsed().as_secs_f64() * 1e3,
        upstream_ms = upstream.map(|d| d.as_secs_f64() * 1e3),
        query_keys = %meta.query_keys,
        "request"
    );
}

/// Forwards one allowed request and turns the result into a response file.
async fn forward(core: Arc<Core>, job: Job) -> Ready {
    let Job { meta, allow, body } = job;
    let req_state = Arc::new(BodyState::default());
    let deadline = {
        let mut rx = core.deadline.clone();
        async move {
            let _ = rx.wait_for(|d| *d).await;
        }
    };
    let result = core
        .forwarder
        .forward(
            meta.method.clone(),
            allow,
            Full::new(body),
            req_state,
            deadline,
        )
        .await;
    let (parts, incoming, upstream_time) = match result {
        Ok(fwd) => {
            let (parts, body) = fwd.response.into_parts();
            (parts, body, fwd.upstream_time)
        }
        Err(deny) => return answer(&core, &meta, &deny),
    };
    let bytes = match incoming.collect().await {
        Ok(c) => c.to_bytes(),
        Err(e) => {
            core.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
            let deny = match e {
                BodyError::TooLarge(_) => unknown_outcome(
                    &meta.method,
                    DenyCode::ResponseTooLarge,
                    "The upstream response is larger than the bridge's limit",
                ),
                _ => unknown_outcome(
                    &meta.method,
                    DenyCode::UpstreamError,
                    "The upstream response body failed",
                ),
            };
            return answer(&core, &meta, &deny);
        }
    };
    let mut headers = std::collections::BTreeMap::new();
    for name in parts.headers.keys() {
        let values: Vec<&str> = parts
            .headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if !values.is_empty() {
            headers.insert(name.as_str().to_owned(), values.join(", "));
        }
    }
    log_outcome(
        &core,
        &meta,
        parts.status.as_u16(),
        None,
        bytes.len(),
        Some(upstream_time),
    );
    let (body, body_encoding) = encode_body(&bytes);
    let file = ResponseFile {
        id: meta.id.clone(),
        status: parts.status.as_u16(),
        headers,
        body,
        body_encoding,
        completed_at: file::now_iso8601(),
    };
    Ready {
        id: meta.id,
        json: file.to_bytes(),
        since: Instant::now(),
        attempts: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> RequestFile {
        RequestFile {
            id: "a".into(),
            method: "POST".into(),
            path: "/x".into(),
            query: String::new(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: String::new(),
            body_encoding: None,
            created_at: String::new(),
        }
    }

    #[test]
    fn file_framing_headers_are_replaced_by_the_decoded_length() {
        let f = request(&[("content-length", "999"), ("transfer-encoding", "chunked")]);
        let h = file_headers(&f, 5).unwrap();
        assert_eq!(h.get(CONTENT_LENGTH).unwrap(), "5");
        assert!(h.get(http::header::TRANSFER_ENCODING).is_none());
        let h = file_headers(&f, 0).unwrap();
        assert!(h.get(CONTENT_LENGTH).is_none());
    }

    #[test]
    fn invalid_header_names_or_values_are_bad_requests() {
        assert!(file_headers(&request(&[("bad name", "x")]), 0).is_err());
        assert!(file_headers(&request(&[("accept", "a\r\nb")]), 0).is_err());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(Loop::backoff(1), BACKOFF_START);
        assert_eq!(Loop::backoff(2), BACKOFF_START * 2);
        assert_eq!(Loop::backoff(30), BACKOFF_MAX);
    }
}
