//! The queue relay (on the host): takes request files out of the sandbox through one-shot
//! commands, applies the whole policy again, forwards with the real credential, writes the
//! response files back.
//!
//! Promise: every file read from the sandbox is untrusted input — it passes the same policy as an
//! HTTP request (without the token, which files do not carry) and the wire-format checks, or it
//! gets the same denial as over HTTP, and nothing reaches the upstream; a request is forwarded at
//! most once unless it is safe (exactly-once hand-off of docs/reference.md §6.1: claim by rename in the
//! command that reads it, answer only while the claim exists, and after a restart re-forward
//! only safe methods); the credential never enters the sandbox (not in argv, env or files); few
//! commands: idle ≤ 1 per 5 s, a burst is taken by one command and answered by one.
//! Attacks defended: planted or edited request files, a hostile command output (parsed strictly,
//! size-capped), a hung or dead exec channel (30 s cap per command, backoff, bounded retries).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use super::exec::{CommandFailure, ExecError, Output, Runner, Stdin};
use super::file::{
    self, decode_body, encode_body, envelope_limit, FileError, RelayAnnouncement, RequestFile,
    ResponseFile, CLAIMS_PROTOCOL,
};
use super::presence;
use super::scripts::{self, Announcement, Ops, PutOutput, TakeOutput, TakeParams, Taken};
use crate::body::{self, BodyError};
use crate::config::QueueRelayConfig;
use crate::dispatch::{is_safe, Allowed, Dispatch, ForwardError, Forwarded, Hop, RequestBody};
use crate::lifecycle::ExitReason;
use crate::pipeline::{Inbound, LocalEndpoints, Pipeline, PipelineSettings, Target};
use crate::policy::{Deny, DenyCode};
use crate::proxy::Forwarder;
use crate::respond::{X_BRIDGE_ERROR, X_REQUEST_ID};
use crate::server::{print_line, write_private_file, ServeError};
use crate::telemetry::{Logged, Metrics};
use crate::transport::deadline_margin;
use crate::transport::TransportError;

/// Requests forwarded at the same time (docs/reference.md §6.1). More would only queue at the upstream.
pub const MAX_CONCURRENT_FORWARDS: usize = 8;
/// Most request files one command takes (docs/reference.md §6.1).
pub const MAX_BATCH_FILES: usize = 16;
/// Most request bytes one command reads (docs/reference.md §6.1); a single larger file is still taken alone.
pub const MAX_BATCH_BYTES: u64 = 8 * 1024 * 1024;
/// The idle wait inside the sandbox for the first request file (docs/reference.md §6.1: ≤ 1 command per
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
/// Longest pause a take may make once it has begun printing (its listing): reading a claimed
/// file never pauses that long unless the read blocks (a FIFO swapped in after the `sh` check,
/// see docs/queue-transport.md); the command is then killed and its claims recovered.
pub const TAKE_STALL: Duration = Duration::from_secs(5);
/// Largest put output: a marker line per response.
const PUT_STDOUT_CAP: usize = 64 * 1024;
/// After a take returned requests, the next plain take waits this long for their answers, so
/// that one command writes the answers and takes the next requests (docs/queue-transport.md,
/// "Exec economy"); a slower answer goes by its own put.
pub const TAKE_HOLD: Duration = Duration::from_millis(100);
/// A spare command not given work within this long is retired (it exits at once): what it then
/// runs (an idle wait, a put) must still end within the command time limit.
pub const SPARE_MAX_AGE: Duration = Duration::from_secs(20);
/// Spare commands kept started ahead. A spare given work before its exec delay has passed still
/// makes the answer wait for the rest of it; with two, back-to-back requests use a spare started
/// two hand-offs earlier. Idle, each waits two idle waits before its turn (within
/// [`SPARE_MAX_AGE`]).
pub const SPARES: usize = 2;
/// The gateway's response timeout when neither the host (`--response-timeout`,
/// `PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS`) nor the request file says (Paperclip's default).
pub const DEFAULT_GATEWAY_TIMEOUT: Duration = Duration::from_secs(30);
/// An answer is not published later than this before the gateway gives up (sandbox clock).
pub const PUT_GUARD: Duration = Duration::from_millis(200);
/// The `sh` put checks the sandbox clock (one `date` process, on the answer's path) only for an
/// answer with less than this left before the gateway gives up (host's reckoning); later
/// ones are rare (a command that took this long to start) and swept. The helper always checks.
pub const PUT_CHECK_WINDOW: Duration = Duration::from_secs(5);
/// A request with less time than this left before the relay's deadline is not forwarded.
pub const MIN_FORWARD_TIME: Duration = Duration::from_millis(50);
/// How often the relay removes what it wrote for Paperclip's gateway and nobody read (that
/// gateway does not sweep); at most [`MAX_SWEEP_IDS`] ids per command.
pub const RELAY_SWEEP_INTERVAL: Duration = Duration::from_secs(10);
pub const MAX_SWEEP_IDS: usize = 256;
/// How long after the gateway's deadline the relay sweeps what is left of a request.
const SWEEP_GRACE: Duration = Duration::from_secs(2);

/// What the relay loop shares with its forwarding tasks.
struct Core {
    dir: String,
    ops: Ops,
    runner: Runner,
    /// Every request file goes through this pipeline (no token: files carry none; the gateway
    /// checked it), its dispatcher forwarding upstream.
    pipeline: Arc<Pipeline<FileForwarder>>,
    max_body_bytes: u64,
    envelope: u64,
    /// This relay's `relay.json` (protocol, pid, start time): written at start-up, and checked
    /// by every take before it claims.
    announcement: String,
    /// The gateway's response timeout, when the host said.
    response_timeout: Option<Duration>,
}

/// The relay's deadline for forwarding one request (a request extension): well before the
/// gateway gives up waiting for it.
#[derive(Debug, Clone, Copy)]
struct ForwardBy(Instant);

/// What a request file says about its gateway's wait.
#[derive(Debug, Clone, Copy, Default)]
struct FileMeta {
    /// `createdAt`, in ms since the epoch (sandbox clock).
    created_ms: Option<u64>,
    /// `responseTimeoutMs` (our gateway writes it).
    timeout_ms: Option<u64>,
}

/// When the gateway gives up on a request, as the relay reckons it.
#[derive(Debug, Clone, Copy)]
struct Timing {
    /// When the gateway gives up (host clock).
    gateway_at: Instant,
    /// The relay's deadline (host clock): the gateway's less the margin.
    forward_by: Instant,
    /// Sandbox time (ms) after which an answer is not published.
    not_after: Option<u64>,
    /// When what is left of the request may be swept (host clock).
    sweep_at: Instant,
    /// Whether the relay sweeps it: the gateway does not say its timeout (Paperclip's), so it
    /// does not sweep either.
    relay_sweeps: bool,
}

impl Timing {
    /// The gateway's timeout for a request: the smaller of the host's and the file's (a file
    /// can only shorten its own), else either, else 30 s.
    fn gateway_timeout(host: Option<Duration>, meta: &FileMeta) -> Duration {
        let file = meta
            .timeout_ms
            .filter(|&ms| ms > 0)
            .map(Duration::from_millis);
        match (host, file) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(DEFAULT_GATEWAY_TIMEOUT),
        }
    }

    /// The timing of a request taken by a command that began to look at `sandbox_ms` (sandbox
    /// clock, when the command said) and whose output was complete at `received`. The gateway
    /// started waiting at `createdAt`; both are the sandbox's clock, so the host's clock never
    /// enters the difference. A request written during the take's wait (`createdAt` after
    /// `sandbox_ms`, by at most the wait) has waited for nothing yet. Without a usable
    /// `createdAt` (missing, further in the future, or older than the gateway waits) the wait
    /// is reckoned from the take.
    fn of(
        host: Option<Duration>,
        meta: &FileMeta,
        sandbox_ms: Option<u64>,
        received: Instant,
    ) -> Timing {
        let t = Timing::gateway_timeout(host, meta);
        let t_ms = t.as_millis() as u64;
        let grace_ms = SWEEP_GRACE.as_millis() as u64;
        let wait_ms = (IDLE_WAIT + SWEEP_GRACE).as_millis() as u64;
        let reference = match (meta.created_ms, sandbox_ms) {
            (Some(c), Some(now)) if c <= now && now - c <= t_ms + grace_ms => Some((c, now - c)),
            (Some(c), Some(now)) if c > now && c - now <= wait_ms => Some((c, 0)),
            (_, Some(now)) => Some((now, 0)),
            _ => None,
        };
        let age = Duration::from_millis(reference.map_or(0, |(_, age)| age));
        let left = t.saturating_sub(age);
        let forward_by = (received + left)
            .checked_sub(deadline_margin(t))
            .unwrap_or(received);
        let guard = PUT_GUARD.min(deadline_margin(t) / 2).as_millis() as u64;
        Timing {
            gateway_at: received + left,
            forward_by,
            not_after: reference.map(|(r, _)| r + t_ms.saturating_sub(guard)),
            sweep_at: received + left + SWEEP_GRACE,
            relay_sweeps: meta.timeout_ms.is_none(),
        }
    }
}

/// Marks a request found claimed by a previous relay (after a crash or `kill -9`): a mutation
/// may already have been forwarded once, so it is never forwarded again.
#[derive(Debug, Clone, Copy)]
struct Recovered;

/// The queue relay's dispatcher: the forwarder, with the recovery rule, and the response read
/// whole (bounded by the body limit), since it becomes one response file.
pub struct FileForwarder(Forwarder);

impl FileForwarder {
    /// Forwards within the request's [`ForwardBy`] deadline: one with too little time left is
    /// not sent (503 `bridge_unavailable`), one the upstream does not answer in time is the
    /// upstream's timeout (504 / 409), answered before the gateway gives up.
    async fn forward<B: RequestBody>(&self, req: Allowed<B>) -> Result<Forwarded, ForwardError> {
        let Some(ForwardBy(by)) = req.extensions.get::<ForwardBy>().copied() else {
            return self.forward_now(req).await;
        };
        let left = by.saturating_duration_since(Instant::now());
        if left < MIN_FORWARD_TIME {
            return Err(ForwardError::Refused(Deny::new(
                DenyCode::BridgeUnavailable,
                "The request waited in the queue until the gateway was about to give up; it was not sent",
            )));
        }
        match tokio::time::timeout(left, self.forward_now(req)).await {
            Ok(result) => result,
            Err(_) => Err(ForwardError::TimedOut { hop: Hop::Upstream }),
        }
    }

    async fn forward_now<B: RequestBody>(
        &self,
        req: Allowed<B>,
    ) -> Result<Forwarded, ForwardError> {
        if req.extensions.get::<Recovered>().is_some() && !is_safe(&req.method) {
            return Err(ForwardError::Refused(Deny::new(
                DenyCode::OutcomeIndeterminate,
                "The relay restarted while this request was in flight; it may or may not have been applied",
            )));
        }
        let forwarded = self.0.dispatch(req).await?;
        let (parts, body) = forwarded.response.into_parts();
        let bytes = match body.collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(BodyError::TooLarge(_)) => {
                return Err(ForwardError::ResponseTooLarge { hop: Hop::Upstream })
            }
            Err(e) => {
                return Err(ForwardError::BadResponse {
                    hop: Hop::Upstream,
                    source: Some(Box::new(e)),
                })
            }
        };
        Ok(Forwarded {
            response: Response::from_parts(parts, body::full(bytes)),
            upstream_time: forwarded.upstream_time,
        })
    }
}

impl Dispatch for FileForwarder {
    fn dispatch<B: RequestBody>(
        &self,
        req: Allowed<B>,
    ) -> impl std::future::Future<Output = Result<Forwarded, ForwardError>> + Send {
        self.forward(req)
    }

    fn describe(&self) -> String {
        self.0.describe()
    }
}

/// A request file taken from the sandbox, waiting for a forwarding slot: the request, or the
/// transport's refusal of an unreadable file.
struct Job {
    id: String,
    request: FileRequest,
    timing: Option<Timing>,
}

/// A request read from a file, or the refusal (with the method, when it was readable).
type FileRequest = Result<Inbound<Full<Bytes>>, (Method, Deny)>;

/// A response file waiting to be written into the sandbox.
struct Ready {
    id: String,
    json: Vec<u8>,
    since: Instant,
    attempts: u32,
    timing: Option<Timing>,
}

/// `callback-bridge relay --transport queue -- <exec prefix…>`: runs until a stop reason; prints
/// the ready and exit lines.
pub async fn run(config: QueueRelayConfig) -> Result<(), TransportError> {
    let QueueRelayConfig {
        target,
        common,
        queue_dir,
        sandbox_helper,
        response_timeout,
        command,
        scrub,
        fallback_reason,
    } = config;
    let metrics = Arc::new(Metrics::default());
    let forwarder = Forwarder::new(target, &common, metrics.clone());
    let pipeline = Arc::new(Pipeline::new(
        PipelineSettings::new(&common, None, LocalEndpoints::NotFound),
        FileForwarder(forwarder),
        metrics.clone(),
    ));
    let core = Arc::new(Core {
        dir: queue_dir,
        ops: sandbox_helper.map_or(Ops::Sh, Ops::Helper),
        runner: Runner::new(command, scrub),
        pipeline,
        max_body_bytes: common.limits.max_body_bytes,
        envelope: envelope_limit(common.limits.max_body_bytes),
        announcement: serde_json::to_string(&RelayAnnouncement {
            protocol: CLAIMS_PROTOCOL.to_owned(),
            pid: std::process::id(),
            started_at: file::now_iso8601(),
        })
        .unwrap_or_default(),
        response_timeout,
    });

    // Whether a gateway is there yet (docs/reference.md §6.3), asked alongside the start-up.
    let started = Instant::now();
    let (recovered, gateway_ready) = tokio::join!(
        start_up(&core),
        presence::gateway_ready(&core.runner, &core.dir)
    );
    let recovered = recovered?;
    // Watchers (signal handlers included) exist before the ready line: a SIGTERM right after
    // readiness must stop the relay cleanly, not kill it.
    let (stop_tx, stop_rx) = mpsc::channel(4);
    core.pipeline.watch_lifecycle(&common.lifecycle, stop_tx);
    let admin = crate::admin::start(common.admin, &metrics).await?;
    #[derive(serde::Serialize)]
    struct ReadyLine<'a> {
        event: &'static str,
        transport: &'static str,
        queue_dir: &'a str,
        pid: u32,
        #[serde(skip_serializing_if = "Option::is_none")]
        gateway_ready: Option<bool>,
        /// `--transport auto` only: why the stdio channel did not start.
        #[serde(skip_serializing_if = "Option::is_none")]
        fallback_reason: Option<&'static str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        admin: Option<String>,
    }
    let line = crate::server::ready_json(&ReadyLine {
        event: "ready",
        transport: "queue",
        queue_dir: &core.dir,
        pid: std::process::id(),
        gateway_ready,
        fallback_reason,
        admin,
    });
    if let Some(path) = &common.lifecycle.ready_file {
        write_private_file(path, line.as_bytes()).map_err(|source| ServeError::ReadyFile {
            path: path.clone(),
            source,
        })?;
    }
    print_line(&line)?;
    metrics.readiness.serving(true);
    tracing::info!(queue = %core.dir, prefix = %core.runner.describe(), to = %core.pipeline.dispatcher().describe(), "relay ready");

    if gateway_ready == Some(false) {
        presence::log_absent_at_start(&core.dir);
    }
    let watcher = (gateway_ready != Some(true)).then(|| {
        tokio::spawn(presence::watch(
            core.runner.clone(),
            core.dir.clone(),
            started,
        ))
    });
    let mut lp = Loop::new(core.clone(), stop_rx, common.limits.drain_timeout);
    lp.accept(recovered, true);
    let outcome = lp.run().await;
    watcher.inspect(JoinHandle::abort);
    let reason = outcome.as_ref().map_or(ExitReason::Transport, |r| *r);
    print_line(&metrics.exit_line(reason.as_str()))?;
    outcome.map(|_| ())
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

/// The put plan of a batch (see [`Loop::put_batch`] for its order) and the command's stdin.
fn put_plan<'a>(ops: &Ops, batch: &'a [Ready]) -> (scripts::PutPlan<'a>, Option<Vec<u8>>) {
    let now = Instant::now();
    let checked = |t: &Timing| {
        matches!(ops, Ops::Helper(_))
            || t.gateway_at.saturating_duration_since(now) < PUT_CHECK_WINDOW
    };
    let items: Vec<scripts::PutItem<'a>> = batch
        .iter()
        .map(|r| scripts::PutItem {
            id: &r.id,
            json: &r.json,
            not_after: r.timing.filter(checked).and_then(|t| t.not_after),
        })
        .collect();
    match ops {
        Ops::Helper(_) => {
            let stdin = (!items.is_empty()).then(|| scripts::put_helper_stdin(&items));
            (scripts::PutPlan::default(), stdin)
        }
        Ops::Sh => {
            let mut plan = scripts::PutPlan::default();
            let mut stdin = None;
            for (item, r) in items.into_iter().zip(batch) {
                if r.json.len() > scripts::INLINE_RESPONSE_MAX && plan.stdin.is_none() {
                    plan.stdin = Some((item, r.json.len()));
                    stdin = Some(r.json.clone());
                } else {
                    plan.inline.push(item);
                }
            }
            (plan, stdin)
        }
    }
}

/// The start-up command: directories, `relay.json`, and claims left by a previous relay.
async fn start_up(core: &Arc<Core>) -> Result<TakeBatch, TransportError> {
    let mut delay = BACKOFF_START;
    let mut last_error = None;
    for attempt in 1..=STARTUP_ATTEMPTS {
        let script = scripts::start(
            &core.ops,
            &core.dir,
            Some(&core.announcement),
            &take_params(core, Duration::ZERO),
        );
        match run_take(core.clone(), script, Stdin::None, true).await {
            (Ok(out), batch) => {
                if out.success && batch.summary.complete {
                    return Ok(batch);
                }
                last_error = Some(CommandFailure::failed("start-up", &out));
            }
            (Err(e), _) => last_error = Some(CommandFailure::Exec(e)),
        }
        if let Some(e) = &last_error {
            tracing::warn!(attempt, error = %e, "relay start-up failed");
        }
        if attempt < STARTUP_ATTEMPTS {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(BACKOFF_MAX);
        }
    }
    Err(TransportError::SandboxUnreachable {
        attempts: STARTUP_ATTEMPTS,
        source: last_error.unwrap_or(CommandFailure::Exec(ExecError::Timeout(Duration::ZERO))),
    })
}

/// A sandbox command running in its own task.
type Command = JoinHandle<Result<Output, ExecError>>;
/// A take (or recovery) command running in its own task, with the requests it yielded.
type TakeCommand = JoinHandle<(Result<Output, ExecError>, TakeBatch)>;

/// The requests a take (or recovery) command yielded, each read, checked and parsed as soon as
/// its file was complete (`None`: nothing to answer), and what else its output said.
struct TakeBatch {
    jobs: Vec<(String, Option<(FileRequest, FileMeta)>)>,
    summary: TakeOutput,
}

/// Runs a take (or recovery) command and reads its output as it arrives: each file becomes a
/// request (or a refusal) as soon as it is complete, so the relay holds at most one raw file
/// (at most the envelope) however much the sandbox prints; a file passing the envelope is
/// refused at once and the command stopped.
async fn run_take(
    core: Arc<Core>,
    script: String,
    stdin: Stdin,
    recovered: bool,
) -> (Result<Output, ExecError>, TakeBatch) {
    let mut jobs = Vec::new();
    let mut parser = scripts::TakeParser::new(core.envelope, |item: Taken| {
        let id = item.id().to_owned();
        jobs.push((id, prepare(&core, item, recovered)));
    });
    let cap = take_stdout_cap(&core);
    let result = core
        .runner
        .run_streaming(
            script,
            stdin,
            cap,
            Some(TAKE_STALL),
            &mut |chunk: &[u8]| parser.feed(chunk),
        )
        .await;
    let summary = parser.finish();
    (result, TakeBatch { jobs, summary })
}

/// A running take (or recovery) command: when it started, whether it is a recovery, the
/// responses it publishes first (a combined put and take), and the ids it sweeps.
struct TakeRun {
    handle: TakeCommand,
    started: Instant,
    recovery: bool,
    carried: Vec<Ready>,
    swept: Vec<String>,
}

/// A spare command: started, waiting on its stdin for the take lane's next script.
struct Spare {
    handle: TakeCommand,
    work: tokio::sync::oneshot::Sender<Vec<u8>>,
    started: Instant,
}

/// The relay's event loop: one take lane (whose command may also write answers), one put lane,
/// up to eight forwards.
struct Loop {
    core: Arc<Core>,
    stop_rx: mpsc::Receiver<ExitReason>,
    /// Whether the drain deadline passed (the pipeline was told).
    deadline_passed: bool,
    drain_timeout: Duration,
    /// Ids taken and not yet answered (or given up on): never taken twice.
    in_progress: HashSet<String>,
    backlog: VecDeque<Job>,
    forwarding: JoinSet<Ready>,
    ready: Vec<Ready>,
    /// The running take (or recovery) command.
    take: Option<TakeRun>,
    /// No plain take before this while the answers of the last take's requests may come: they
    /// then go with the next take, in one command.
    hold_until: Instant,
    /// Ids whose leftovers the relay sweeps (Paperclip's gateway does not), and when.
    sweeps: Vec<(String, Instant)>,
    last_sweep: Instant,
    /// Sandbox clock minus host clock (ms), when a command has said.
    clock_offset_ms: Option<i64>,
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
    /// The take lane's next commands, already started (the exec channel's delay is paid while
    /// nothing waits for it), oldest first.
    spares: VecDeque<Spare>,
    /// Spares told to exit (retired by age, or on stop), awaited.
    retiring: JoinSet<(Result<Output, ExecError>, TakeBatch)>,
    spare_not_before: Instant,
    spare_failures: u32,
    /// The exec channel gave a spare no stdin (it ended at once): no more spares.
    spares_off: bool,
}

impl Loop {
    fn new(core: Arc<Core>, stop_rx: mpsc::Receiver<ExitReason>, drain_timeout: Duration) -> Loop {
        let now = Instant::now();
        Loop {
            core,
            stop_rx,
            deadline_passed: false,
            drain_timeout,
            in_progress: HashSet::new(),
            backlog: VecDeque::new(),
            forwarding: JoinSet::new(),
            ready: Vec::new(),
            take: None,
            hold_until: now,
            sweeps: Vec::new(),
            last_sweep: now.checked_sub(RELAY_SWEEP_INTERVAL).unwrap_or(now),
            clock_offset_ms: None,
            put: None,
            take_not_before: now,
            put_not_before: now,
            take_failures: 0,
            put_failures: 0,
            failing_since: None,
            recovery_needed: false,
            announce_needed: false,
            stopping: None,
            spares: VecDeque::new(),
            retiring: JoinSet::new(),
            spare_not_before: now,
            spare_failures: 0,
            spares_off: false,
        }
    }

    /// Handles the entries of a take (or recovery) output.
    fn accept(&mut self, batch: TakeBatch, recovered: bool) {
        let received = Instant::now();
        let host_ms = file::now_epoch_ms() as i64;
        // The sandbox clock: the command's own reading, else the host's clock plus the offset
        // learnt from readings made just before a command's output (start-up and recovery
        // listings, every helper take). The `sh` take reads it only when its put did, before
        // its wait: used as is, not learnt from.
        let sandbox_ms = match batch.summary.sandbox_ms {
            Some(t) => {
                if recovered || matches!(self.core.ops, Ops::Helper(_)) {
                    self.clock_offset_ms = Some(t as i64 - host_ms);
                }
                Some(t)
            }
            None => self
                .clock_offset_ms
                .map(|offset| host_ms.saturating_add(offset).max(0) as u64),
        };
        for (id, prepared) in batch.jobs {
            // Not ours to answer now (vanished; a recovery may find it again), or taken already.
            let Some((mut request, meta)) = prepared else {
                continue;
            };
            if self.in_progress.insert(id.clone()) {
                let timing = Timing::of(self.core.response_timeout, &meta, sandbox_ms, received);
                if let Ok(inbound) = &mut request {
                    inbound.extensions.insert(ForwardBy(timing.forward_by));
                }
                self.backlog.push_back(Job {
                    id,
                    request,
                    timing: Some(timing),
                });
            }
        }
        if recovered && batch.summary.more {
            self.recovery_needed = true;
        }
    }

    fn finished(&mut self) -> bool {
        self.stopping.is_some()
            && self.take.is_none()
            && self.put.is_none()
            && self.spares.is_empty()
            && self.retiring.is_empty()
            && self.backlog.is_empty()
            && self.forwarding.is_empty()
            && self.ready.is_empty()
    }

    fn note_failure(&mut self, what: &str, error: CommandFailure) -> Result<(), TransportError> {
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        // Stopping, or the first failure of its lane (take or put, which may both be running)
        // by the signal that stops the relay's process group: part of an ordinary stop, not a
        // fault (a repeat while not stopping is one: warned).
        let first = if what == "put" {
            self.put_failures
        } else {
            self.take_failures
        } <= 1;
        if self.stopping.is_some() || (first && error.ended_by_stop_signal()) {
            tracing::info!(command = what, error = %error, "sandbox command ended");
        } else {
            tracing::warn!(command = what, error = %error, "sandbox command failed");
        }
        if since.elapsed() >= TRANSPORT_LOSS_LIMIT {
            return Err(TransportError::SandboxLost {
                secs: since.elapsed().as_secs(),
                source: error,
            });
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
        self.schedule_lanes();
        self.schedule_spare();
    }

    /// Starts spares up to [`SPARES`]; retires those too old or no longer needed.
    fn schedule_spare(&mut self) {
        let now = Instant::now();
        while let Some(spare) = self.spares.pop_front() {
            if self.stopping.is_none() && now.duration_since(spare.started) < SPARE_MAX_AGE {
                self.spares.push_front(spare);
                break;
            }
            // Its stdin closes empty: it exits at once without touching the queue.
            drop(spare.work);
            self.retiring.spawn(async move {
                spare.handle.await.unwrap_or_else(|e| {
                    let batch = TakeBatch {
                        jobs: Vec::new(),
                        summary: TakeOutput::default(),
                    };
                    (Err(ExecError::Io(std::io::Error::other(e))), batch)
                })
            });
        }
        while self.spares.len() < SPARES
            && !self.spares_off
            && self.stopping.is_none()
            && now >= self.spare_not_before
        {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let script = scripts::spare(&self.core.ops);
            let handle = tokio::spawn(run_take(self.core.clone(), script, Stdin::Later(rx), false));
            self.spares.push_back(Spare {
                handle,
                work: tx,
                started: now,
            });
        }
    }

    /// A spare ended before it was given work.
    fn spare_ended(&mut self, result: Result<Output, ExecError>) -> Result<(), TransportError> {
        match result {
            Ok(_) if self.spares_off => Ok(()),
            Ok(out) if out.success && !out.stopped => {
                // It read end of file at once: the exec channel does not forward stdin.
                tracing::warn!(
                    command = %out.command,
                    "a spare command ended before it was given work (no stdin through the exec \
                     prefix?); running without spares"
                );
                self.spares_off = true;
                Ok(())
            }
            Ok(out) => {
                self.spare_failures += 1;
                self.spare_not_before = Instant::now() + Self::backoff(self.spare_failures);
                self.note_failure("spare", CommandFailure::failed("spare", &out))
            }
            Err(e) => {
                self.spare_failures += 1;
                self.spare_not_before = Instant::now() + Self::backoff(self.spare_failures);
                self.note_failure("spare", CommandFailure::Exec(e))
            }
        }
    }

    /// Starts what can start: forwards from the backlog, a put, a take.
    fn schedule_lanes(&mut self) {
        let now = Instant::now();
        while self.forwarding.len() < MAX_CONCURRENT_FORWARDS {
            let Some(job) = self.backlog.pop_front() else {
                break;
            };
            let job = if self.stopping.is_some() {
                let method = match &job.request {
                    Ok(inbound) => inbound.method.clone(),
                    Err((method, _)) => method.clone(),
                };
                let deny = Deny::new(DenyCode::ShuttingDown, "The relay is shutting down");
                Job {
                    id: job.id,
                    request: Err((method, deny)),
                    timing: job.timing,
                }
            } else {
                job
            };
            self.forwarding.spawn(handle(self.core.clone(), job));
        }

        let batch_done = self.forwarding.is_empty() && self.backlog.is_empty();
        let oldest = self.ready.iter().map(|r| r.since).min();
        let due = !self.ready.is_empty()
            && now >= self.put_not_before
            && (batch_done
                || self.stopping.is_some()
                || oldest.is_some_and(|t| now.duration_since(t) >= PUT_LINGER));
        // Requests are taken only once every taken one is being forwarded: what waits in the
        // relay is then at most one take's batch beyond the forwards in flight, whatever the
        // sandbox plants (memory: in-flight × body limit + one batch).
        let can_take = self.take.is_none()
            && self.stopping.is_none()
            && self.backlog.is_empty()
            && now >= self.take_not_before;
        let recovery = self.recovery_needed || self.announce_needed;
        if due && can_take && !recovery {
            // One command writes the answers and takes the next requests.
            let batch = self.put_batch();
            self.start_take(batch);
            return;
        }
        if due && self.put.is_none() {
            self.start_put();
        }
        // A plain take waits while the answers of the last take's requests may still come.
        let holding = !recovery
            && now < self.hold_until
            && (!self.forwarding.is_empty() || !self.ready.is_empty());
        if can_take && !holding {
            self.start_take(Vec::new());
        }
    }

    /// Starts the take lane's command: a recovery (with the announcement, when needed), or a
    /// take that first writes `carried` and sweeps what is due.
    fn start_take(&mut self, carried: Vec<Ready>) {
        let now = Instant::now();
        let core = self.core.clone();
        let announce = std::mem::take(&mut self.announce_needed);
        let recovery =
            carried.is_empty() && (std::mem::take(&mut self.recovery_needed) || announce);
        let mut swept = Vec::new();
        let (script, stdin) = if recovery {
            let script = scripts::start(
                &core.ops,
                &core.dir,
                announce.then_some(core.announcement.as_str()),
                &take_params(&core, Duration::ZERO),
            );
            (script, None)
        } else {
            self.announce_needed |= announce;
            if now >= self.last_sweep + RELAY_SWEEP_INTERVAL {
                swept = self.due_sweeps(now);
                if !swept.is_empty() {
                    self.last_sweep = now;
                }
            }
            let params = take_params(&core, IDLE_WAIT);
            let (plan, stdin) = put_plan(&core.ops, &carried);
            let script = scripts::take(
                &core.ops,
                &core.dir,
                &params,
                (!carried.is_empty()).then_some(&plan),
                &swept,
            );
            (script, stdin)
        };
        // The spare runs it when it can (its exec delay is behind us); else a new command.
        // (One that has ended is left for the event loop to report.)
        let spare = if recovery {
            None
        } else {
            self.spares
                .front()
                .is_some_and(|s| !s.handle.is_finished())
                .then(|| self.spares.pop_front())
                .flatten()
        };
        let payload = spare
            .as_ref()
            .and_then(|_| scripts::spare_payload(&core.ops, &script, stdin.as_deref()));
        let handle = match (spare, payload) {
            (Some(spare), Some(payload)) => {
                self.spare_failures = 0;
                // If it has just ended, its output says so: a failed take (or put-take).
                let _ = spare.work.send(payload);
                spare.handle
            }
            (spare, _) => {
                if let Some(spare) = spare {
                    self.spares.push_front(spare);
                }
                tokio::spawn(run_take(core, script, stdin.into(), recovery))
            }
        };
        self.take = Some(TakeRun {
            handle,
            started: now,
            recovery,
            carried,
            swept,
        });
    }

    /// Up to [`MAX_SWEEP_IDS`] ids whose sweep is due (none still being worked on).
    fn due_sweeps(&mut self, now: Instant) -> Vec<String> {
        let mut due = Vec::new();
        let in_progress = &self.in_progress;
        self.sweeps.retain(|(id, at)| {
            if due.len() < MAX_SWEEP_IDS && *at <= now && !in_progress.contains(id) {
                due.push(id.clone());
                false
            } else {
                true
            }
        });
        due
    }

    /// Takes from `ready` as many responses as one command carries (oldest first): the helper
    /// reads them all from stdin (up to [`MAX_PUT_BYTES`]); the `sh` script carries small ones
    /// inline (up to [`scripts::INLINE_SCRIPT_BUDGET`]) and at most one large one on stdin,
    /// which then comes first.
    fn put_batch(&mut self) -> Vec<Ready> {
        self.ready.sort_by_key(|r| r.since);
        let mut batch = Vec::new();
        match &self.core.ops {
            Ops::Helper(_) => {
                let mut bytes = 0;
                while let Some(r) = self.ready.first() {
                    if !batch.is_empty() && bytes + r.json.len() > MAX_PUT_BYTES {
                        break;
                    }
                    bytes += r.json.len();
                    batch.push(self.ready.remove(0));
                }
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
                if let Some(r) = stdin_item {
                    batch.insert(0, r);
                }
            }
        }
        batch
    }

    /// Writes as many ready responses as one command carries.
    fn start_put(&mut self) {
        let batch = self.put_batch();
        let (plan, stdin) = put_plan(&self.core.ops, &batch);
        let script = match &self.core.ops {
            Ops::Helper(path) => scripts::put_helper(path, &self.core.dir),
            Ops::Sh => scripts::put_sh(&self.core.dir, &plan),
        };
        let core = self.core.clone();
        let handle =
            tokio::spawn(async move { core.runner.run(script, stdin, PUT_STDOUT_CAP).await });
        self.put = Some((handle, batch));
    }

    fn take_done(
        &mut self,
        result: Result<Output, ExecError>,
        batch: TakeBatch,
        run: TakeRun,
    ) -> Result<(), TransportError> {
        let TakeRun {
            started,
            recovery,
            carried,
            swept,
            ..
        } = run;
        let what = if recovery {
            "recovery"
        } else if carried.is_empty() {
            "take"
        } else {
            "put-take"
        };
        let error = match result {
            Ok(out) if out.stopped => Some(CommandFailure::Stopped { what }),
            Ok(out) => (!out.success || !batch.summary.complete)
                .then(|| CommandFailure::failed(what, &out)),
            Err(e) => Some(CommandFailure::Exec(e)),
        };
        if !carried.is_empty() {
            let put_ok = batch.summary.put.complete;
            self.put_results(carried, &batch.summary.put);
            if put_ok {
                self.put_failures = 0;
            } else {
                self.put_failures += 1;
                self.put_not_before = Instant::now() + Self::backoff(self.put_failures);
            }
        }
        if error.is_some() {
            let now = Instant::now();
            self.sweeps.extend(swept.into_iter().map(|id| (id, now)));
        }
        let empty = batch.jobs.is_empty();
        let complete = batch.summary.complete;
        let announcement = batch.summary.announcement;
        self.accept(batch, recovery);
        if !empty {
            self.hold_until = Instant::now() + TAKE_HOLD;
        }
        match announcement {
            Some(Announcement::Other) => return Err(TransportError::AnotherRelay),
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
            return self.note_failure(what, error);
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

    /// Settles the responses a command carried, from what its output says of each.
    fn put_results(&mut self, batch: Vec<Ready>, out: &PutOutput) {
        for r in batch {
            if out.written.contains(&r.id) {
                self.in_progress.remove(&r.id);
                self.note_sweep(&r);
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
                self.note_sweep(&r);
            }
        }
    }

    /// Remembers to sweep what is left of a request served for a gateway that does not sweep.
    fn note_sweep(&mut self, r: &Ready) {
        if let Some(t) = r.timing.filter(|t| t.relay_sweeps) {
            self.sweeps.push((r.id.clone(), t.sweep_at));
        }
    }

    fn put_done(
        &mut self,
        result: Result<Output, ExecError>,
        batch: Vec<Ready>,
    ) -> Result<(), TransportError> {
        let (out, error) = match result {
            Ok(out) => {
                let parsed = scripts::parse_put(&out.stdout);
                let error =
                    (!out.success || !parsed.complete).then(|| CommandFailure::failed("put", &out));
                (parsed, error)
            }
            Err(e) => (PutOutput::default(), Some(CommandFailure::Exec(e))),
        };
        self.put_results(batch, &out);
        if let Some(error) = error {
            self.put_failures += 1;
            self.put_not_before = Instant::now() + Self::backoff(self.put_failures);
            return self.note_failure("put", error);
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
                consider(self.hold_until);
            }
            if let Some(spare) = self.spares.front() {
                consider(spare.started + SPARE_MAX_AGE);
            }
            if self.spares.len() < SPARES && !self.spares_off && self.stopping.is_none() {
                consider(self.spare_not_before);
            }
            let drain_at = self.stopping.map(|(_, at)| at);
            let deadline_fired = self.deadline_passed;
            tokio::select! {
                r = async { (&mut self.take.as_mut().expect("take").handle).await }, if self.take.is_some() => {
                    let run = self.take.take().expect("take");
                    let (r, batch) = r.unwrap_or_else(|e| {
                        let batch = TakeBatch { jobs: Vec::new(), summary: TakeOutput::default() };
                        (Err(ExecError::Io(std::io::Error::other(e))), batch)
                    });
                    self.take_done(r, batch, run)?;
                }
                (i, r) = std::future::poll_fn(|cx| {
                    for (i, spare) in self.spares.iter_mut().enumerate() {
                        if let std::task::Poll::Ready(r) = std::future::Future::poll(std::pin::Pin::new(&mut spare.handle), cx) {
                            return std::task::Poll::Ready((i, r));
                        }
                    }
                    std::task::Poll::Pending
                }), if !self.spares.is_empty() => {
                    self.spares.remove(i);
                    let r = r.map_or_else(|e| Err(ExecError::Io(std::io::Error::other(e))), |(r, _)| r);
                    self.spare_ended(r)?;
                }
                Some(_) = self.retiring.join_next(), if !self.retiring.is_empty() => {}
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
                    self.core.pipeline.pass_deadline();
                    self.deadline_passed = true;
                }
                () = tokio::time::sleep_until(wake.unwrap_or(now).into()), if wake.is_some() => {}
            }
        }
    }
}

/// Reads one taken file: envelope, wire format, body encoding and header syntax. The result goes
/// through the pipeline (the whole policy, then forwarding) or, if the file is unreadable, is
/// refused through it; `None` when there is nothing to answer (the file vanished).
fn prepare(core: &Core, item: Taken, recovered: bool) -> Option<(FileRequest, FileMeta)> {
    let mut meta = FileMeta::default();
    prepare_request(core, item, recovered, &mut meta).map(|r| (r, meta))
}

/// [`prepare`]; what the file says of its gateway's wait goes to `meta` once it is parsed.
fn prepare_request(
    core: &Core,
    item: Taken,
    recovered: bool,
    meta: &mut FileMeta,
) -> Option<FileRequest> {
    // The method is unknown until the file is read; a refusal of an unreadable file is logged
    // as a POST (it could be a mutation).
    let refuse = |deny: Deny| Some(Err((Method::POST, deny)));
    let bytes = match item {
        Taken::Unreadable { id } => {
            tracing::info!(request_id = %id, "request file vanished after it was claimed");
            return None;
        }
        Taken::TooLarge { id, size } => {
            tracing::warn!(request_id = %id, size, "request envelope too large");
            return refuse(Deny::new(
                DenyCode::BodyTooLarge,
                "Bridge request envelope exceeded the configured size limit",
            ));
        }
        Taken::File { id, bytes } => (id, bytes),
    };
    let (id, bytes) = bytes;
    let file = match RequestFile::parse(&bytes, &id, core.envelope) {
        Ok(f) => f,
        Err(e) => return refuse(file_deny(&e)),
    };
    drop(bytes);
    *meta = FileMeta {
        created_ms: file::parse_iso8601_ms(&file.created_at),
        timeout_ms: file.response_timeout_ms,
    };
    let Ok(method) = Method::from_bytes(file.method.as_bytes()) else {
        return refuse(Deny::new(
            DenyCode::BadRequest,
            "Invalid bridge request payload: method",
        ));
    };
    let body = match decode_body(
        &file.body,
        file.body_encoding.as_deref(),
        core.max_body_bytes,
    ) {
        Ok(b) => Bytes::from(b),
        Err(e) => return Some(Err((method, file_deny(&e)))),
    };
    let headers = match file_headers(&file, body.len()) {
        Ok(h) => h,
        Err(deny) => return Some(Err((method, deny))),
    };
    let mut extensions = http::Extensions::new();
    if recovered {
        extensions.insert(Recovered);
    }
    Some(Ok(Inbound {
        method,
        target: Target::Text(file.target()),
        headers,
        extensions,
        body: Full::new(body),
    }))
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

/// Runs one request file through the pipeline and turns the answer into a response file.
async fn handle(core: Arc<Core>, job: Job) -> Ready {
    let response = match job.request {
        Ok(inbound) => core.pipeline.handle(inbound).await,
        Err((method, refusal)) => core.pipeline.reject(&method, refusal),
    };
    Ready {
        json: response_file(&job.id, response).await,
        id: job.id,
        since: Instant::now(),
        attempts: 0,
        timing: job.timing,
    }
}

/// The response file for an answer. A bridge-made `outcome_indeterminate` is written as 504 +
/// `x-paperclip-bridge-outcome: indeterminate` (Paperclip's host convention; every gateway turns
/// it into 409). Reading the body to its end also writes the access-log line.
async fn response_file(id: &str, response: Response<Logged>) -> Vec<u8> {
    let (parts, body) = response.into_parts();
    // Every body here is already in memory (bridge-made, or read whole by `FileForwarder`).
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let indeterminate = parts.status == StatusCode::CONFLICT
        && parts
            .headers
            .get(X_BRIDGE_ERROR)
            .is_some_and(|v| v == DenyCode::OutcomeIndeterminate.as_str());
    let status = if indeterminate {
        StatusCode::GATEWAY_TIMEOUT
    } else {
        parts.status
    };
    let mut headers = std::collections::BTreeMap::new();
    for name in parts.headers.keys() {
        // Connection management is each hop's own; the request id is the relay's.
        if name == CONNECTION || name == X_REQUEST_ID {
            continue;
        }
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
    let (body, body_encoding) = encode_body(&bytes);
    ResponseFile {
        id: id.to_owned(),
        status: status.as_u16(),
        headers,
        body,
        body_encoding,
        completed_at: file::now_iso8601(),
    }
    .to_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relays_deadline_is_measured_from_the_files_creation() {
        let now = Instant::now();
        let meta = |created_ms, timeout_ms| FileMeta {
            created_ms,
            timeout_ms,
        };
        // Our gateway: 3 s in the file, created 500 ms before the listing (sandbox clock).
        let t = Timing::of(None, &meta(Some(10_000), Some(3000)), Some(10_500), now);
        assert_eq!(t.forward_by, now + Duration::from_millis(1500));
        assert_eq!(t.not_after, Some(10_000 + 3000 - 200));
        assert!(!t.relay_sweeps);
        // The host's value and the file's: the smaller counts.
        let t = Timing::of(
            Some(Duration::from_secs(10)),
            &meta(Some(10_000), Some(3000)),
            Some(10_000),
            now,
        );
        assert_eq!(t.forward_by, now + Duration::from_secs(2));
        // Paperclip's gateway: no timeout in the file, the host's value, and the relay sweeps.
        let t = Timing::of(
            Some(Duration::from_secs(30)),
            &meta(Some(10_000), None),
            Some(11_000),
            now,
        );
        assert_eq!(t.forward_by, now + Duration::from_secs(26));
        assert_eq!(t.sweep_at, now + Duration::from_secs(31));
        assert!(t.relay_sweeps);
        // Written during the take's wait: nothing waited yet, counted from createdAt.
        let t = Timing::of(None, &meta(Some(52_000), None), Some(50_000), now);
        assert_eq!(t.forward_by, now + Duration::from_secs(27));
        assert_eq!(t.not_after, Some(52_000 + 30_000 - 200));
        // Nothing known: 30 s from the take; a createdAt far in the past or in the future
        // counts as unknown.
        for created in [None, Some(1), Some(99_000)] {
            let t = Timing::of(None, &meta(created, None), Some(50_000), now);
            assert_eq!(t.forward_by, now + Duration::from_secs(27), "{created:?}");
            assert_eq!(t.not_after, Some(50_000 + 30_000 - 200));
        }
        let t = Timing::of(None, &meta(Some(1), None), None, now);
        assert_eq!(
            (t.forward_by, t.not_after),
            (now + Duration::from_secs(27), None)
        );
    }

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
            response_timeout_ms: None,
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
