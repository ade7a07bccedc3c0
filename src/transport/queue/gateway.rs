//! The queue gateway (inside the sandbox): the agent-facing server of `serve`, whose allowed
//! requests become `requests/<id>.json` files and whose answers come from `responses/<id>.json`.
//!
//! Promise: the agent sees `serve`'s contract (token, policy, limits and codes are `serve_with`'s;
//! denials never write a file); a request file is published whole (temp file + rename) with a
//! time-ordered id; the gateway waits without burning CPU (one shared directory scan every
//! ≤ 10 ms, only while someone waits); a request whose answer is late is withdrawn by the same
//! atomic hand-off the relay claims with, so "never seen" (503, safe to retry) and "maybe done"
//! (504 / 409) are told apart; at most `max_queue_depth` requests wait. Attacks defended: a
//! malformed, oversized or hostile response file (answered 502 / 409, the gateway keeps serving;
//! only allowlisted headers reach the agent), symlinks planted at our temp names (`O_EXCL`), and a
//! queue flooded by anything in the sandbox (depth cap, stale sweep).

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::{oneshot, Notify};

use super::file::{
    self, decode_body, encode_body, envelope_limit, FileError, RelayAnnouncement, RequestFile,
    ResponseFile, CLAIMED_SUFFIX, CLAIMS_PROTOCOL, JSON_SUFFIX,
};
use crate::body::{self, BodyState, BridgeBody, GuardedBody};
use crate::config::QueueGatewayConfig;
use crate::dispatch::{relay_answer, Allowed, Dispatch, ForwardError, Forwarded, Hop, RequestBody};
use crate::pipeline::{LocalEndpoints, Pipeline, PipelineSettings};
use crate::policy::{Allow, BodyKind, Deny, DenyCode, HeaderRules};
use crate::server::{self, AgentSide, BoundAddr, ServeError, ServeHooks};
use crate::telemetry::Metrics;
use crate::transport::TransportError;

/// A file is stale once it is this much older than the response timeout: its gateway has given
/// up by then (Paperclip's sweep uses the same 2 s).
pub const STALE_GRACE: Duration = Duration::from_secs(2);
/// How often leftovers (unclaimed responses, temp files, abandoned claims) are swept.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Queue directory layout (docs/reference.md §6.1).
#[derive(Debug, Clone)]
pub struct Dirs {
    pub root: PathBuf,
    pub requests: PathBuf,
    pub responses: PathBuf,
    pub logs: PathBuf,
}

impl Dirs {
    pub fn new(root: PathBuf) -> Dirs {
        Dirs {
            requests: root.join("requests"),
            responses: root.join("responses"),
            logs: root.join("logs"),
            root,
        }
    }

    pub fn create(&self) -> std::io::Result<()> {
        for d in [&self.requests, &self.responses, &self.logs] {
            std::fs::create_dir_all(d)?;
        }
        Ok(())
    }

    fn request(&self, id: &str) -> PathBuf {
        self.requests.join(format!("{id}{JSON_SUFFIX}"))
    }
    fn claimed(&self, id: &str) -> PathBuf {
        self.requests.join(format!("{id}{CLAIMED_SUFFIX}"))
    }
    fn response(&self, id: &str) -> PathBuf {
        self.responses.join(format!("{id}{JSON_SUFFIX}"))
    }
}

/// Writes `bytes` to `path` whole: `<path>.tmp` created with `O_EXCL` (a planted symlink there
/// makes this fail instead of writing through it), then renamed over `path`. The temp name never
/// ends in `.json`, so no reader of the queue lists it.
pub fn publish_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// The gateway-only settings.
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub dirs: Dirs,
    pub response_timeout: Duration,
    pub poll_interval: Duration,
    pub max_queue_depth: usize,
}

/// `callback-bridge gateway --transport queue`: creates the queue directories and serves the
/// agent until a stop reason.
pub async fn run(config: QueueGatewayConfig) -> Result<(), TransportError> {
    let QueueGatewayConfig {
        listener,
        token,
        common,
        queue_dir,
        response_timeout,
        poll_interval,
        max_queue_depth,
    } = config;
    let settings = QueueSettings {
        dirs: Dirs::new(queue_dir),
        response_timeout,
        poll_interval,
        max_queue_depth,
    };
    settings
        .dirs
        .create()
        .map_err(|source| TransportError::QueueDir {
            path: settings.dirs.root.clone(),
            source,
        })?;
    let metrics = Arc::new(Metrics::default());
    let shared = Arc::new(Shared {
        envelope: envelope_limit(common.limits.max_body_bytes),
        max_body_bytes: common.limits.max_body_bytes,
        body_idle_timeout: common.limits.body_idle_timeout,
        response_headers: common.policy.headers.clone(),
        publish_lock: tokio::sync::Mutex::new(()),
        waiters: Mutex::new(HashMap::new()),
        wake: Notify::new(),
        settings,
    });
    tokio::spawn(watch_responses(shared.clone()));
    tokio::spawn(sweep_periodically(shared.clone()));
    let pipeline = Pipeline::new(
        PipelineSettings::new(&common, Some(token.token.clone()), LocalEndpoints::Answer),
        QueueGateway(shared.clone()),
        metrics,
    );
    let dirs = shared.settings.dirs.clone();
    let hooks = ServeHooks {
        on_bound: Some(Box::new(move |addr| write_readiness(&dirs, addr))),
        ..ServeHooks::default()
    };
    server::serve(AgentSide::new(listener, token, common), pipeline, hooks).await?;
    Ok(())
}

/// `ready.json` (Paperclip's keys) and `server.pid`, both published atomically. On a Unix socket
/// `host` and `port` are absent, `socketPath` names the socket and `baseUrl` is `unix:PATH`.
fn write_readiness(dirs: &Dirs, addr: &BoundAddr) -> Result<(), ServeError> {
    let (host, port, socket_path) = match addr {
        BoundAddr::Tcp(addr) => (Some(addr.ip().to_string()), Some(addr.port()), None),
        BoundAddr::Unix(path) => (None, None, Some(path.display().to_string())),
    };
    let ready = file::ReadyFile {
        pid: std::process::id(),
        host,
        port,
        socket_path,
        base_url: addr.url(),
        started_at: file::now_iso8601(),
    };
    let json = serde_json::to_vec(&ready).unwrap_or_default();
    let ready_path = dirs.root.join("ready.json");
    publish_file(&ready_path, &json).map_err(|source| ServeError::ReadyFile {
        path: ready_path,
        source,
    })?;
    let pid_path = dirs.root.join("server.pid");
    publish_file(&pid_path, format!("{}\n", std::process::id()).as_bytes()).map_err(|source| {
        ServeError::ReadyFile {
            path: pid_path,
            source,
        }
    })
}

/// State shared by the request handlers, the response watcher and the sweeper.
struct Shared {
    settings: QueueSettings,
    envelope: u64,
    max_body_bytes: u64,
    body_idle_timeout: Duration,
    response_headers: HeaderRules,
    /// Makes "count the waiting files, then publish" one step within this process.
    publish_lock: tokio::sync::Mutex<()>,
    /// Requests waiting for their response file, by id.
    waiters: Mutex<HashMap<String, oneshot::Sender<()>>>,
    /// Wakes the watcher when the first waiter registers.
    wake: Notify,
}

/// The `Dispatch` of the queue gateway.
pub struct QueueGateway(Arc<Shared>);

impl Dispatch for QueueGateway {
    fn dispatch<B: RequestBody>(
        &self,
        req: Allowed<B>,
    ) -> impl std::future::Future<Output = Result<Forwarded, ForwardError>> + Send {
        self.0.clone().handle(req)
    }

    fn describe(&self) -> String {
        format!("queue {}", self.0.settings.dirs.root.display())
    }
}

/// What the timeout hand-off found (docs/reference.md §6.1 "Gateway timeout").
#[derive(Debug, PartialEq, Eq)]
enum Withdrawn {
    /// The request file was still waiting: nobody took it.
    NeverTaken,
    /// The relay had claimed it; the claim is now gone, so its answer will not be written.
    Claimed,
    /// The answer arrived in the meantime.
    Answered,
    /// Neither file exists (a relay that does not claim took it, or something removed it).
    Unknown,
}

/// Removes the waiter and withdraws the request if the handler ends without an answer (the
/// agent disconnected, or the handler returned early).
struct Pending {
    shared: Arc<Shared>,
    id: String,
    armed: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.shared.unregister(&self.id);
        if self.armed && self.shared.withdraw(&self.id) == Withdrawn::Answered {
            let _ = std::fs::remove_file(self.shared.settings.dirs.response(&self.id));
        }
    }
}

impl Shared {
    fn register(&self, id: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), tx);
        self.wake.notify_one();
        rx
    }

    fn unregister(&self, id: &str) {
        self.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    async fn handle<B: RequestBody>(
        self: Arc<Self>,
        req: Allowed<B>,
    ) -> Result<Forwarded, ForwardError> {
        let Allowed {
            method,
            allow,
            body,
            req_state,
            mut deadline,
            ..
        } = req;
        let bytes = match allow.body {
            BodyKind::None => Bytes::new(),
            BodyKind::Length(_) | BodyKind::Chunked => tokio::select! {
                read = read_body(body, allow.max_body_bytes, self.body_idle_timeout, req_state) => read?,
                () = &mut deadline => return Err(ForwardError::ShuttingDown { sent: false }),
            },
        };
        let id = uuid::Uuid::now_v7().to_string();
        let request = request_file(&id, &method, &allow, &bytes, self.settings.response_timeout)?;
        drop(bytes);
        let answered = self.register(&id);
        // Armed before publishing: if the agent goes away mid-publish, the file is withdrawn.
        let mut pending = Pending {
            shared: self.clone(),
            id: id.clone(),
            armed: true,
        };
        self.publish(&id, request).await?;
        let started = Instant::now();

        enum Waited {
            Answer,
            Timeout,
            Deadline,
        }
        let waited = tokio::select! {
            r = answered => match r { Ok(()) => Waited::Answer, Err(_) => Waited::Timeout },
            () = tokio::time::sleep(self.settings.response_timeout) => Waited::Timeout,
            () = &mut deadline => Waited::Deadline,
        };
        let result = match waited {
            Waited::Answer => self.consume(&id).await,
            Waited::Timeout | Waited::Deadline => {
                let deadline = matches!(waited, Waited::Deadline);
                match self.withdraw(&id) {
                    Withdrawn::Answered => self.consume(&id).await,
                    // The relay never took it: not sent.
                    Withdrawn::NeverTaken if self.relay_claims() => Err(if deadline {
                        ForwardError::ShuttingDown { sent: false }
                    } else {
                        ForwardError::Unsent {
                            hop: Hop::Relay,
                            source: None,
                        }
                    }),
                    _ if deadline => Err(ForwardError::ShuttingDown { sent: true }),
                    _ => Err(ForwardError::TimedOut { hop: Hop::Relay }),
                }
            }
        };
        pending.armed = false;
        result.map(|response| Forwarded {
            response,
            upstream_time: started.elapsed(),
        })
    }

    /// Counts waiting requests (sweeping stale ones when the queue is full), then publishes.
    async fn publish(&self, id: &str, bytes: Vec<u8>) -> Result<(), ForwardError> {
        let _guard = self.publish_lock.lock().await;
        let dirs = &self.settings.dirs;
        let max = self.settings.max_queue_depth;
        if count_waiting(&dirs.requests) >= max {
            let stale = self.settings.response_timeout + STALE_GRACE;
            sweep(&dirs.requests, |name| name_is(name, JSON_SUFFIX), stale);
            if count_waiting(&dirs.requests) >= max {
                return Err(ForwardError::Refused(Deny::new(
                    DenyCode::QueueFull,
                    "Bridge request queue is full",
                )));
            }
        }
        let path = dirs.request(id);
        let requests = dirs.requests.clone();
        let written = tokio::task::spawn_blocking(move || {
            publish_file(&path, &bytes).or_else(|e| {
                // The directory may have been removed under us: recreate it once.
                if e.kind() == std::io::ErrorKind::NotFound {
                    std::fs::create_dir_all(&requests)?;
                    publish_file(&path, &bytes)
                } else {
                    Err(e)
                }
            })
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ForwardError::Unsent {
                hop: Hop::Relay,
                source: Some(Box::new(e)),
            }),
            Err(e) => Err(ForwardError::Unsent {
                hop: Hop::Relay,
                source: Some(Box::new(e)),
            }),
        }
    }

    /// Whether `relay.json` announces the claims protocol (read fresh: a relay may start late).
    fn relay_claims(&self) -> bool {
        read_capped(&self.settings.dirs.root.join("relay.json"), 4096)
            .ok()
            .and_then(|b| serde_json::from_slice::<RelayAnnouncement>(&b).ok())
            .is_some_and(|a| a.protocol == CLAIMS_PROTOCOL)
    }

    /// The hand-off of docs/reference.md §6.1: exactly one of the relay's claim (rename) and our removal of
    /// the request file succeeds; if the relay won, removing its claim tells it nobody waits.
    fn withdraw(&self, id: &str) -> Withdrawn {
        let dirs = &self.settings.dirs;
        match std::fs::remove_file(dirs.request(id)) {
            Ok(()) => return Withdrawn::NeverTaken,
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(error = %e, "cannot withdraw the request file");
            }
            Err(_) => {}
        }
        let claim_removed = std::fs::remove_file(dirs.claimed(id)).is_ok();
        if dirs.response(id).symlink_metadata().is_ok() {
            return Withdrawn::Answered;
        }
        if claim_removed {
            Withdrawn::Claimed
        } else {
            Withdrawn::Unknown
        }
    }

    /// Reads and removes the response file (and any leftover request or claim), then builds the
    /// agent's answer.
    async fn consume(&self, id: &str) -> Result<Response<BridgeBody>, ForwardError> {
        let dirs = &self.settings.dirs;
        let (path, request, claimed) = (dirs.response(id), dirs.request(id), dirs.claimed(id));
        let envelope = self.envelope;
        let read = tokio::task::spawn_blocking(move || {
            let result = read_capped(&path, envelope);
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(&claimed);
            let _ = std::fs::remove_file(&request);
            result
        })
        .await
        .unwrap_or_else(|e| Err(ReadError::Io(std::io::Error::other(e))));
        let bytes = match read {
            Ok(b) => b,
            Err(ReadError::TooLarge(size)) => {
                tracing::warn!(size, "response file exceeds the envelope limit");
                return Err(ForwardError::ResponseTooLarge { hop: Hop::Relay });
            }
            Err(ReadError::Io(e)) => {
                return Err(ForwardError::BadResponse {
                    hop: Hop::Relay,
                    source: Some(Box::new(e)),
                });
            }
        };
        self.answer(id, &bytes)
    }

    /// Turns a response file into the agent's response.
    fn answer(&self, id: &str, bytes: &[u8]) -> Result<Response<BridgeBody>, ForwardError> {
        let unreadable = |e: FileError| match e {
            FileError::EnvelopeTooLarge { .. } | FileError::BodyTooLarge(_) => {
                ForwardError::ResponseTooLarge { hop: Hop::Relay }
            }
            e => ForwardError::BadResponse {
                hop: Hop::Relay,
                source: Some(Box::new(e)),
            },
        };
        let file = ResponseFile::parse(bytes, id, self.envelope).map_err(unreadable)?;
        let body = decode_body(
            &file.body,
            file.body_encoding.as_deref(),
            self.max_body_bytes,
        )
        .map_err(unreadable)?;
        let status = StatusCode::from_u16(file.status)
            .map_err(|_| unreadable(FileError::Malformed("invalid status".into())))?;
        let mut relayed = HeaderMap::new();
        for (name, value) in &file.headers {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_str(value),
            ) {
                relayed.append(name, value);
            }
        }
        let headers = relay_answer(status, &relayed, &self.response_headers, false)?;
        let mut response = Response::new(body::full(body));
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        Ok(response)
    }
}

/// Reads the agent's body into memory, bounded by the route's limit.
async fn read_body<B: RequestBody>(
    body: B,
    max: u64,
    idle: Duration,
    state: Arc<BodyState>,
) -> Result<Bytes, ForwardError> {
    match GuardedBody::new(body, max, idle, state.clone())
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(_) => Err(ForwardError::body(&state)),
    }
}

/// The request file for an allowed request.
fn request_file(
    id: &str,
    method: &Method,
    allow: &Allow,
    body: &[u8],
    response_timeout: Duration,
) -> Result<Vec<u8>, ForwardError> {
    let (path, query) = match allow.target.find('?') {
        Some(i) => (&allow.target[..i], &allow.target[i..]),
        None => (allow.target.as_str(), ""),
    };
    let mut headers = std::collections::BTreeMap::new();
    for name in allow.headers.keys() {
        let mut joined = String::new();
        for value in allow.headers.get_all(name) {
            let text = value.to_str().map_err(|_| {
                ForwardError::Refused(Deny::new(
                    DenyCode::BadRequest,
                    format!("Header {name} is not valid text"),
                ))
            })?;
            if !joined.is_empty() {
                joined.push_str(", ");
            }
            joined.push_str(text);
        }
        headers.insert(name.as_str().to_owned(), joined);
    }
    let (body, body_encoding) = encode_body(body);
    let file = RequestFile {
        id: id.to_owned(),
        method: method.as_str().to_owned(),
        path: path.to_owned(),
        query: query.to_owned(),
        headers,
        body,
        body_encoding,
        created_at: file::now_iso8601(),
        response_timeout_ms: Some(response_timeout.as_millis() as u64),
    };
    Ok(file.to_bytes())
}

enum ReadError {
    TooLarge(u64),
    Io(std::io::Error),
}

/// Reads a regular file of at most `limit` bytes. The open never blocks and never follows a
/// symlink (`O_NONBLOCK | O_NOFOLLOW`: a FIFO planted in the queue cannot wedge the gateway), and
/// what was opened must be a regular file (checked on the handle); its size is checked before
/// reading and the read is capped.
fn read_capped(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let flags = rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::NOFOLLOW;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(flags.bits() as i32)
        .open(path)
        .map_err(ReadError::Io)?;
    let meta = f.metadata().map_err(ReadError::Io)?;
    if !meta.is_file() {
        return Err(ReadError::Io(std::io::Error::other("not a regular file")));
    }
    let size = meta.len();
    if size > limit {
        return Err(ReadError::TooLarge(size));
    }
    let mut buf = Vec::with_capacity(size as usize);
    f.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(ReadError::Io)?;
    if buf.len() as u64 > limit {
        return Err(ReadError::TooLarge(buf.len() as u64));
    }
    Ok(buf)
}

fn name_is(name: &str, suffix: &str) -> bool {
    name.strip_suffix(suffix).is_some_and(file::valid_id)
}

/// Requests waiting in `requests/`: regular files named `*.json` (not `.claimed`, not `.tmp`).
fn count_waiting(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.ends_with(JSON_SUFFIX))
                && e.file_type().is_ok_and(|t| t.is_file())
        })
        .count()
}

/// Removes regular files selected by `select` whose mtime is older than `age`.
fn sweep(dir: &Path, select: impl Fn(&str) -> bool, age: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !select(name) {
            continue;
        }
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        let old = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|a| a > age);
        if meta.is_file() && old && std::fs::remove_file(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// One shared scan of `responses/` every poll interval, only while requests wait.
async fn watch_responses(shared: Arc<Shared>) {
    loop {
        let idle = shared
            .waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty();
        if idle {
            shared.wake.notified().await;
            continue;
        }
        tokio::time::sleep(shared.settings.poll_interval).await;
        let Ok(entries) = std::fs::read_dir(&shared.settings.dirs.responses) else {
            continue;
        };
        let names: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        let mut waiters = shared.waiters.lock().unwrap_or_else(|e| e.into_inner());
        for name in names {
            if let Some(id) = name.strip_suffix(JSON_SUFFIX) {
                if let Some(tx) = waiters.remove(id) {
                    let _ = tx.send(());
                }
            }
        }
    }
}

/// Removes what nobody will read: responses and temp files older than the response timeout
/// (+ grace), and claims whose gateway has given up.
async fn sweep_periodically(shared: Arc<Shared>) {
    let stale = shared.settings.response_timeout + STALE_GRACE;
    let dirs = shared.settings.dirs.clone();
    loop {
        tokio::time::sleep(SWEEP_INTERVAL).await;
        let dirs = dirs.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let leftovers = |n: &str| name_is(n, JSON_SUFFIX) || n.ends_with(".tmp");
            let n = sweep(&dirs.responses, leftovers, stale)
                + sweep(
                    &dirs.requests,
                    |n| name_is(n, CLAIMED_SUFFIX) || n.ends_with(".tmp"),
                    stale,
                );
            if n > 0 {
                tracing::info!(removed = n, "swept stale queue files");
            }
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_files_split_path_and_query_and_join_headers() {
        let mut headers = http::HeaderMap::new();
        headers.append("accept", HeaderValue::from_static("a"));
        headers.append("accept", HeaderValue::from_static("b"));
        let allow = Allow {
            route_id: Arc::from("r"),
            target: "/api/x?y=1&z".into(),
            body: BodyKind::Length(3),
            max_body_bytes: 10,
            headers,
        };
        let bytes = request_file(
            "id1",
            &Method::POST,
            &allow,
            &[0xff, 0, 1],
            Duration::from_millis(2500),
        )
        .unwrap();
        let f = RequestFile::parse(&bytes, "id1", 1 << 20).unwrap();
        assert_eq!((f.path.as_str(), f.query.as_str()), ("/api/x", "?y=1&z"));
        assert_eq!(f.headers["accept"], "a, b");
        assert_eq!(f.response_timeout_ms, Some(2500));
        assert_eq!(f.body_encoding.as_deref(), Some("base64"));
        assert_eq!(
            decode_body(&f.body, Some("base64"), 10).unwrap(),
            vec![0xff, 0, 1]
        );
    }

    #[test]
    fn publishing_refuses_a_planted_temp_symlink_target() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("victim");
        std::fs::write(&target, b"keep").unwrap();
        // A symlink at the temp name is removed, not written through.
        std::os::unix::fs::symlink(&target, d.path().join("r.json.tmp")).unwrap();
        publish_file(&d.path().join("r.json"), b"new").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert_eq!(std::fs::read(d.path().join("r.json")).unwrap(), b"new");
    }
}
