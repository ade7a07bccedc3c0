//! Configuration: raw options (flags, environment, TOML file, Paperclip's variables) become one
//! validated configuration per role, in one fallible step.
//!
//! Promise: after [`load`] nothing downstream reads env vars or files again; bad values exit 2
//! with a one-line reason; a listen address that is not loopback is refused unless explicitly
//! allowed; secrets come only from env vars or files and are held in redacting types; a gateway's
//! configuration cannot hold the upstream credential (it runs inside the sandbox). Attacks
//! defended: a typo that silently disables a setting (unknown keys and log directives are errors),
//! and a credential handed to the sandbox side by mistake.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;

use crate::auth::{BridgeToken, UpstreamCredential};
use crate::cli::{
    self, AdminOptions, CommonOptions, DurationArg, GatewayArgs, GatewayTransportOptions,
    Handshake, HealthArgs, Lifeline, ListenOptions, LogFormat, RelayArgs, RelayTransportOptions,
    ServeArgs, TransportKind, UpstreamOptions,
};
use crate::policy::{HeaderRules, Policy, RouteTable};

mod ca;
mod file;
mod listen;
mod upstream;

use crate::transport::stdio::handshake::{
    valid_nonce, MAX_NONCE_LEN, NONCE_ENV, PAPERCLIP_NONCE_ENV, PAPERCLIP_TOKEN_ENV,
};
pub use ca::UpstreamCa;
use file::{one_line, with_file, FileRole, MergedCommon};
pub use listen::{ListenAddr, PeerCheck, UNIX_PREFIX};
pub use upstream::Upstream;

/// Paperclip's default local listen origin.
pub const DEFAULT_UPSTREAM: &str = "http://127.0.0.1:3100";
pub const DEFAULT_UPSTREAM_TOKEN_ENV: &str = "CALLBACK_BRIDGE_UPSTREAM_TOKEN";
pub const DEFAULT_TOKEN_ENV: &str = "CALLBACK_BRIDGE_TOKEN";
pub use crate::policy::DEFAULT_MAX_BODY_BYTES;
/// Enough for an agent's parallel tool calls; small enough that a runaway loop is refused early.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;
/// Bounds file descriptors and memory held by idle keep-alive connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;
/// Steady rate for all callers together: far above any agent's legitimate use.
pub const DEFAULT_RATE_PER_SECOND: u32 = 100;
/// Burst allowance on top of the steady rate.
pub const DEFAULT_RATE_BURST: u32 = 200;
/// A client that cannot send a request head in 10 s is a slowloris, not an agent.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A body that stalls for 30 s holds an in-flight slot for nothing.
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Loopback or same-cluster upstreams connect in milliseconds; 5 s means it is down.
pub const DEFAULT_UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Paperclip answers API calls in well under 30 s; longer is treated as lost.
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// Long enough for in-flight API calls to finish, short enough for a quick run teardown.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the queue gateway waits for a response (Paperclip's default).
pub const DEFAULT_QUEUE_RESPONSE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the stdio gateway waits for the relay's response head. Longer than the relay's
/// default `upstream_timeout` (30 s) so that the relay's own, more precise answer (504/409) wins.
pub const DEFAULT_STDIO_RESPONSE_TIMEOUT: Duration = Duration::from_secs(35);
/// Interval of the queue gateway's response scan ("a poll of at most 10 ms"). Paperclip's
/// `PAPERCLIP_BRIDGE_POLL_INTERVAL_MS=100` is accepted and capped to this.
pub const MAX_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Lower bound of the scan interval: a `readdir` per millisecond is already plenty.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_millis(1);
/// Request files that may wait at once (Paperclip's default).
pub const DEFAULT_MAX_QUEUE_DEPTH: usize = 64;
/// Prefix of the bridge's own configuration variables.
const CONFIG_ENV_PREFIX: &str = "CALLBACK_BRIDGE_";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    ParseFile { path: PathBuf, message: String },
    #[error("invalid {key}: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("cannot read {what} file {path}: {source}")]
    SecretFile {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid routes file {path}: {message}")]
    Routes { path: PathBuf, message: String },
    #[error("invalid upstream_ca_file {path}: {message}")]
    CaFile { path: PathBuf, message: String },
    /// A setting the role cannot take (e.g. the upstream credential given to a gateway).
    #[error("{0}")]
    Refused(String),
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// Reads one environment variable; tests pass their own.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn env_nonempty(env: Env<'_>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.trim().is_empty())
}

// ---------------------------------------------------------------------------------------------
// The validated configuration, per role
// ---------------------------------------------------------------------------------------------

/// What `main` runs: one variant per command, each holding only what that command uses.
#[derive(Debug)]
pub enum Run {
    /// A long-running role, run inside the runtime `main` builds.
    Role(Role),
    Check(ServeConfig),
    Explain(ExplainConfig),
    Health(HealthConfig),
    /// The hidden sandbox helper (`queue take|start|put`): its arguments, parsed by the helper.
    QueueHelper(Vec<String>),
}

/// The five long-running roles.
#[derive(Debug)]
pub enum Role {
    Serve(ServeConfig),
    QueueGateway(QueueGatewayConfig),
    StdioGateway(StdioGatewayConfig),
    QueueRelay(QueueRelayConfig),
    StdioRelay(StdioRelayConfig),
    AutoRelay(AutoRelayConfig),
}

impl Role {
    /// The `role` of every log line: `serve`, `gateway` or `relay`.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Serve(_) => "serve",
            Role::QueueGateway(_) | Role::StdioGateway(_) => "gateway",
            Role::QueueRelay(_) | Role::StdioRelay(_) | Role::AutoRelay(_) => "relay",
        }
    }

    pub fn log(&self) -> &LogConfig {
        match self {
            Role::Serve(c) => &c.common.log,
            Role::QueueGateway(c) => &c.common.log,
            Role::StdioGateway(c) => &c.common.log,
            Role::QueueRelay(c) => &c.common.log,
            Role::StdioRelay(c) => &c.common.log,
            Role::AutoRelay(c) => &c.stdio.common.log,
        }
    }
}

/// The agent-facing listener.
#[derive(Debug, Clone)]
pub struct Listener {
    pub addr: ListenAddr,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
}

/// Where allowed requests go and what is injected into them.
#[derive(Debug)]
pub struct Target {
    pub upstream: Upstream,
    /// `upstream_ca_file`: the CAs that replace the built-in roots for an https upstream.
    pub ca: Option<UpstreamCa>,
    /// `None` when no credential is configured (forwarded without one, warned once).
    pub credential: Option<UpstreamCredential>,
    pub run_id: Option<http::HeaderValue>,
    pub connect_timeout: Duration,
    pub timeout: Duration,
}

/// Limits every role enforces on every request.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: u64,
    pub max_in_flight: usize,
    /// `(per_second, burst)`; `None` when disabled.
    pub rate: Option<(u32, u32)>,
    pub body_idle_timeout: Duration,
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Lifecycle {
    pub lifeline: Lifeline,
    pub max_lifetime: Option<Duration>,
    pub idle_exit: Option<Duration>,
    pub ready_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A validated `level` or `target=level,…` list.
    pub level: String,
    /// The run id on every log line (docs/reference.md §3.7).
    pub run_id: RunId,
}

/// The run id: configured (`run_id`, else `PAPERCLIP_RUN_ID`), or generated for the logs.
#[derive(Debug, Clone)]
pub struct RunId {
    /// 1–[`MAX_RUN_ID_LEN`] characters of `[A-Za-z0-9._:-]`.
    pub value: String,
    /// Whether it was configured: only a configured run id is sent upstream.
    pub configured: bool,
}

/// Longest run id accepted.
pub const MAX_RUN_ID_LEN: usize = 128;

impl RunId {
    /// The configured value, or a fresh UUIDv7 when `None` or empty.
    fn new(configured: Option<&str>) -> Result<RunId, ConfigError> {
        match configured.filter(|s| !s.is_empty()) {
            Some(value) => {
                let ok = value.len() <= MAX_RUN_ID_LEN
                    && value.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-')
                    });
                if !ok {
                    // Not echoed: a mistyped value could be anything, a secret included.
                    return Err(invalid(
                        "run_id",
                        format!("must be 1 to {MAX_RUN_ID_LEN} characters of A-Z a-z 0-9 . _ : -"),
                    ));
                }
                Ok(RunId {
                    value: value.to_owned(),
                    configured: true,
                })
            }
            None => Ok(RunId {
                value: uuid::Uuid::now_v7().hyphenated().to_string(),
                configured: false,
            }),
        }
    }

    /// The `x-paperclip-run-id` value sent upstream: only a configured run id.
    fn upstream_header(&self) -> Option<http::HeaderValue> {
        self.configured
            .then(|| http::HeaderValue::from_str(&self.value).ok())
            .flatten()
    }

    /// Refuses a run id equal to a secret: it is printed on every log line.
    fn refuse_secret(
        &self,
        token: Option<&BridgeToken>,
        credential: Option<&UpstreamCredential>,
    ) -> Result<(), ConfigError> {
        if !self.configured {
            return Ok(());
        }
        let id = self.value.as_bytes();
        let is_token = token.is_some_and(|t| t.expose().as_bytes() == id);
        let is_credential = credential.is_some_and(|c| {
            let v = c.value().as_bytes();
            v == id || (v.ends_with(id) && v[..v.len() - id.len()].ends_with(b" "))
        });
        if is_token || is_credential {
            return Err(invalid(
                "run_id",
                "equals a secret (the bridge token or the upstream credential); it is logged on \
                 every line and must not be one",
            ));
        }
        Ok(())
    }
}

/// What every role has: the policy, limits, lifecycle and logging.
#[derive(Debug)]
pub struct Common {
    pub policy: Policy,
    pub limits: Limits,
    pub lifecycle: Lifecycle,
    pub log: LogConfig,
    /// The admin listener's address (docs/reference.md §3.8), if any.
    pub admin: Option<std::net::SocketAddr>,
}

/// The bridge token a role checks, and whether it was generated (then it is printed once on the
/// readiness line).
#[derive(Debug, Clone)]
pub struct TokenConfig {
    pub token: BridgeToken,
    pub generated: bool,
}

/// `serve` (and `check`).
#[derive(Debug)]
pub struct ServeConfig {
    pub listener: Listener,
    pub target: Target,
    pub token: TokenConfig,
    pub common: Common,
}

/// `gateway --transport queue`.
#[derive(Debug)]
pub struct QueueGatewayConfig {
    pub listener: Listener,
    pub token: TokenConfig,
    pub common: Common,
    pub queue_dir: PathBuf,
    pub response_timeout: Duration,
    pub poll_interval: Duration,
    pub max_queue_depth: usize,
}

/// Where the stdio gateway's token and nonce come from.
#[derive(Debug)]
pub enum StdioHandshake {
    /// Already read from the environment.
    Env { token: BridgeToken, nonce: String },
    /// One JSON line on stdin, read when the gateway starts.
    Stdin,
}

/// `gateway --transport stdio`.
#[derive(Debug)]
pub struct StdioGatewayConfig {
    pub listener: Listener,
    pub common: Common,
    pub handshake: StdioHandshake,
    pub response_timeout: Duration,
}

/// `relay --transport queue`.
#[derive(Debug)]
pub struct QueueRelayConfig {
    pub target: Target,
    pub common: Common,
    /// The queue directory inside the sandbox, as text for the sandbox commands.
    pub queue_dir: String,
    /// `--sandbox-helper`: the binary's path inside the sandbox, when given.
    pub sandbox_helper: Option<String>,
    /// The gateway's response timeout, when the host knows it (`--response-timeout`,
    /// `PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS`); otherwise each request file's, else 30 s.
    pub response_timeout: Option<Duration>,
    /// The exec prefix.
    pub command: Vec<String>,
    /// Variables no command the relay runs inherits.
    pub scrub: Scrub,
    /// Set when `--transport auto` fell back to the queue: why the stdio channel did not start
    /// (shown on the readiness line).
    pub fallback_reason: Option<&'static str>,
}

/// `relay --transport auto`: the stdio relay, whose command is the exec prefix followed by the
/// gateway script; when that channel cannot start, a queue relay with the same upstream, policy
/// and limits, the prefix and the queue directory (docs/reference.md §6.5).
#[derive(Debug)]
pub struct AutoRelayConfig {
    pub stdio: StdioRelayConfig,
    pub queue_dir: String,
    pub sandbox_helper: Option<String>,
    /// For the queue relay it falls back to ([`QueueRelayConfig::response_timeout`]).
    pub response_timeout: Option<Duration>,
    /// The exec prefix alone (the stdio command without the script).
    pub prefix: Vec<String>,
}

/// `relay --transport stdio`.
#[derive(Debug)]
pub struct StdioRelayConfig {
    pub target: Target,
    pub token: TokenConfig,
    pub common: Common,
    pub handshake: Handshake,
    /// The command that starts the gateway.
    pub command: Vec<String>,
    /// Variables the command does not inherit.
    pub scrub: Scrub,
    /// No byte read, or a write pending, this long ends the session; the relay PINGs after a
    /// quarter of it without a byte. `STALL_TIMEOUT` unless the test-only [`STALL_TIMEOUT_ENV`]
    /// lowers it.
    pub stall_timeout: Duration,
}

/// Hidden and for tests only (no flag, no file key; docs/reference.md §6.2): a duration between
/// [`MIN_STALL_TIMEOUT`] and the default `STALL_TIMEOUT` (20 s) that shortens the stdio relay's
/// stall deadline, so that tests of a frozen gateway take seconds, not minutes.
pub const STALL_TIMEOUT_ENV: &str = "CALLBACK_BRIDGE_STDIO_STALL_TIMEOUT";
/// Lowest stall deadline the test knob accepts: below it a PING (sent after a quarter of it)
/// could not make a round trip through a loaded machine's pipes.
pub const MIN_STALL_TIMEOUT: Duration = Duration::from_millis(400);

/// `explain`: the policy and the request to explain.
#[derive(Debug)]
pub struct ExplainConfig {
    pub policy: Policy,
    pub method: String,
    pub target: String,
    pub headers: Vec<String>,
    pub body_bytes: Option<u64>,
}

/// `health`.
#[derive(Debug)]
pub struct HealthConfig {
    pub url: String,
    pub timeout: Duration,
}

/// How long `health` waits by default: well under Docker's default 30 s check timeout.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------
// The one step
// ---------------------------------------------------------------------------------------------

/// Turns a parsed command line into the validated configuration of its command.
pub fn load(command: cli::Command, env: Env<'_>) -> Result<Run, ConfigError> {
    match command {
        cli::Command::Serve(args) => Ok(Run::Role(Role::Serve(serve(args, env)?))),
        cli::Command::Check(args) => Ok(Run::Check(serve(args, env)?)),
        cli::Command::Gateway(args) => Ok(Run::Role(gateway(args, env)?)),
        cli::Command::Relay(args) => Ok(Run::Role(relay(args, env)?)),
        cli::Command::Explain(args) => {
            let (common, _) = with_file(args.common, FileRole::Serve, env)?;
            Ok(Run::Explain(ExplainConfig {
                policy: build_policy(&common.merged)?,
                method: args.method,
                target: args.target,
                headers: args.headers,
                body_bytes: args.body_bytes,
            }))
        }
        cli::Command::Health(args) => Ok(Run::Health(health(args, env)?)),
        cli::Command::Queue(args) => Ok(Run::QueueHelper(args.args)),
    }
}

fn serve(args: ServeArgs, env: Env<'_>) -> Result<ServeConfig, ConfigError> {
    let ServeArgs {
        listen,
        admin,
        upstream,
        common,
    } = args;
    let (common, file) = with_file(common, FileRole::Serve, env)?;
    let listen = listen.or(file.group()?);
    let admin = admin.or(file.group()?);
    let upstream = upstream.or(file.upstream_group()?);
    let mut target = target(&upstream, env)?;
    let token = token_or_generate(load_token(&common.merged, env)?)?;
    let common = common.validate_for_upstream(&admin, Some(&token), &mut target)?;
    Ok(ServeConfig {
        listener: listener(&listen, &admin)?,
        target,
        token,
        common,
    })
}

fn gateway(args: GatewayArgs, env: Env<'_>) -> Result<Role, ConfigError> {
    refuse_upstream_credential(env)?;
    let GatewayArgs {
        transport,
        mut listen,
        admin,
        mut common,
    } = args;
    let mut transport = transport;
    paperclip_gateway_aliases(&mut transport, &mut listen, &mut common, env)?;
    let (common, file) = with_file(common, FileRole::Gateway, env)?;
    let listen = listen.or(file.group()?);
    let admin = admin.or(file.group()?);
    let transport = transport.or(file.group()?);
    let kind = transport_kind(transport.transport, env)?;
    if kind == TransportKind::Auto {
        return Err(ConfigError::Refused(
            "--transport auto is for the relay; a gateway runs one transport (queue or stdio)"
                .into(),
        ));
    }
    let response_timeout = match transport.response_timeout {
        Some(d) if d.0.is_zero() => {
            return Err(invalid("response_timeout", "must be greater than zero"))
        }
        Some(d) => d.0,
        None if kind == TransportKind::Queue => DEFAULT_QUEUE_RESPONSE_TIMEOUT,
        None => DEFAULT_STDIO_RESPONSE_TIMEOUT,
    };
    let listener = listener(&listen, &admin)?;
    match kind {
        TransportKind::Queue => {
            let queue_dir = transport.queue_dir.clone().ok_or_else(|| {
                invalid(
                    "queue_dir",
                    "is required (--queue-dir or PAPERCLIP_BRIDGE_QUEUE_DIR)",
                )
            })?;
            let max_queue_depth = transport.max_queue_depth.unwrap_or(DEFAULT_MAX_QUEUE_DEPTH);
            if max_queue_depth == 0 {
                return Err(invalid("max_queue_depth", "must be greater than zero"));
            }
            let poll_interval = transport
                .poll_interval
                .map_or(MAX_POLL_INTERVAL, |d| d.0)
                .clamp(MIN_POLL_INTERVAL, MAX_POLL_INTERVAL);
            let token = token_or_generate(load_token(&common.merged, env)?)?;
            let common = common.validate(&admin)?;
            common.log.run_id.refuse_secret(Some(&token.token), None)?;
            Ok(Role::QueueGateway(QueueGatewayConfig {
                listener,
                token,
                common,
                queue_dir,
                response_timeout,
                poll_interval,
                max_queue_depth,
            }))
        }
        TransportKind::Stdio => {
            if common.merged.lifeline == Some(Lifeline::Stdin) {
                return Err(ConfigError::Refused(
                    "--lifeline stdin cannot be used with --transport stdio: stdin carries the \
                     session, whose end already stops the gateway"
                        .into(),
                ));
            }
            if !listener.addr.is_fixed() {
                return Err(ConfigError::Refused(
                    "the stdio gateway needs a fixed address (--listen 127.0.0.1:PORT, \
                     PAPERCLIP_BRIDGE_PORT or --listen unix:PATH): the agent's URL must stay the \
                     same when the relay restarts it"
                        .into(),
                ));
            }
            let handshake = match transport.handshake.unwrap_or(Handshake::Env) {
                Handshake::Stdin => StdioHandshake::Stdin,
                Handshake::Env => stdio_handshake_from_env(&common.merged, env)?,
            };
            let common = common.validate(&admin)?;
            if let StdioHandshake::Env { token, .. } = &handshake {
                common.log.run_id.refuse_secret(Some(token), None)?;
            }
            Ok(Role::StdioGateway(StdioGatewayConfig {
                listener,
                common,
                handshake,
                response_timeout,
            }))
        }
        TransportKind::Auto => unreachable!("refused above"),
    }
}

fn relay(args: RelayArgs, env: Env<'_>) -> Result<Role, ConfigError> {
    let RelayArgs {
        transport,
        admin,
        upstream,
        common,
        command,
    } = args;
    let (common, file) = with_file(common, FileRole::Relay, env)?;
    let admin = admin.or(file.group()?);
    let upstream = upstream.or(file.upstream_group()?);
    let transport: RelayTransportOptions = transport.or(file.group()?);
    let kind = transport_kind(transport.transport, env)?;
    let mut scrub_names: Vec<&str> = vec![
        upstream
            .upstream_token_env
            .as_deref()
            .unwrap_or(DEFAULT_UPSTREAM_TOKEN_ENV),
        common
            .merged
            .token_env
            .as_deref()
            .unwrap_or(DEFAULT_TOKEN_ENV),
    ];
    scrub_names.extend(transport.scrub_env.iter().flatten().map(String::as_str));
    let scrub = Scrub::for_relay(&scrub_names);
    if command.first().map_or(true, |c| c.is_empty()) {
        return Err(ConfigError::Refused(match kind {
            TransportKind::Queue => {
                "the exec prefix is required after `--` (e.g. `-- sh -c`)".into()
            }
            TransportKind::Stdio => {
                "relay --transport stdio needs the command that starts the gateway after `--`"
                    .into()
            }
            TransportKind::Auto => {
                "relay --transport auto needs the exec prefix after `--` (e.g. `-- sh -c`)".into()
            }
        }));
    }
    let mut target = target(&upstream, env)?;
    let queue_dir = || -> Result<String, ConfigError> {
        let dir = transport
            .queue_dir
            .as_ref()
            .ok_or_else(|| invalid("queue_dir", "is required (--queue-dir)"))?;
        Ok(dir
            .to_str()
            .filter(|d| !d.is_empty() && !d.contains('\0'))
            .ok_or_else(|| invalid("queue_dir", "must be UTF-8 text"))?
            .to_owned())
    };
    let sandbox_helper = transport.sandbox_helper.clone().filter(|p| !p.is_empty());
    let response_timeout = relay_response_timeout(transport.response_timeout, env)?;
    match kind {
        TransportKind::Queue => {
            let common = common.validate_for_upstream(&admin, None, &mut target)?;
            Ok(Role::QueueRelay(QueueRelayConfig {
                target,
                common,
                queue_dir: queue_dir()?,
                sandbox_helper,
                response_timeout,
                command,
                scrub,
                fallback_reason: None,
            }))
        }
        TransportKind::Auto => {
            let queue_dir = queue_dir()?;
            let script = transport
                .gateway_script
                .clone()
                .filter(|s| !s.trim().is_empty())
                .ok_or_else(|| {
                    invalid(
                        "gateway_script",
                        "is required with --transport auto (--gateway-script)",
                    )
                })?;
            let mut stdio_command = command.clone();
            stdio_command.push(script);
            let token = token_or_generate(load_token(&common.merged, env)?)?;
            let common = common.validate_for_upstream(&admin, Some(&token), &mut target)?;
            Ok(Role::AutoRelay(AutoRelayConfig {
                stdio: StdioRelayConfig {
                    target,
                    token,
                    common,
                    handshake: transport.handshake.unwrap_or(Handshake::Env),
                    command: stdio_command,
                    scrub,
                    stall_timeout: stall_timeout(env)?,
                },
                queue_dir,
                sandbox_helper,
                response_timeout,
                prefix: command,
            }))
        }
        TransportKind::Stdio => {
            let token = token_or_generate(load_token(&common.merged, env)?)?;
            let common = common.validate_for_upstream(&admin, Some(&token), &mut target)?;
            Ok(Role::StdioRelay(StdioRelayConfig {
                target,
                token,
                common,
                handshake: transport.handshake.unwrap_or(Handshake::Env),
                command,
                scrub,
                stall_timeout: stall_timeout(env)?,
            }))
        }
    }
}

/// The queue gateway's response timeout as the relay knows it: `--response-timeout`, else
/// `PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS` (the value the host launched Paperclip's gateway with).
fn relay_response_timeout(
    flag: Option<DurationArg>,
    env: Env<'_>,
) -> Result<Option<Duration>, ConfigError> {
    let timeout = match flag {
        Some(d) => Some(d.0),
        None => env_nonempty(env, "PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS")
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map(Duration::from_millis)
                    .map_err(|_| {
                        invalid(
                            "PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS",
                            format!("{v:?} is not a number"),
                        )
                    })
            })
            .transpose()?,
    };
    if timeout.is_some_and(|d| d.is_zero()) {
        return Err(invalid("response_timeout", "must be greater than zero"));
    }
    Ok(timeout)
}

/// The stdio relay's stall deadline: the default, or the test-only [`STALL_TIMEOUT_ENV`].
fn stall_timeout(env: Env<'_>) -> Result<Duration, ConfigError> {
    let default = crate::transport::stdio::STALL_TIMEOUT;
    let Some(text) = env_nonempty(env, STALL_TIMEOUT_ENV) else {
        return Ok(default);
    };
    let bad = || {
        invalid(
            "stdio stall timeout",
            format!(
                "{STALL_TIMEOUT_ENV} must be a duration from {}ms to {}s",
                MIN_STALL_TIMEOUT.as_millis(),
                default.as_secs()
            ),
        )
    };
    let DurationArg(value) = text.parse().map_err(|_| bad())?;
    if !(MIN_STALL_TIMEOUT..=default).contains(&value) {
        return Err(bad());
    }
    Ok(value)
}

fn health(args: HealthArgs, env: Env<'_>) -> Result<HealthConfig, ConfigError> {
    let url = match args.url {
        Some(u) => u,
        None => match env_nonempty(env, "CALLBACK_BRIDGE_LISTEN") {
            Some(listen) if listen.starts_with(listen::UNIX_PREFIX) => {
                return Err(invalid(
                    "url",
                    "health probes TCP only; for a unix: listener use \
                     curl --unix-socket PATH http://localhost/__bridge/health",
                ))
            }
            Some(listen) => format!("http://{listen}"),
            None => {
                return Err(invalid(
                    "url",
                    "no --url given and CALLBACK_BRIDGE_LISTEN is not set",
                ))
            }
        },
    };
    Ok(HealthConfig {
        url,
        timeout: args.timeout.map_or(DEFAULT_HEALTH_TIMEOUT, |d| d.0),
    })
}

/// The transport from the flag/env/file, or Paperclip's `PAPERCLIP_API_BRIDGE_MODE`.
fn transport_kind(
    given: Option<TransportKind>,
    env: Env<'_>,
) -> Result<TransportKind, ConfigError> {
    if let Some(kind) = given {
        return Ok(kind);
    }
    match env_nonempty(env, "PAPERCLIP_API_BRIDGE_MODE").as_deref() {
        Some("queue_v1") => Ok(TransportKind::Queue),
        Some("http2_v1") => Ok(TransportKind::Stdio),
        Some(other) => Err(ConfigError::Refused(format!(
            "Unsupported PAPERCLIP_API_BRIDGE_MODE: {other}"
        ))),
        None => Err(ConfigError::Refused(
            "--transport queue|stdio is required (or PAPERCLIP_API_BRIDGE_MODE)".into(),
        )),
    }
}

/// A gateway runs inside the sandbox: it must never be handed the upstream credential. Its flags
/// do not exist (clap refuses them) and file keys are refused by [`ConfigFile::check_keys`]; this
/// refuses the environment variables.
fn refuse_upstream_credential(env: Env<'_>) -> Result<(), ConfigError> {
    for name in [
        DEFAULT_UPSTREAM_TOKEN_ENV,
        "CALLBACK_BRIDGE_UPSTREAM_TOKEN_FILE",
        "CALLBACK_BRIDGE_UPSTREAM_TOKEN_ENV",
    ] {
        if env_nonempty(env, name).is_some() {
            return Err(ConfigError::Refused(format!(
                "{name} is set, but gateway runs inside the sandbox and must never hold the \
                 upstream credential: give it to the relay (or serve) instead"
            )));
        }
    }
    Ok(())
}

/// Paperclip's gateway variables fill the options that are still unset: they rank with the
/// environment, below flags and `CALLBACK_BRIDGE_*`, above the config file.
fn paperclip_gateway_aliases(
    transport: &mut GatewayTransportOptions,
    listen: &mut ListenOptions,
    common: &mut CommonOptions,
    env: Env<'_>,
) -> Result<(), ConfigError> {
    fn number(env: Env<'_>, key: &'static str) -> Result<Option<u64>, ConfigError> {
        env_nonempty(env, key)
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| invalid(key, format!("{v:?} is not a number")))
            })
            .transpose()
    }
    if transport.queue_dir.is_none() {
        transport.queue_dir = env_nonempty(env, "PAPERCLIP_BRIDGE_QUEUE_DIR").map(PathBuf::from);
    }
    if listen.listen.is_none() {
        let host = env_nonempty(env, "PAPERCLIP_BRIDGE_HOST");
        let port = number(env, "PAPERCLIP_BRIDGE_PORT")?;
        if host.is_some() || port.is_some() {
            let port = u16::try_from(port.unwrap_or(0))
                .map_err(|_| invalid("PAPERCLIP_BRIDGE_PORT", "is not a port number"))?;
            let host = host.unwrap_or_else(|| "127.0.0.1".into());
            let host = host.trim();
            listen.listen = Some(if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            });
        }
    }
    if common.max_body_bytes.is_none() {
        common.max_body_bytes = number(env, "PAPERCLIP_BRIDGE_MAX_BODY_BYTES")?;
    }
    let millis = |key| -> Result<Option<DurationArg>, ConfigError> {
        Ok(number(env, key)?.map(|ms| DurationArg(Duration::from_millis(ms))))
    };
    if transport.response_timeout.is_none() {
        transport.response_timeout = millis("PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS")?;
    }
    if transport.poll_interval.is_none() {
        transport.poll_interval = millis("PAPERCLIP_BRIDGE_POLL_INTERVAL_MS")?;
    }
    if transport.max_queue_depth.is_none() {
        transport.max_queue_depth =
            number(env, "PAPERCLIP_BRIDGE_MAX_QUEUE_DEPTH")?.map(|n| n as usize);
    }
    // The bridge token: `CALLBACK_BRIDGE_TOKEN` (or the configured source) first, then
    // Paperclip's `PAPERCLIP_BRIDGE_TOKEN`.
    if common.token_env.is_none()
        && common.token_file.is_none()
        && env_nonempty(env, DEFAULT_TOKEN_ENV).is_none()
        && env_nonempty(env, PAPERCLIP_TOKEN_ENV).is_some()
    {
        common.token_env = Some(PAPERCLIP_TOKEN_ENV.into());
    }
    Ok(())
}

/// The body limit Paperclip derives from its attachment limit, for a role whose
/// `max_body_bytes` nothing else set: `PAPERCLIP_ATTACHMENT_MAX_BYTES` plus 64 KiB of multipart
/// framing, never below the default (docs/reference.md §6.4). Like Paperclip's bridge, it is the
/// one limit of every route and of responses: the API enforces the attachment limit itself.
fn attachment_body_limit(env: Env<'_>) -> Result<Option<u64>, ConfigError> {
    const KEY: &str = "PAPERCLIP_ATTACHMENT_MAX_BYTES";
    let Some(v) = env_nonempty(env, KEY) else {
        return Ok(None);
    };
    match v.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(Some(
            n.saturating_add(MULTIPART_HEADROOM_BYTES)
                .max(DEFAULT_MAX_BODY_BYTES),
        )),
        _ => Err(invalid(KEY, format!("{v:?} is not a positive number"))),
    }
}

/// What a multipart upload adds to its file: boundaries, part headers, the small JSON field.
const MULTIPART_HEADROOM_BYTES: u64 = 64 * 1024;

/// The stdio gateway's token and nonce from the environment (`--handshake env`).
fn stdio_handshake_from_env(
    common: &CommonOptions,
    env: Env<'_>,
) -> Result<StdioHandshake, ConfigError> {
    let token = load_token(common, env)?.ok_or_else(|| {
        ConfigError::Refused(format!(
            "no bridge token: set {DEFAULT_TOKEN_ENV} (or {PAPERCLIP_TOKEN_ENV}), or use \
             --handshake stdin"
        ))
    })?;
    let nonce = env_nonempty(env, NONCE_ENV)
        .or_else(|| env_nonempty(env, PAPERCLIP_NONCE_ENV))
        .ok_or_else(|| {
            ConfigError::Refused(format!(
                "no session nonce: set {NONCE_ENV} (or {PAPERCLIP_NONCE_ENV}), or use \
                 --handshake stdin"
            ))
        })?;
    if !valid_nonce(&nonce) {
        return Err(ConfigError::Refused(format!(
            "invalid {NONCE_ENV}: at most {MAX_NONCE_LEN} printable characters"
        )));
    }
    Ok(StdioHandshake::Env { token, nonce })
}

/// Paperclip's own names for the upstream credential (an adapter's environment often holds the
/// same key under them): never inherited by a command the relay runs.
const PAPERCLIP_CREDENTIAL_ENVS: [&str; 2] = ["PAPERCLIP_API_KEY", "PAPERCLIP_API_KEY_FILE"];

/// The inherited variables no command a relay runs may see: the bridge's own configuration
/// (`CALLBACK_BRIDGE_*`, which includes the default credential variable), the configured secret
/// variables, and Paperclip's bridge secrets (the relay hands the gateway its own).
#[derive(Debug, Clone, Default)]
pub struct Scrub {
    names: Vec<String>,
}

impl Scrub {
    fn for_relay(configured: &[&str]) -> Scrub {
        let mut names: Vec<String> = configured.iter().map(|s| (*s).to_owned()).collect();
        names.extend(
            [PAPERCLIP_TOKEN_ENV, PAPERCLIP_NONCE_ENV]
                .into_iter()
                .chain(PAPERCLIP_CREDENTIAL_ENVS)
                .map(str::to_owned),
        );
        Scrub { names }
    }

    /// Exactly these names (tests).
    pub fn names(names: &[&str]) -> Scrub {
        Scrub {
            names: names.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    /// Whether an inherited variable must not reach the command.
    pub fn covers(&self, name: &str) -> bool {
        name.starts_with(CONFIG_ENV_PREFIX) || self.names.iter().any(|n| n == name)
    }

    /// Removes every covered variable of this process's environment from `cmd`.
    pub fn apply(&self, cmd: &mut tokio::process::Command) {
        for (name, _) in std::env::vars_os() {
            if name.to_str().is_some_and(|n| self.covers(n)) {
                cmd.env_remove(&name);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation of each group
// ---------------------------------------------------------------------------------------------

impl MergedCommon {
    /// [`validate`](Self::validate) for a role that forwards upstream: also refuses a run id
    /// equal to a secret and gives `target` the run id it sends upstream.
    fn validate_for_upstream(
        self,
        admin: &AdminOptions,
        token: Option<&TokenConfig>,
        target: &mut Target,
    ) -> Result<Common, ConfigError> {
        let common = self.validate(admin)?;
        common
            .log
            .run_id
            .refuse_secret(token.map(|t| &t.token), target.credential.as_ref())?;
        target.run_id = common.log.run_id.upstream_header();
        Ok(common)
    }

    fn validate(self, admin: &AdminOptions) -> Result<Common, ConfigError> {
        let opts = self.merged;
        let policy = build_policy(&opts)?;
        let rate_per_second = opts
            .rate_limit_per_second
            .unwrap_or(DEFAULT_RATE_PER_SECOND);
        let rate_burst = opts.rate_limit_burst.unwrap_or(DEFAULT_RATE_BURST);
        let rate = (rate_per_second > 0 && rate_burst > 0).then_some((rate_per_second, rate_burst));
        let limits = Limits {
            max_body_bytes: policy.max_body_bytes,
            max_in_flight: opts.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT),
            rate,
            body_idle_timeout: positive(
                "body_idle_timeout",
                duration_or(opts.body_idle_timeout, DEFAULT_BODY_IDLE_TIMEOUT),
            )?,
            drain_timeout: duration_or(opts.drain_timeout, DEFAULT_DRAIN_TIMEOUT),
        };
        if limits.max_in_flight == 0 {
            return Err(invalid("max_in_flight", "must be greater than zero"));
        }
        let lifecycle = Lifecycle {
            lifeline: opts.lifeline.unwrap_or(Lifeline::None),
            max_lifetime: optional_duration(opts.max_lifetime),
            idle_exit: optional_duration(opts.idle_exit),
            ready_file: opts.ready_file.clone(),
        };
        Ok(Common {
            policy,
            limits,
            lifecycle,
            log: log_config(&opts)?,
            admin: admin
                .admin_listen
                .as_deref()
                .map(|raw| {
                    listen::parse_tcp_for(
                        "admin_listen",
                        raw,
                        admin.allow_non_loopback.unwrap_or(false),
                    )
                })
                .transpose()?,
        })
    }
}

fn listener(opts: &ListenOptions, admin: &AdminOptions) -> Result<Listener, ConfigError> {
    let addr = listen::parse(listen::RawListen {
        listen: opts.listen.as_deref().unwrap_or("127.0.0.1:0"),
        allow_non_loopback: admin.allow_non_loopback.unwrap_or(false),
        mode: opts.listen_mode.as_deref(),
        allow_peer_uid: opts.allow_peer_uid.as_deref(),
        allow_peer_gid: opts.allow_peer_gid.as_deref(),
    })?;
    let max_connections = opts.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        return Err(invalid("max_connections", "must be greater than zero"));
    }
    Ok(Listener {
        addr,
        max_connections,
        header_read_timeout: positive(
            "header_read_timeout",
            duration_or(opts.header_read_timeout, DEFAULT_HEADER_READ_TIMEOUT),
        )?,
    })
}

fn target(opts: &UpstreamOptions, env: Env<'_>) -> Result<Target, ConfigError> {
    let upstream = match &opts.upstream {
        Some(url) => Upstream::parse(url)?,
        None => Upstream::parse(
            &upstream::from_paperclip_listen(env)?.unwrap_or_else(|| DEFAULT_UPSTREAM.into()),
        )?,
    };
    let header_name = opts
        .upstream_auth_header
        .as_deref()
        .unwrap_or("authorization");
    let header = http::HeaderName::from_bytes(header_name.as_bytes()).map_err(|_| {
        invalid(
            "upstream_auth_header",
            format!("{header_name:?} is not a header name"),
        )
    })?;
    let scheme = opts.upstream_auth_scheme.as_deref().unwrap_or("Bearer");
    let upstream_env = opts
        .upstream_token_env
        .as_deref()
        .unwrap_or(DEFAULT_UPSTREAM_TOKEN_ENV);
    let credential = load_secret(
        "upstream token",
        opts.upstream_token_file.as_deref(),
        upstream_env,
        env,
    )?
    .map(|secret| {
        UpstreamCredential::new(header, scheme, &SecretString::from(secret)).map_err(|_| {
            // Never echo the value: it is the secret.
            invalid(
                "upstream token",
                "contains characters not allowed in a header value",
            )
        })
    })
    .transpose()?;
    if credential.is_none() && opts.require_upstream_credential == Some(true) {
        return Err(ConfigError::Refused(format!(
            "no upstream credential: set {upstream_env} or --upstream-token-file \
             (--require-upstream-credential is on)"
        )));
    }
    let ca = opts
        .upstream_ca_file
        .as_deref()
        .map(|path| UpstreamCa::load(path, &upstream))
        .transpose()?;
    Ok(Target {
        upstream,
        ca,
        credential,
        // Set from the run id once the common options are validated.
        run_id: None,
        connect_timeout: positive(
            "upstream_connect_timeout",
            duration_or(
                opts.upstream_connect_timeout,
                DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
            ),
        )?,
        timeout: positive(
            "upstream_timeout",
            duration_or(opts.upstream_timeout, DEFAULT_UPSTREAM_TIMEOUT),
        )?,
    })
}

/// The configured bridge token, if any.
fn load_token(opts: &CommonOptions, env: Env<'_>) -> Result<Option<BridgeToken>, ConfigError> {
    let token_env = opts.token_env.as_deref().unwrap_or(DEFAULT_TOKEN_ENV);
    load_secret("bridge token", opts.token_file.as_deref(), token_env, env)?
        .map(|t| BridgeToken::supplied(t).map_err(|e| invalid("bridge token", e.to_string())))
        .transpose()
}

/// The configured token, or a fresh one (printed once on the readiness line).
fn token_or_generate(token: Option<BridgeToken>) -> Result<TokenConfig, ConfigError> {
    Ok(match token {
        Some(token) => TokenConfig {
            token,
            generated: false,
        },
        None => TokenConfig {
            token: BridgeToken::generate()
                .map_err(|e| invalid("token", format!("cannot generate: {e}")))?,
            generated: true,
        },
    })
}

/// Reads a secret file, stripping one trailing newline (`\n` or `\r\n`).
fn read_secret_file(what: &'static str, path: &Path) -> Result<String, ConfigError> {
    let mut s = std::fs::read_to_string(path).map_err(|source| ConfigError::SecretFile {
        what,
        path: path.to_owned(),
        source,
    })?;
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    Ok(s)
}

/// Reads a secret from a file (preferred when configured) or an env var. An empty variable counts
/// as absent; an empty file is an error (an empty Kubernetes Secret must not become a generated
/// token, or silently no credential).
fn load_secret(
    what: &'static str,
    file: Option<&Path>,
    env_name: &str,
    env: Env<'_>,
) -> Result<Option<String>, ConfigError> {
    match file {
        Some(path) => {
            let value = read_secret_file(what, path)?;
            if value.is_empty() {
                return Err(ConfigError::SecretFile {
                    what,
                    path: path.to_owned(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "the file is empty",
                    ),
                });
            }
            Ok(Some(value))
        }
        None => Ok(env(env_name).filter(|v| !v.is_empty())),
    }
}

fn duration_or(v: Option<DurationArg>, default: Duration) -> Duration {
    v.map(|d| d.0).unwrap_or(default)
}

fn optional_duration(v: Option<DurationArg>) -> Option<Duration> {
    v.map(|d| d.0).filter(|d| !d.is_zero())
}

fn positive(key: &'static str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        Err(invalid(key, "must be greater than zero"))
    } else {
        Ok(d)
    }
}

/// Builds the compiled policy from the options (routes file, header lists, body limit).
pub fn build_policy(opts: &CommonOptions) -> Result<Policy, ConfigError> {
    let routes = match &opts.routes {
        None => RouteTable::builtin(),
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Routes {
                path: path.clone(),
                message: e.to_string(),
            })?;
            RouteTable::from_toml(&text).map_err(|e| ConfigError::Routes {
                path: path.clone(),
                message: one_line(&e.to_string()),
            })?
        }
    };
    let defaults = HeaderRules::default();
    let names = |v: &[http::HeaderName]| v.iter().map(|n| n.as_str().to_owned()).collect();
    let request: Vec<String> = opts
        .request_headers
        .clone()
        .unwrap_or_else(|| names(defaults.request_names()));
    let response: Vec<String> = opts
        .response_headers
        .clone()
        .unwrap_or_else(|| names(defaults.response_names()));
    let headers = HeaderRules::new(&request, &response)
        .map_err(|e| invalid("request_headers/response_headers", e.to_string()))?;
    let max_body_bytes = opts.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if max_body_bytes == 0 {
        return Err(invalid("max_body_bytes", "must be greater than zero"));
    }
    Ok(Policy::new(routes, headers, max_body_bytes))
}

/// Log settings: the format, and a level list whose every directive is checked (a misspelt
/// level would otherwise read as a target name and silently switch every log line off).
fn log_config(opts: &CommonOptions) -> Result<LogConfig, ConfigError> {
    use std::io::IsTerminal;
    let level = opts.log_level.clone().unwrap_or_else(|| "info".to_owned());
    validate_log_level(&level)?;
    Ok(LogConfig {
        format: opts
            .log_format
            .unwrap_or(if std::io::stderr().is_terminal() {
                LogFormat::Pretty
            } else {
                LogFormat::Json
            }),
        level,
        run_id: RunId::new(opts.run_id.as_deref())?,
    })
}

fn validate_log_level(spec: &str) -> Result<(), ConfigError> {
    let is_level = |s: &str| {
        matches!(
            s.trim().to_ascii_lowercase().as_str(),
            "off" | "error" | "warn" | "info" | "debug" | "trace"
        )
    };
    let bad = |why: String| invalid("log_level", why);
    if spec.trim().is_empty() {
        return Err(bad("is empty".into()));
    }
    for directive in spec.split(',').map(str::trim) {
        match directive.split_once('=') {
            None if is_level(directive) => {}
            None => {
                return Err(bad(format!(
                    "{directive:?} is not a level (off, error, warn, info, debug, trace) or a \
                     target=level pair"
                )))
            }
            Some((target, level)) => {
                let target_ok = !target.is_empty()
                    && target
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '-');
                if !target_ok || !is_level(level) {
                    return Err(bad(format!(
                        "{directive:?} is not a target=level pair (e.g. access=warn)"
                    )));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::file::ConfigFile;
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> cli::Command {
        let mut argv = vec!["callback-bridge"];
        argv.extend_from_slice(args);
        cli::Cli::try_parse_from(argv).expect("parses").command
    }

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn parses_durations() {
        assert_eq!(
            "250ms".parse::<DurationArg>().unwrap().0,
            Duration::from_millis(250)
        );
        assert_eq!(
            "10s".parse::<DurationArg>().unwrap().0,
            Duration::from_secs(10)
        );
        assert_eq!(
            "5m".parse::<DurationArg>().unwrap().0,
            Duration::from_secs(300)
        );
        assert_eq!("off".parse::<DurationArg>().unwrap().0, Duration::ZERO);
        assert_eq!(
            "1m30s".parse::<DurationArg>().unwrap().0,
            Duration::from_secs(90)
        );
        assert_eq!(
            "1.5s".parse::<DurationArg>().unwrap().0,
            Duration::from_millis(1500)
        );
        assert!("10".parse::<DurationArg>().is_err());
        assert!("10x".parse::<DurationArg>().is_err());
        assert!("s".parse::<DurationArg>().is_err());
    }

    #[test]
    fn the_stdio_stall_timeout_is_20s_unless_the_test_knob_lowers_it() {
        let stall = |vars: &'static [(&'static str, &'static str)]| {
            let args = parse(&["relay", "--transport", "stdio", "--", "gw"]);
            match load(args, &env_of(vars)) {
                Ok(Run::Role(Role::StdioRelay(c))) => Ok(c.stall_timeout),
                Ok(_) => panic!("not a stdio relay"),
                Err(e) => Err(e.to_string()),
            }
        };
        assert_eq!(stall(&[]), Ok(Duration::from_secs(20)));
        assert_eq!(
            stall(&[(STALL_TIMEOUT_ENV, "2s")]),
            Ok(Duration::from_secs(2))
        );
        for refused in ["1ms", "off", "21s", "soon"] {
            let vars: &'static [(&str, &str)] =
                Box::leak(vec![(STALL_TIMEOUT_ENV, refused)].into_boxed_slice());
            let err = stall(vars).unwrap_err();
            assert!(err.contains(STALL_TIMEOUT_ENV), "{refused}: {err}");
        }
    }

    #[test]
    fn refuses_non_loopback_listen_unless_allowed() {
        assert!(listen::parse_tcp("0.0.0.0:0", false).is_err());
        assert!(listen::parse_tcp("0.0.0.0:0", true).is_ok());
        assert!(listen::parse_tcp("127.0.0.1:0", false).is_ok());
        assert!(listen::parse_tcp("[::1]:8080", false).is_ok());
        assert!(listen::parse_tcp("localhost:9", false).is_ok());
        assert!(listen::parse_tcp("nonsense", false).is_err());
    }

    #[test]
    fn validates_upstream_urls() {
        let u = Upstream::parse("http://127.0.0.1:3100").unwrap();
        assert_eq!(u.base_path, "");
        assert_eq!(
            u.uri_for("/api/x?a=%2F").unwrap().to_string(),
            "/api/x?a=%2F"
        );
        let u = Upstream::parse("http://h:1/base/").unwrap();
        assert_eq!(u.uri_for("/api").unwrap().path(), "/base/api");
        assert!(Upstream::parse("http://[::1]:3100").is_ok());
        #[cfg(feature = "tls")]
        assert!(Upstream::parse("https://paperclip.example").is_ok());
        for bad in [
            "ftp://x",
            "http://u:p@h/",
            "http://h/?q=1",
            "http://h/#f",
            "127.0.0.1:3100",
            "not a url",
            "http://127.0.0.1:notaport",
            "http://127.0.0.1:99999",
            "http://127.0.0.1:0",
        ] {
            assert!(Upstream::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn flags_beat_file_values() {
        let flags = CommonOptions {
            max_body_bytes: Some(1),
            ..Default::default()
        };
        let file = CommonOptions {
            max_body_bytes: Some(2),
            max_in_flight: Some(3),
            ..Default::default()
        };
        let merged = flags.or(file);
        assert_eq!(merged.max_body_bytes, Some(1));
        assert_eq!(merged.max_in_flight, Some(3));
    }

    #[test]
    fn example_config_file_equals_defaults() {
        let file = ConfigFile {
            path: PathBuf::from("config/bridge.toml"),
            table: toml::from_str(include_str!("../../config/bridge.toml")).unwrap(),
        };
        file.check_keys(FileRole::Serve).expect("serve keys only");
        let listen: ListenOptions = file.group().unwrap();
        let upstream: UpstreamOptions = file.group().unwrap();
        let common: CommonOptions = file.group().unwrap();
        assert_eq!(listen.listen.as_deref(), Some("127.0.0.1:0"));
        assert_eq!(upstream.upstream.as_deref(), Some(DEFAULT_UPSTREAM));
        assert_eq!(common.max_body_bytes, Some(DEFAULT_MAX_BODY_BYTES));
        assert_eq!(common.max_in_flight, Some(DEFAULT_MAX_IN_FLIGHT));
        assert_eq!(listen.max_connections, Some(DEFAULT_MAX_CONNECTIONS));
        assert_eq!(common.rate_limit_per_second, Some(DEFAULT_RATE_PER_SECOND));
        assert_eq!(common.rate_limit_burst, Some(DEFAULT_RATE_BURST));
        assert_eq!(
            listen.header_read_timeout.map(|d| d.0),
            Some(DEFAULT_HEADER_READ_TIMEOUT)
        );
        assert_eq!(
            common.body_idle_timeout.map(|d| d.0),
            Some(DEFAULT_BODY_IDLE_TIMEOUT)
        );
        assert_eq!(
            upstream.upstream_timeout.map(|d| d.0),
            Some(DEFAULT_UPSTREAM_TIMEOUT)
        );
        assert_eq!(
            common.drain_timeout.map(|d| d.0),
            Some(DEFAULT_DRAIN_TIMEOUT)
        );
        let defaults = HeaderRules::default();
        let names = |v: &[http::HeaderName]| -> Vec<String> {
            v.iter().map(|n| n.as_str().to_owned()).collect()
        };
        assert_eq!(
            common.request_headers,
            Some(names(defaults.request_names()))
        );
        assert_eq!(
            common.response_headers,
            Some(names(defaults.response_names()))
        );
    }

    fn file_of(text: &str) -> ConfigFile {
        ConfigFile {
            path: PathBuf::from("bridge.toml"),
            table: toml::from_str(text).unwrap(),
        }
    }

    #[test]
    fn upstream_files_in_the_file_resolve_against_its_directory() {
        let file = ConfigFile {
            path: PathBuf::from("/etc/callback-bridge/bridge.toml"),
            table: toml::from_str(
                "upstream_token_file = \"secrets/key\"\nupstream_ca_file = \"/abs/ca.pem\"",
            )
            .unwrap(),
        };
        let group = file.upstream_group().unwrap();
        assert_eq!(
            group.upstream_token_file.as_deref(),
            Some(std::path::Path::new("/etc/callback-bridge/secrets/key"))
        );
        assert_eq!(
            group.upstream_ca_file.as_deref(),
            Some(std::path::Path::new("/abs/ca.pem"))
        );
    }

    #[test]
    fn unknown_file_keys_are_errors_that_name_the_closest_key() {
        let err = file_of("listn = \"127.0.0.1:0\"")
            .check_keys(FileRole::Serve)
            .unwrap_err()
            .to_string();
        assert!(err.contains("listn") && err.contains("\"listen\""), "{err}");
    }

    #[test]
    fn a_gateway_refuses_the_upstream_credential_from_file_and_env() {
        let err = file_of("upstream_token_file = \"/run/secret\"")
            .check_keys(FileRole::Gateway)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("must never hold the upstream credential"),
            "{err}"
        );
        let err = file_of("upstream = \"http://x\"")
            .check_keys(FileRole::Gateway)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a setting of `gateway`"), "{err}");
        let env = env_of(&[
            ("CALLBACK_BRIDGE_UPSTREAM_TOKEN", "secret-value"),
            ("CALLBACK_BRIDGE_TOKEN", "bridge-token-0123456789"),
        ]);
        let cmd = parse(&["gateway", "--transport", "queue", "--queue-dir", "/tmp/q"]);
        let err = load(cmd, &env).unwrap_err().to_string();
        assert!(err.contains("CALLBACK_BRIDGE_UPSTREAM_TOKEN"), "{err}");
        assert!(!err.contains("secret-value"), "{err}");
        assert!(cli::Cli::try_parse_from([
            "callback-bridge",
            "gateway",
            "--upstream-token-file",
            "/x"
        ])
        .is_err());
    }

    #[test]
    fn the_default_upstream_follows_paperclips_listen_variables_below_explicit_settings() {
        fn upstream_of(args: &[&str], env: &'static [(&'static str, &'static str)]) -> String {
            let mut argv = vec!["relay", "--transport", "stdio"];
            argv.extend_from_slice(args);
            argv.extend_from_slice(&["--", "true"]);
            match load(parse(&argv), &env_of(env)) {
                Ok(Run::Role(Role::StdioRelay(c))) => c.target.upstream.display(),
                Ok(_) => panic!("not a stdio relay"),
                Err(e) => format!("error: {e}"),
            }
        }
        let both = &[
            ("PAPERCLIP_LISTEN_HOST", "0.0.0.0"),
            ("PAPERCLIP_LISTEN_PORT", "4100"),
            ("HOST", "10.9.9.9"),
            ("PORT", "9"),
        ];
        assert_eq!(upstream_of(&[], &[]), DEFAULT_UPSTREAM);
        assert_eq!(upstream_of(&[], both), "http://127.0.0.1:4100");
        assert_eq!(
            upstream_of(&[], &[("HOST", "::"), ("PORT", "5100")]),
            "http://[::1]:5100"
        );
        assert_eq!(
            upstream_of(&[], &[("PAPERCLIP_LISTEN_HOST", "::1"), ("PORT", "5100")]),
            "http://[::1]:5100"
        );
        assert_eq!(
            upstream_of(&[], &[("PAPERCLIP_LISTEN_PORT", "4200")]),
            "http://127.0.0.1:4200"
        );
        assert_eq!(
            upstream_of(&[], &[("HOST", "paperclip.internal")]),
            "http://paperclip.internal:3100"
        );
        // A flag wins over all of them.
        assert_eq!(
            upstream_of(&["--upstream", "http://127.0.0.1:7000"], both),
            "http://127.0.0.1:7000"
        );
        for bad in [
            &[("PAPERCLIP_LISTEN_PORT", "http")][..],
            &[("PORT", "0")][..],
            &[("HOST", "a/b")][..],
        ] {
            let err = upstream_of(&[], bad);
            assert!(
                err.starts_with("error: ") && err.contains(bad[0].0),
                "{err}"
            );
        }
    }

    #[test]
    fn paperclips_attachment_limit_raises_the_default_body_limit_only() {
        fn limit(args: &[&str], env: &'static [(&'static str, &'static str)]) -> String {
            let mut argv = vec!["relay", "--transport", "stdio"];
            argv.extend_from_slice(args);
            argv.extend_from_slice(&["--", "true"]);
            match load(parse(&argv), &env_of(env)) {
                Ok(Run::Role(Role::StdioRelay(c))) => c.common.limits.max_body_bytes.to_string(),
                Ok(_) => panic!("not a stdio relay"),
                Err(e) => format!("error: {e}"),
            }
        }
        let twenty = &[("PAPERCLIP_ATTACHMENT_MAX_BYTES", "20971520")];
        assert_eq!(limit(&[], twenty), (20971520 + 65536).to_string());
        // Never lowers the default.
        assert_eq!(
            limit(&[], &[("PAPERCLIP_ATTACHMENT_MAX_BYTES", "1024")]),
            DEFAULT_MAX_BODY_BYTES.to_string()
        );
        // An explicit limit wins.
        assert_eq!(limit(&["--max-body-bytes", "4096"], twenty), "4096");
        let gateway = load(
            parse(&["gateway", "--transport", "queue", "--queue-dir", "/tmp/q"]),
            &env_of(&[
                ("PAPERCLIP_ATTACHMENT_MAX_BYTES", "20971520"),
                ("PAPERCLIP_BRIDGE_MAX_BODY_BYTES", "2048"),
                ("CALLBACK_BRIDGE_TOKEN", "t0123456789abcdef0123456789abcdef"),
            ]),
        );
        let Ok(Run::Role(Role::QueueGateway(c))) = gateway else {
            panic!("not a queue gateway");
        };
        assert_eq!(c.common.limits.max_body_bytes, 2048);
        for bad in ["0", "-1", "ten"] {
            let env: &'static [(&'static str, &'static str)] = match bad {
                "0" => &[("PAPERCLIP_ATTACHMENT_MAX_BYTES", "0")],
                "-1" => &[("PAPERCLIP_ATTACHMENT_MAX_BYTES", "-1")],
                _ => &[("PAPERCLIP_ATTACHMENT_MAX_BYTES", "ten")],
            };
            let err = limit(&[], env);
            assert!(
                err.contains("PAPERCLIP_ATTACHMENT_MAX_BYTES"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn paperclip_variables_fill_unset_gateway_options_with_one_host_rule() {
        let env = env_of(&[
            ("PAPERCLIP_BRIDGE_QUEUE_DIR", "/tmp/pq"),
            ("PAPERCLIP_BRIDGE_HOST", "::1"),
            ("PAPERCLIP_BRIDGE_PORT", "4100"),
            ("PAPERCLIP_BRIDGE_MAX_BODY_BYTES", "2048"),
            ("PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS", "1500"),
            ("PAPERCLIP_BRIDGE_POLL_INTERVAL_MS", "100"),
            ("PAPERCLIP_BRIDGE_MAX_QUEUE_DEPTH", "7"),
            ("PAPERCLIP_API_BRIDGE_MODE", "queue_v1"),
            ("PAPERCLIP_BRIDGE_TOKEN", "paperclip-token-0123456789abcdef"),
        ]);
        let Run::Role(Role::QueueGateway(c)) = load(parse(&["gateway"]), &env).unwrap() else {
            panic!("not a queue gateway");
        };
        assert_eq!(c.queue_dir, PathBuf::from("/tmp/pq"));
        assert_eq!(
            c.listener.addr,
            ListenAddr::Tcp("[::1]:4100".parse().unwrap())
        );
        assert_eq!(c.common.limits.max_body_bytes, 2048);
        assert_eq!(c.response_timeout, Duration::from_millis(1500));
        assert_eq!(c.poll_interval, MAX_POLL_INTERVAL);
        assert_eq!(c.max_queue_depth, 7);
        assert!(!c.token.generated);
        assert!(c
            .token
            .token
            .verify_authorization(b"Bearer paperclip-token-0123456789abcdef"));
        // Flags win over Paperclip's variables; a bracketed host is not bracketed twice.
        let env = env_of(&[
            ("PAPERCLIP_BRIDGE_HOST", "[::1]"),
            ("PAPERCLIP_BRIDGE_PORT", "4101"),
            ("PAPERCLIP_API_BRIDGE_MODE", "http2_v1"),
            ("CALLBACK_BRIDGE_TOKEN", "t0123456789abcdefgh"),
            ("CALLBACK_BRIDGE_NONCE", "n1"),
        ]);
        let Run::Role(Role::StdioGateway(c)) =
            load(parse(&["gateway", "--response-timeout", "2s"]), &env).unwrap()
        else {
            panic!("not a stdio gateway");
        };
        assert_eq!(
            c.listener.addr,
            ListenAddr::Tcp("[::1]:4101".parse().unwrap())
        );
        assert_eq!(c.response_timeout, Duration::from_secs(2));
        // A host without a port is an ephemeral port: refused for stdio, which needs a fixed one.
        let env = env_of(&[
            ("PAPERCLIP_BRIDGE_HOST", "127.0.0.1"),
            ("CALLBACK_BRIDGE_TOKEN", "t0123456789abcdefgh"),
            ("CALLBACK_BRIDGE_NONCE", "n1"),
        ]);
        let err = load(parse(&["gateway", "--transport", "stdio"]), &env).unwrap_err();
        assert!(err.to_string().contains("fixed address"), "{err}");
    }

    #[test]
    fn bad_paperclip_numbers_are_errors() {
        let env = env_of(&[
            ("PAPERCLIP_BRIDGE_MAX_QUEUE_DEPTH", "many"),
            ("PAPERCLIP_BRIDGE_QUEUE_DIR", "/tmp/q"),
        ]);
        let err = load(parse(&["gateway", "--transport", "queue"]), &env).unwrap_err();
        assert!(err.to_string().contains("PAPERCLIP_BRIDGE_MAX_QUEUE_DEPTH"));
        let env = env_of(&[
            ("PAPERCLIP_BRIDGE_PORT", "99999"),
            ("PAPERCLIP_BRIDGE_QUEUE_DIR", "/tmp/q"),
        ]);
        let err = load(parse(&["gateway", "--transport", "queue"]), &env).unwrap_err();
        assert!(err.to_string().contains("PAPERCLIP_BRIDGE_PORT"), "{err}");
    }

    #[test]
    fn flags_win_over_paperclip_variables() {
        let env = env_of(&[
            ("PAPERCLIP_BRIDGE_QUEUE_DIR", "/q"),
            ("PAPERCLIP_BRIDGE_HOST", "127.0.0.1"),
            ("PAPERCLIP_BRIDGE_PORT", "0"),
            ("PAPERCLIP_BRIDGE_MAX_QUEUE_DEPTH", "8"),
        ]);
        let Run::Role(Role::QueueGateway(c)) =
            load(parse(&["gateway", "--transport", "queue"]), &env).unwrap()
        else {
            panic!("not a queue gateway");
        };
        assert_eq!(
            c.listener.addr,
            ListenAddr::Tcp("127.0.0.1:0".parse().unwrap())
        );
        assert_eq!(c.max_queue_depth, 8);
        let cmd = parse(&[
            "gateway",
            "--transport",
            "queue",
            "--listen",
            "127.0.0.1:9",
            "--max-queue-depth",
            "3",
        ]);
        let Run::Role(Role::QueueGateway(c)) = load(cmd, &env).unwrap() else {
            panic!("not a queue gateway");
        };
        assert_eq!(
            c.listener.addr,
            ListenAddr::Tcp("127.0.0.1:9".parse().unwrap())
        );
        assert_eq!(c.max_queue_depth, 3);
    }

    #[test]
    fn relays_scrub_their_configuration_and_secret_variables_only() {
        let scrub = Scrub::for_relay(&["MY_UPSTREAM_KEY", "MY_KEY"]);
        for name in [
            "PAPERCLIP_API_KEY",
            "PAPERCLIP_API_KEY_FILE",
            "CALLBACK_BRIDGE_UPSTREAM_TOKEN",
            "CALLBACK_BRIDGE_TOKEN",
            "CALLBACK_BRIDGE_TOKEN_FILE",
            "CALLBACK_BRIDGE_UPSTREAM",
            "PAPERCLIP_BRIDGE_TOKEN",
            "PAPERCLIP_BRIDGE_NONCE",
            "MY_UPSTREAM_KEY",
            "MY_KEY",
        ] {
            assert!(scrub.covers(name), "{name} kept");
        }
        for name in [
            "PATH",
            "HOME",
            "KUBECONFIG",
            "PAPERCLIP_BRIDGE_PORT",
            "SSH_AUTH_SOCK",
        ] {
            assert!(!scrub.covers(name), "{name} scrubbed");
        }
    }

    #[test]
    fn short_tokens_empty_secret_files_and_a_required_missing_credential_are_refused() {
        let env = env_of(&[("CALLBACK_BRIDGE_TOKEN", "short")]);
        let err = load(parse(&["serve"]), &env).unwrap_err().to_string();
        assert!(err.contains("shorter than 16"), "{err}");
        assert!(!err.contains("short\""), "{err}");
        // Paperclip's tokens: 24 random bytes, 32 base64url characters.
        let env = env_of(&[("CALLBACK_BRIDGE_TOKEN", "AbCdEfGhIjKlMnOpQrStUvWxYz012345")]);
        assert!(load(parse(&["serve"]), &env).is_ok());

        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("token");
        std::fs::write(&empty, "").unwrap();
        let empty = empty.to_str().unwrap();
        let none = env_of(&[]);
        for args in [
            &["serve", "--token-file", empty][..],
            &["serve", "--upstream-token-file", empty][..],
        ] {
            let err = load(parse(args), &none).unwrap_err().to_string();
            assert!(err.contains("empty"), "{args:?}: {err}");
        }

        let err = load(parse(&["serve", "--require-upstream-credential"]), &none)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no upstream credential"), "{err}");
        assert!(load(
            parse(&["serve", "--require-upstream-credential", "no"]),
            &none
        )
        .is_ok());
        let Run::Role(Role::Serve(c)) = load(
            parse(&[
                "serve",
                "--allow-non-loopback",
                "yes",
                "--listen",
                "0.0.0.0:0",
            ]),
            &none,
        )
        .unwrap() else {
            panic!()
        };
        let ListenAddr::Tcp(addr) = c.listener.addr else {
            panic!("not tcp")
        };
        assert!(!addr.ip().is_loopback());
    }

    #[test]
    fn misspelt_log_levels_are_errors() {
        for good in ["info", "warn", "access=warn", "info,access=off", "DEBUG"] {
            assert!(validate_log_level(good).is_ok(), "{good}");
        }
        for bad in ["wanr", "garbage!!", "", "access=loud", "=info"] {
            assert!(validate_log_level(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_explicit_log_level_beats_rust_log_which_beats_the_file() {
        let env = env_of(&[("RUST_LOG", "debug")]);
        let Run::Role(Role::Serve(c)) =
            load(parse(&["serve", "--log-level", "warn"]), &env).unwrap()
        else {
            panic!()
        };
        assert_eq!(c.common.log.level, "warn");
        let Run::Role(Role::Serve(c)) = load(parse(&["serve"]), &env).unwrap() else {
            panic!()
        };
        assert_eq!(c.common.log.level, "debug");
        let env = env_of(&[("RUST_LOG", "wanr")]);
        assert!(load(parse(&["serve"]), &env).is_err());
    }
}
