//! Logs, metrics and the exit summary.
//!
//! Promise: logs go to stderr only and never carry the bridge token, the upstream credential,
//! bodies or query values (only query keys). Metrics are plain atomics and one small map, rendered
//! as Prometheus text on demand; the exit summary is one JSON line on stdout.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::AtomicU8;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cli::LogFormat;
use crate::config::LogConfig;
use crate::policy::DenyCode;

/// The run id and role every log line carries (docs/reference.md §3.7), set once at start.
#[derive(Debug)]
struct LineContext {
    run_id: String,
    role: &'static str,
    /// `,"run_id":"…","role":"…"`, appended to every JSON line.
    json: Vec<u8>,
    /// ` run_id=… role=…`, appended to every pretty line.
    pretty: String,
}

static CONTEXT: std::sync::OnceLock<LineContext> = std::sync::OnceLock::new();

/// Records the run id and role for every later log line (the first call wins).
pub fn set_line_context(run_id: &str, role: &'static str) {
    let mut json = Vec::with_capacity(64);
    json.extend_from_slice(b",\"run_id\":");
    json_str(&mut json, run_id);
    json.extend_from_slice(b",\"role\":");
    json_str(&mut json, role);
    let _ = CONTEXT.set(LineContext {
        run_id: run_id.to_owned(),
        role,
        json,
        pretty: format!(" run_id={run_id} role={role}"),
    });
}

/// The run id and role of this process (`-` and `-` before [`set_line_context`]).
pub fn line_context() -> (&'static str, &'static str) {
    CONTEXT
        .get()
        .map_or(("-", "-"), |c| (c.run_id.as_str(), c.role))
}

fn context_json() -> &'static [u8] {
    CONTEXT.get().map_or(&[], |c| c.json.as_slice())
}

/// Starts the tracing subscriber on stderr with the configured (already validated) level list;
/// every line carries `run_id` and `role` (`role` is `serve`, `gateway` or `relay`).
pub fn init_logging(cfg: &LogConfig, role: &'static str) {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    set_line_context(&cfg.run_id.value, role);
    // `level` or `target=level` directives (comma-separated). Targets, not EnvFilter: the same
    // syntax without span filters, and without a regex engine in the binary.
    let filter = cfg
        .level
        .parse::<Targets>()
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO));
    // Colours only for a terminal: a pretty log in a file or pipe stays plain text.
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match cfg.format {
        LogFormat::Json => builder
            .event_format(JsonLine)
            .finish()
            .with(filter)
            .try_init(),
        LogFormat::Pretty => builder
            .event_format(PrettyLine::default())
            .finish()
            .with(filter)
            .try_init(),
    };
    // A second init (tests, repeated calls) keeps the first subscriber.
    let _ = result;
    let info_enabled =
        tracing::level_filters::LevelFilter::current() >= tracing::level_filters::LevelFilter::INFO;
    let mode = match (cfg.format, info_enabled) {
        (_, false) => ACCESS_OFF,
        (LogFormat::Json, true) => ACCESS_JSON,
        (LogFormat::Pretty, true) => ACCESS_TRACING,
    };
    ACCESS_MODE.store(mode, Ordering::Relaxed);
}

/// One JSON object per event: `timestamp`, `level`, the event's fields (`message` among them),
/// then `run_id` and `role`. Spans are not used by the bridge and not written.
struct JsonLine;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JsonLine
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"{\"timestamp\":\"");
        write_rfc3339(&mut out, SystemTime::now());
        out.extend_from_slice(b"\",\"level\":\"");
        out.extend_from_slice(event.metadata().level().as_str().as_bytes());
        out.push(b'"');
        event.record(&mut JsonFields(&mut out));
        out.extend_from_slice(context_json());
        out.extend_from_slice(b"}\n");
        writer.write_str(&String::from_utf8_lossy(&out))
    }
}

/// Writes each field as `,"name":value`.
struct JsonFields<'a>(&'a mut Vec<u8>);

impl JsonFields<'_> {
    fn key(&mut self, field: &tracing::field::Field) {
        self.0.push(b',');
        json_str(self.0, field.name());
        self.0.push(b':');
    }
}

impl tracing::field::Visit for JsonFields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.key(field);
        json_str(self.0, &format!("{value:?}"));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.key(field);
        json_str(self.0, value);
    }

    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        self.key(field);
        push_u64(self.0, value);
    }

    fn record_i64(&mut self, field: &tracing::field::Field, value: i64) {
        self.key(field);
        if value < 0 {
            self.0.push(b'-');
        }
        push_u64(self.0, value.unsigned_abs());
    }

    fn record_bool(&mut self, field: &tracing::field::Field, value: bool) {
        self.key(field);
        self.0
            .extend_from_slice(if value { b"true" } else { b"false" });
    }

    fn record_f64(&mut self, field: &tracing::field::Field, value: f64) {
        self.key(field);
        if value.is_finite() {
            let _ = write!(self.0, "{value}");
        } else {
            self.0.extend_from_slice(b"null");
        }
    }

    fn record_error(
        &mut self,
        field: &tracing::field::Field,
        value: &(dyn std::error::Error + 'static),
    ) {
        self.key(field);
        json_str(self.0, &value.to_string());
    }
}

/// tracing's default human format, with ` run_id=… role=…` at the end of each line.
struct PrettyLine {
    plain: tracing_subscriber::fmt::format::Format,
    ansi: tracing_subscriber::fmt::format::Format,
}

impl Default for PrettyLine {
    fn default() -> Self {
        let base = tracing_subscriber::fmt::format().with_target(false);
        PrettyLine {
            plain: base.clone().with_ansi(false),
            ansi: base.with_ansi(true),
        }
    }
}

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for PrettyLine
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let inner = if writer.has_ansi_escapes() {
            &self.ansi
        } else {
            &self.plain
        };
        let mut line = String::with_capacity(256);
        inner.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        let body = line.strip_suffix('\n').unwrap_or(&line);
        writer.write_str(body)?;
        if let Some(c) = CONTEXT.get() {
            writer.write_str(&c.pretty)?;
        }
        writer.write_char('\n')
    }
}

const ACCESS_OFF: u8 = 0;
const ACCESS_JSON: u8 = 1;
const ACCESS_TRACING: u8 = 2;
/// How access-log lines are written: the JSON form is formatted here directly (one buffer, one
/// `write`), because tracing's generic JSON formatter cost a quarter of the bridge's per-request
/// CPU in profiles; the line has the same shape as tracing's other JSON events.
static ACCESS_MODE: AtomicU8 = AtomicU8::new(ACCESS_TRACING);

/// One access-log event (docs/reference.md §3). Holds no secrets by construction: no token, no credential,
/// no bodies, no query values.
#[derive(Debug)]
pub struct AccessLine<'a> {
    pub request_id: &'a str,
    pub method: &'a str,
    pub route: &'a str,
    pub status: u16,
    pub code: &'a str,
    pub req_bytes: u64,
    pub resp_bytes: u64,
    pub total: Duration,
    pub upstream: Option<Duration>,
    pub query_keys: &'a str,
}

/// Writes one access-log event to stderr.
pub fn access_log(line: &AccessLine<'_>) {
    match ACCESS_MODE.load(Ordering::Relaxed) {
        ACCESS_JSON => {
            let mut buf = Vec::with_capacity(384);
            line.write_json(&mut buf, SystemTime::now());
            // One write on unbuffered stderr: lines from concurrent writers never interleave.
            let _ = std::io::stderr().lock().write_all(&buf);
        }
        ACCESS_TRACING => tracing::info!(
            target: "access",
            request_id = line.request_id,
            method = line.method,
            route = line.route,
            status = line.status,
            code = line.code,
            req_bytes = line.req_bytes,
            resp_bytes = line.resp_bytes,
            total_ms = line.total.as_secs_f64() * 1e3,
            upstream_ms = line.upstream.map(|d| d.as_secs_f64() * 1e3),
            query_keys = line.query_keys,
            "request"
        ),
        _ => {}
    }
}

impl AccessLine<'_> {
    fn write_json(&self, out: &mut Vec<u8>, now: SystemTime) {
        // Hand-formatted: `core::fmt` machinery was most of this function's cost in profiles.
        out.extend_from_slice(b"{\"timestamp\":\"");
        write_rfc3339(out, now);
        out.extend_from_slice(b"\",\"level\":\"INFO\",\"message\":\"request\",\"request_id\":");
        json_str(out, self.request_id);
        out.extend_from_slice(b",\"method\":");
        json_str(out, self.method);
        out.extend_from_slice(b",\"route\":");
        json_str(out, self.route);
        out.extend_from_slice(b",\"status\":");
        push_u64(out, u64::from(self.status));
        out.extend_from_slice(b",\"code\":");
        json_str(out, self.code);
        out.extend_from_slice(b",\"req_bytes\":");
        push_u64(out, self.req_bytes);
        out.extend_from_slice(b",\"resp_bytes\":");
        push_u64(out, self.resp_bytes);
        out.extend_from_slice(b",\"total_ms\":");
        push_millis(out, self.total);
        if let Some(upstream) = self.upstream {
            out.extend_from_slice(b",\"upstream_ms\":");
            push_millis(out, upstream);
        }
        out.extend_from_slice(b",\"query_keys\":");
        json_str(out, self.query_keys);
        out.extend_from_slice(context_json());
        out.extend_from_slice(b"}\n");
    }
}

/// Appends a decimal integer.
fn push_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends `n` zero-padded to `width` digits.
fn push_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut n = n;
    let mut i = digits.len();
    while n > 0 && i > 0 {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let start = digits.len() - width.max(digits.len() - i);
    out.extend_from_slice(&digits[start..]);
}

/// Appends a duration as milliseconds with three decimals (microsecond resolution).
fn push_millis(out: &mut Vec<u8>, d: Duration) {
    let micros = d.as_micros() as u64;
    push_u64(out, micros / 1000);
    out.push(b'.');
    push_padded(out, micros % 1000, 3);
}

/// Appends `s` as a JSON string literal.
fn json_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    if !s
        .bytes()
        .any(|b| b == b'"' || b == b'\\' || b < 0x20 || b == 0x7f)
    {
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x00..=0x1f | 0x7f => {
                let _ = write!(out, "\\u{b:04x}");
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// Appends `t` as RFC 3339 UTC with microseconds, e.g. `2026-11-22T00:43:59.385321Z`.
fn write_rfc3339(out: &mut Vec<u8>, t: SystemTime) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    push_padded(out, y.max(0) as u64, 4);
    out.push(b'-');
    push_padded(out, u64::from(m), 2);
    out.push(b'-');
    push_padded(out, u64::from(day), 2);
    out.push(b'T');
    push_padded(out, rem / 3600, 2);
    out.push(b':');
    push_padded(out, rem % 3600 / 60, 2);
    out.push(b':');
    push_padded(out, rem % 60, 2);
    out.push(b'.');
    push_padded(out, u64::from(d.subsec_micros()), 6);
    out.push(b'Z');
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (the "days from civil" inverse,
/// computed over 400-year eras).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Longest request id a relay accepts from the sandbox.
pub const MAX_REQUEST_ID_LEN: usize = 64;

/// Whether `id` may be used as a request id taken from the sandbox: 1 to
/// [`MAX_REQUEST_ID_LEN`] bytes of `[A-Za-z0-9._:-]` (a UUID fits; nothing that could break a log
/// line or a header does).
pub fn valid_request_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_REQUEST_ID_LEN
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Request ids: UUIDv7 (time-ordered) whose random bits come from a per-process seed and a
/// counter, so minting one costs no system call (the OS RNG is read once, at start).
#[derive(Debug)]
pub struct RequestIds {
    seed: u64,
    counter: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        let mut seed = [0u8; 8];
        // Uniqueness, not secrecy, is what matters here; fall back to the clock if needed.
        if getrandom::fill(&mut seed).is_err() {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64;
            seed = (nanos ^ u64::from(std::process::id())).to_le_bytes();
        }
        RequestIds {
            seed: u64::from_le_bytes(seed),
            counter: AtomicU64::new(0),
        }
    }
}

impl RequestIds {
    pub fn next(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let a = splitmix64(self.seed ^ n);
        let b = splitmix64(a ^ self.seed.rotate_left(17));
        let mut random = [0u8; 10];
        random[..8].copy_from_slice(&a.to_le_bytes());
        random[8..].copy_from_slice(&b.to_le_bytes()[..2]);
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        uuid::Builder::from_unix_timestamp_millis(millis, &random)
            .into_uuid()
            .hyphenated()
            .to_string()
    }
}

/// SplitMix64 finaliser: a bijective mix, so distinct counters give distinct outputs.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One request's access-log record, completed as the request is handled and written when the
/// response body ends or is dropped (see [`Logged`]).
#[derive(Debug)]
pub struct AccessRecord {
    pub request_id: String,
    pub method: http::Method,
    pub route: Option<std::sync::Arc<str>>,
    pub status: u16,
    pub code: Option<DenyCode>,
    /// Query keys, filled only once the request is authenticated and allowed.
    pub query_keys: String,
    pub started: std::time::Instant,
    pub upstream_time: Option<Duration>,
    pub req_state: Option<std::sync::Arc<crate::body::BodyState>>,
    pub metrics: std::sync::Arc<Metrics>,
    /// Whether the access log gets a line: not for health probes, which a container runtime or
    /// a spawner sends every few seconds (they are still counted in the metrics).
    pub logged: bool,
    /// The request was allowed and dispatched, and the dispatch failed (`code` says how): counted
    /// under `failed`, not `denied`, in the exit line.
    pub failed: bool,
}

impl AccessRecord {
    pub fn new(request_id: String, method: http::Method, metrics: std::sync::Arc<Metrics>) -> Self {
        AccessRecord {
            request_id,
            method,
            route: None,
            status: 0,
            code: None,
            query_keys: String::new(),
            started: std::time::Instant::now(),
            upstream_time: None,
            req_state: None,
            metrics,
            logged: true,
            failed: false,
        }
    }

    /// Counts the bytes and writes the access-log line.
    fn finish(self, resp_bytes: u64) {
        self.metrics
            .bytes_out
            .fetch_add(resp_bytes, Ordering::Relaxed);
        let req_bytes = self.req_state.as_ref().map_or(0, |s| s.bytes());
        self.metrics
            .bytes_in
            .fetch_add(req_bytes, Ordering::Relaxed);
        if !self.logged {
            return;
        }
        access_log(&AccessLine {
            request_id: &self.request_id,
            method: self.method.as_str(),
            route: self.route.as_deref().unwrap_or("-"),
            status: self.status,
            code: self.code.map_or("", DenyCode::as_str),
            req_bytes,
            resp_bytes,
            total: self.started.elapsed(),
            upstream: self.upstream_time,
            query_keys: &self.query_keys,
        });
    }
}

pin_project_lite::pin_project! {
    /// A response body as sent to the agent: counts bytes, holds `slot` (an in-flight count) until
    /// it ends, and then writes the access-log line.
    pub struct Logged {
        #[pin]
        inner: crate::body::BridgeBody,
        bytes: u64,
        record: Option<AccessRecord>,
        _slot: Option<crate::limits::InFlightGuard>,
    }

    impl PinnedDrop for Logged {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(record) = this.record.take() {
                record.finish(*this.bytes);
            }
        }
    }
}

impl Logged {
    pub fn new(
        inner: crate::body::BridgeBody,
        record: AccessRecord,
        slot: Option<crate::limits::InFlightGuard>,
    ) -> Self {
        Logged {
            inner,
            bytes: 0,
            record: Some(record),
            _slot: slot,
        }
    }
}

impl http_body::Body for Logged {
    type Data = bytes::Bytes;
    type Error = crate::body::BodyError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                *this.bytes += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Upper bounds (seconds) of the upstream latency histogram buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

/// (route id or "-", status, deny code or "").
type OutcomeKey = (std::sync::Arc<str>, u16, &'static str);

/// Process-wide counters. Cheap to update from any task.
#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub forwarded: AtomicU64,
    pub upstream_errors: AtomicU64,
    /// Shared with the pipeline's in-flight limit, so the gauge is the limit's own count.
    pub in_flight: std::sync::Arc<AtomicU64>,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Connections to a Unix socket closed unread because the peer's uid/gid is not allowed.
    peer_refused: AtomicU64,
    /// Count per (route id or "-", status, deny code or "").
    by_outcome: Mutex<BTreeMap<OutcomeKey, u64>>,
    /// Answers the bridge made without dispatching (token, policy, limits), by code.
    denied: Mutex<BTreeMap<&'static str, u64>>,
    /// Allowed requests whose dispatch failed, by code.
    failed: Mutex<BTreeMap<&'static str, u64>>,
    /// What the admin listener's `/readyz` answers.
    pub readiness: Readiness,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

impl Metrics {
    /// Counts one answered request. `route` is `None` for requests that matched no route.
    pub fn record_outcome(
        &self,
        route: Option<&std::sync::Arc<str>>,
        status: u16,
        code: Option<DenyCode>,
        failed: bool,
    ) {
        static NO_ROUTE: std::sync::LazyLock<std::sync::Arc<str>> =
            std::sync::LazyLock::new(|| std::sync::Arc::from("-"));
        let code_str = code.map(DenyCode::as_str).unwrap_or("");
        let route = route.unwrap_or(&NO_ROUTE).clone();
        let mut map = self.by_outcome.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry((route, status, code_str)).or_insert(0) += 1;
        drop(map);
        if let Some(code) = code {
            let map = if failed { &self.failed } else { &self.denied };
            let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
            *map.entry(code.as_str()).or_insert(0) += 1;
        }
    }

    /// Counts one connection closed by the peer check (docs/reference.md §3.6).
    pub fn record_peer_refused(&self) {
        self.peer_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn record_upstream_latency(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(2048);
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP callback_bridge_build_info The running build: version and git commit."
        );
        let _ = writeln!(out, "# TYPE callback_bridge_build_info gauge");
        let _ = writeln!(
            out,
            "callback_bridge_build_info{{version=\"{}\",commit=\"{}\"}} 1",
            escape_label(env!("CARGO_PKG_VERSION")),
            escape_label(env!("CALLBACK_BRIDGE_GIT_COMMIT"))
        );
        let _ = writeln!(out, "# HELP callback_bridge_requests_total Requests answered, by route id, status and deny code.");
        let _ = writeln!(out, "# TYPE callback_bridge_requests_total counter");
        for ((route, status, code), n) in self
            .by_outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "callback_bridge_requests_total{{route=\"{}\",status=\"{status}\",deny_code=\"{code}\"}} {n}",
                escape_label(route)
            );
        }
        scalar(
            &mut out,
            "forwarded_total",
            "counter",
            "Requests forwarded upstream.",
            g(&self.forwarded),
        );
        scalar(
            &mut out,
            "upstream_errors_total",
            "counter",
            "Forwarded requests that got no usable upstream response.",
            g(&self.upstream_errors),
        );
        scalar(
            &mut out,
            "in_flight_requests",
            "gauge",
            "Requests being handled now.",
            self.in_flight.load(Ordering::Relaxed),
        );
        scalar(
            &mut out,
            "request_body_bytes_total",
            "counter",
            "Request body bytes received from agents.",
            g(&self.bytes_in),
        );
        scalar(
            &mut out,
            "response_body_bytes_total",
            "counter",
            "Response body bytes sent to agents.",
            g(&self.bytes_out),
        );
        scalar(
            &mut out,
            "peer_refused_total",
            "counter",
            "Unix-socket connections closed unread: peer uid/gid not allowed.",
            g(&self.peer_refused),
        );
        let _ = writeln!(out, "# HELP callback_bridge_upstream_latency_seconds Time from forwarding to the upstream response head.");
        let _ = writeln!(
            out,
            "# TYPE callback_bridge_upstream_latency_seconds histogram"
        );
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "callback_bridge_upstream_latency_seconds_bucket{{le=\"{bound}\"}} {}",
                g(&self.latency_buckets[i])
            );
        }
        let count = g(&self.latency_count);
        let _ = writeln!(
            out,
            "callback_bridge_upstream_latency_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "callback_bridge_upstream_latency_seconds_sum {}",
            g(&self.latency_sum_us) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "callback_bridge_upstream_latency_seconds_count {count}"
        );
        out
    }

    /// The exit-summary line of docs/reference.md §3.
    pub fn exit_line(&self, reason: &str) -> String {
        #[derive(serde::Serialize)]
        struct ExitLine<'a> {
            event: &'static str,
            reason: &'a str,
            requests: u64,
            forwarded: u64,
            denied: BTreeMap<&'static str, u64>,
            failed: BTreeMap<&'static str, u64>,
            upstream_errors: u64,
            run_id: &'a str,
            role: &'a str,
        }
        let (run_id, role) = line_context();
        let copy = |m: &Mutex<BTreeMap<&'static str, u64>>| {
            m.lock().unwrap_or_else(|e| e.into_inner()).clone()
        };
        let line = ExitLine {
            event: "exit",
            reason,
            requests: self.requests.load(Ordering::Relaxed),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            denied: copy(&self.denied),
            failed: copy(&self.failed),
            upstream_errors: self.upstream_errors.load(Ordering::Relaxed),
            run_id,
            role,
        };
        serde_json::to_string(&line).unwrap_or_default()
    }
}

/// What `/readyz` on the admin listener answers (docs/reference.md §3.8): ready once the role
/// is serving (readiness line printed; for the stdio relay, while a session with its gateway is
/// up), not once it starts to stop, and not while the last request that tried to reach the next
/// hop (the upstream, or the relay for a gateway) could not.
#[derive(Debug, Default)]
pub struct Readiness {
    serving: std::sync::atomic::AtomicBool,
    stopping: std::sync::atomic::AtomicBool,
    next_hop_down: std::sync::atomic::AtomicBool,
}

impl Readiness {
    /// The role serves (or, for the stdio relay, its session is up or lost).
    pub fn serving(&self, up: bool) {
        self.serving.store(up, Ordering::Relaxed);
    }

    /// The role stops: not ready again.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// The outcome of the last attempt to reach the next hop.
    pub fn next_hop(&self, reached: bool) {
        self.next_hop_down.store(!reached, Ordering::Relaxed);
    }

    /// `Ok` when ready, else why not: `starting`, `stopping` or `next_hop_unreachable`.
    pub fn check(&self) -> Result<(), &'static str> {
        if self.stopping.load(Ordering::Relaxed) {
            Err("stopping")
        } else if !self.serving.load(Ordering::Relaxed) {
            Err("starting")
        } else if self.next_hop_down.load(Ordering::Relaxed) {
            Err("next_hop_unreachable")
        } else {
            Ok(())
        }
    }
}

/// One unlabelled sample with its `# HELP` and `# TYPE` lines (`callback_bridge_` + `name`).
fn scalar(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    use std::fmt::Write;
    let _ = writeln!(out, "# HELP callback_bridge_{name} {help}");
    let _ = writeln!(out, "# TYPE callback_bridge_{name} {kind}");
    let _ = writeln!(out, "callback_bridge_{name} {value}");
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The keys of a query string, for the access log (values are never logged).
pub fn query_keys(target: &str) -> String {
    let Some((_, query)) = target.split_once('?') else {
        return String::new();
    };
    let mut keys = String::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        if !keys.is_empty() {
            keys.push(',');
        }
        // Keys are untrusted too: keep them short and printable.
        keys.extend(key.chars().take(64).filter(|c| c.is_ascii_graphic()));
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_json_line_is_valid_json_with_escaping() {
        let line = AccessLine {
            request_id: "id-1",
            method: "GET",
            route: "we\"ird\\route\n",
            status: 200,
            code: "",
            req_bytes: 1,
            resp_bytes: 2,
            total: Duration::from_micros(1500),
            upstream: Some(Duration::from_micros(250)),
            query_keys: "a,b",
        };
        let mut buf = Vec::new();
        line.write_json(
            &mut buf,
            UNIX_EPOCH + Duration::from_micros(1_763_771_039_385_321),
        );
        assert_eq!(buf.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(v["timestamp"], "2025-11-22T00:23:59.385321Z");
        assert_eq!(v["route"], "we\"ird\\route\n");
        assert_eq!(v["status"], 200);
        assert_eq!(v["upstream_ms"], 0.25);
        assert_eq!(v["message"], "request");
    }

    #[test]
    fn json_log_lines_are_json_with_run_id_and_role() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        set_line_context("run-t", "serve");
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .event_format(JsonLine)
            .finish();
        let err = std::io::Error::other("bad \"thing\"");
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(
                n = 7u64,
                neg = -3i64,
                ratio = 0.5f64,
                nan = f64::NAN,
                ok = true,
                text = "a\nb",
                error = %err,
                "hello \"world\""
            );
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert!(
            out.ends_with('\n') && out.matches('\n').count() == 1,
            "{out}"
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["message"], "hello \"world\"");
        assert_eq!(
            (&v["n"], &v["neg"], &v["ratio"]),
            (&7.into(), &(-3).into(), &0.5.into())
        );
        assert!(v["nan"].is_null());
        assert_eq!((&v["ok"], &v["text"]), (&true.into(), &"a\nb".into()));
        assert_eq!(v["error"], "bad \"thing\"");
        assert_eq!(
            (&v["run_id"], &v["role"]),
            (&"run-t".into(), &"serve".into())
        );
        assert!(v["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    }

    #[test]
    fn numbers_format_like_display() {
        for n in [0u64, 7, 10, 999, 1000, 123_456_789, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().into_bytes());
        }
        let mut out = Vec::new();
        push_millis(&mut out, Duration::from_micros(12_005));
        assert_eq!(out, b"12.005");
        let mut out = Vec::new();
        push_padded(&mut out, 7, 6);
        assert_eq!(out, b"000007");
    }

    #[test]
    fn civil_dates_are_right() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_414), (2025, 11, 22));
    }

    #[test]
    fn request_ids_are_distinct_uuid_v7() {
        let ids = RequestIds::default();
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        let u = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(u.get_version_num(), 7);
    }

    #[test]
    fn query_keys_drop_values() {
        assert_eq!(query_keys("/a?x=secret&y=2&flag"), "x,y,flag");
        assert_eq!(query_keys("/a"), "");
        assert_eq!(query_keys("/a?"), "");
    }

    #[test]
    fn exit_line_counts_denials_by_code() {
        let m = Metrics::default();
        m.requests.fetch_add(2, Ordering::Relaxed);
        m.requests.fetch_add(1, Ordering::Relaxed);
        m.record_outcome(None, 401, Some(DenyCode::InvalidToken), false);
        m.record_outcome(Some(&std::sync::Arc::from("agents.me")), 200, None, false);
        m.record_outcome(
            Some(&std::sync::Arc::from("agents.me")),
            502,
            Some(DenyCode::UpstreamUnavailable),
            true,
        );
        let v: serde_json::Value = serde_json::from_str(&m.exit_line("signal")).unwrap();
        assert_eq!(v["reason"], "signal");
        assert_eq!(v["requests"], 3);
        assert_eq!(v["denied"], serde_json::json!({"invalid_token": 1}));
        assert_eq!(v["failed"], serde_json::json!({"upstream_unavailable": 1}));
        let text = m.render();
        assert!(text.contains("deny_code=\"invalid_token\"} 1"));
        assert!(text.contains("deny_code=\"upstream_unavailable\"} 1"));
        assert!(text.contains("callback_bridge_build_info{version=\""));
    }

    #[test]
    fn request_ids_from_the_sandbox_are_bounded_and_plain() {
        assert!(valid_request_id(b"0193f2c4-7a1e-7b55-9d3c-5e8f0a1b2c3d"));
        assert!(valid_request_id(b"a.b_c:d-E9"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(&[b'a'; MAX_REQUEST_ID_LEN + 1]));
        for bad in [
            &b"a b"[..],
            b"a\"b",
            b"a\nb",
            b"a\\b",
            b"\xc3\xa9",
            b"a,b",
            b"a=b",
        ] {
            assert!(!valid_request_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn readiness_needs_serving_and_no_stop_and_a_reachable_next_hop() {
        let r = Readiness::default();
        assert_eq!(r.check(), Err("starting"));
        r.serving(true);
        assert_eq!(r.check(), Ok(()));
        r.next_hop(false);
        assert_eq!(r.check(), Err("next_hop_unreachable"));
        r.next_hop(true);
        assert_eq!(r.check(), Ok(()));
        r.stopping();
        assert_eq!(r.check(), Err("stopping"));
    }
}
