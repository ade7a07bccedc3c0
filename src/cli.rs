//! Command-line definitions only: parse, no side effects (ripgrep's "low args").
//!
//! Options come in groups, and each subcommand flattens only the groups it uses, so its `--help`
//! lists nothing it ignores: [`ListenOptions`] (the agent-facing listener: `serve`, `gateway`),
//! [`UpstreamOptions`] (where requests go and the real credential: `serve`, `relay`) and
//! [`CommonOptions`] (token, policy, limits, lifecycle, logging: every role). Every option can
//! also come from `CALLBACK_BRIDGE_<OPTION>` and from the TOML file; precedence is flag >
//! environment > file > built-in default, and the merge happens in `config`. Secrets are never
//! accepted here: argv is world-readable in `/proc`.

use std::path::PathBuf;

use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

/// Loopback sidecar proxy that lets a sandboxed agent call its orchestrator's API.
#[derive(Debug, Parser)]
#[command(name = "callback-bridge", version = crate::VERSION, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Direct mode: loopback listener -> policy -> one upstream (docs/reference.md §1).
    Serve(ServeArgs),
    /// Inside the sandbox: loopback listener for the agent; hands requests to the relay.
    Gateway(GatewayArgs),
    /// On the host: the other end of a gateway; applies the policy and forwards upstream.
    Relay(RelayArgs),
    /// Sandbox-side helper used by the queue relay (`--sandbox-helper`); not for direct use.
    #[command(hide = true)]
    Queue(QueueHelperArgs),
    /// Load and validate the configuration, print the compiled policy; exit 0 or 2.
    Check(ServeArgs),
    /// Print the policy decision for one request as JSON, without sending anything.
    Explain(ExplainArgs),
    /// Exit 0 if GET URL/__bridge/health answers 200 (container health checks).
    Health(HealthArgs),
}

/// How the process learns that its parent went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lifeline {
    /// No lifeline: run until a signal or a limit.
    None,
    /// Exit (draining) when stdin reaches end of file.
    Stdin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

/// Defines an option group and its `or`: every field is an `Option`, and `a.or(b)` keeps each
/// value given in `a` and fills the rest from `b` (flags/env over the file).
macro_rules! option_group {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $( $(#[$fmeta:meta])* pub $field:ident : Option<$ty:ty>, )*
        }
    ) => {
        $(#[$meta])*
        pub struct $name {
            $( $(#[$fmeta])* pub $field: Option<$ty>, )*
        }

        impl $name {
            /// Fills every option not given here from `lower`.
            pub fn or(self, lower: $name) -> $name {
                $name { $( $field: self.$field.or(lower.$field), )* }
            }
        }
    };
}

option_group! {
    /// The agent-facing listener (`serve`, `gateway`).
    #[derive(Debug, Clone, Default, Args, Deserialize)]
    pub struct ListenOptions {
        /// Listen address: IP:PORT (must be loopback unless --allow-non-loopback) or unix:PATH
        /// (a Unix socket) [default: 127.0.0.1:0]
        #[arg(long, env = "CALLBACK_BRIDGE_LISTEN", value_name = "ADDR")]
        pub listen: Option<String>,

        /// Mode of a unix: socket: 0600 (owner only) or 0660 (owner and group) [default: 0600]
        #[arg(long, env = "CALLBACK_BRIDGE_LISTEN_MODE", value_name = "MODE")]
        pub listen_mode: Option<String>,

        /// unix: only: accept connections only from these peer uids (kernel credentials),
        /// comma-separated; others are closed unread [default: any]
        #[arg(long, env = "CALLBACK_BRIDGE_ALLOW_PEER_UID", value_delimiter = ',', value_name = "UIDS")]
        pub allow_peer_uid: Option<Vec<u32>>,

        /// unix: only: accept connections only from these peer gids (the peer's effective gid),
        /// comma-separated; with --allow-peer-uid both must match [default: any]
        #[arg(long, env = "CALLBACK_BRIDGE_ALLOW_PEER_GID", value_delimiter = ',', value_name = "GIDS")]
        pub allow_peer_gid: Option<Vec<u32>>,

        /// Concurrent client connections; beyond -> not accepted until one closes [default: 256]
        #[arg(long, env = "CALLBACK_BRIDGE_MAX_CONNECTIONS", value_name = "N")]
        pub max_connections: Option<usize>,

        /// Time to receive a request head [default: 10s]
        #[arg(long, env = "CALLBACK_BRIDGE_HEADER_READ_TIMEOUT", value_name = "DURATION")]
        pub header_read_timeout: Option<DurationArg>,
    }
}

option_group! {
    /// Where allowed requests go and the credential injected into them (`serve`, `relay`).
    #[derive(Debug, Clone, Default, Args, Deserialize)]
    pub struct UpstreamOptions {
        /// Base URL requests are forwarded to (http or https; no userinfo, query or fragment)
        /// [default: http://127.0.0.1:3100]
        #[arg(long, env = "CALLBACK_BRIDGE_UPSTREAM", value_name = "URL")]
        pub upstream: Option<String>,

        /// Name of the env var holding the upstream credential [default: CALLBACK_BRIDGE_UPSTREAM_TOKEN]
        #[arg(long, env = "CALLBACK_BRIDGE_UPSTREAM_TOKEN_ENV", value_name = "NAME")]
        pub upstream_token_env: Option<String>,

        /// File holding the upstream credential (trailing newline stripped); wins over the env var
        #[arg(long, env = "CALLBACK_BRIDGE_UPSTREAM_TOKEN_FILE", value_name = "PATH")]
        pub upstream_token_file: Option<PathBuf>,

        /// Header the upstream credential is injected into [default: authorization]
        #[arg(long, env = "CALLBACK_BRIDGE_UPSTREAM_AUTH_HEADER", value_name = "NAME")]
        pub upstream_auth_header: Option<String>,

        /// Prefix written before the credential; empty = raw value [default: Bearer]
        #[arg(long, env = "CALLBACK_BRIDGE_UPSTREAM_AUTH_SCHEME", value_name = "SCHEME")]
        pub upstream_auth_scheme: Option<String>,

        /// Refuse to start without an upstream credential (true/false, yes/no, 1/0) [default: false:
        /// requests are then forwarded without one, and a warning is logged]
        #[arg(long, env = "CALLBACK_BRIDGE_REQUIRE_UPSTREAM_CREDENTIAL", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", value_parser = clap::builder::BoolishValueParser::new())]
        pub require_upstream_credential: Option<bool>,

        /// PEM file of the CA certificate(s) an https upstream's certificate must chain to; replaces
        /// the built-in Mozilla roots [default: the built-in roots]
        #[arg(long, env = "CALLBACK_BRIDGE_UPSTREAM_CA_FILE", value_name = "PATH")]
        pub upstream_ca_file: Option<PathBuf>,

        /// Time to connect to the upstream [default: 5s]
        #[arg(long, env = "CALLBACK_BRIDGE_UPSTREAM_CONNECT_TIMEOUT", value_name = "DURATION")]
        pub upstream_connect_timeout: Option<DurationArg>,

        /// From sending the request until the upstream response head [default: 30s]
        #[arg(long, env = "CALLBACK_BRIDGE_UPSTREAM_TIMEOUT", value_name = "DURATION")]
        pub upstream_timeout: Option<DurationArg>,
    }
}

option_group! {
    /// Token, policy, limits, lifecycle and logging: what every role uses.
    #[derive(Debug, Clone, Default, Args, Deserialize)]
    pub struct CommonOptions {
        /// TOML configuration file (see config/bridge.toml)
        #[arg(long, env = "CALLBACK_BRIDGE_CONFIG", value_name = "PATH")]
        #[serde(skip)]
        pub config: Option<PathBuf>,

        /// Name of the env var holding the bridge token; generated when absent [default: CALLBACK_BRIDGE_TOKEN]
        #[arg(long, env = "CALLBACK_BRIDGE_TOKEN_ENV", value_name = "NAME")]
        pub token_env: Option<String>,

        /// File holding the bridge token (trailing newline stripped); wins over the env var
        #[arg(long, env = "CALLBACK_BRIDGE_TOKEN_FILE", value_name = "PATH")]
        pub token_file: Option<PathBuf>,

        /// Routes file replacing the built-in Paperclip allowlist [default: built-in]
        #[arg(long, env = "CALLBACK_BRIDGE_ROUTES", value_name = "PATH")]
        pub routes: Option<PathBuf>,

        /// Request headers forwarded upstream, comma-separated
        /// [default: accept,content-type,if-match,if-none-match,idempotency-key,x-paperclip-github-capability]
        #[arg(long, env = "CALLBACK_BRIDGE_REQUEST_HEADERS", value_delimiter = ',', value_name = "NAMES")]
        pub request_headers: Option<Vec<String>>,

        /// Response headers returned to the agent, comma-separated
        /// [default: content-type,etag,last-modified,cache-control,location,retry-after,x-paperclip-bridge-outcome]
        #[arg(long, env = "CALLBACK_BRIDGE_RESPONSE_HEADERS", value_delimiter = ',', value_name = "NAMES")]
        pub response_headers: Option<Vec<String>>,

        /// Largest request or response body in bytes [default: 10551296]
        #[arg(long, env = "CALLBACK_BRIDGE_MAX_BODY_BYTES", value_name = "BYTES")]
        pub max_body_bytes: Option<u64>,

        /// Concurrent requests; beyond -> 503 overloaded [default: 64]
        #[arg(long, env = "CALLBACK_BRIDGE_MAX_IN_FLIGHT", value_name = "N")]
        pub max_in_flight: Option<usize>,

        /// Token-bucket rate for all callers together; 0 disables [default: 100]
        #[arg(long, env = "CALLBACK_BRIDGE_RATE_LIMIT_PER_SECOND", value_name = "N")]
        pub rate_limit_per_second: Option<u32>,

        /// Token-bucket burst [default: 200]
        #[arg(long, env = "CALLBACK_BRIDGE_RATE_LIMIT_BURST", value_name = "N")]
        pub rate_limit_burst: Option<u32>,

        /// Longest gap between request or response body chunks [default: 30s]
        #[arg(long, env = "CALLBACK_BRIDGE_BODY_IDLE_TIMEOUT", value_name = "DURATION")]
        pub body_idle_timeout: Option<DurationArg>,

        /// On shutdown, how long in-flight requests may finish [default: 5s]
        #[arg(long, env = "CALLBACK_BRIDGE_DRAIN_TIMEOUT", value_name = "DURATION")]
        pub drain_timeout: Option<DurationArg>,

        /// `stdin`: exit (draining) when stdin reaches end of file [default: none]
        #[arg(long, env = "CALLBACK_BRIDGE_LIFELINE", value_name = "KIND")]
        pub lifeline: Option<Lifeline>,

        /// Exit after this total time; `off` disables [default: off]
        #[arg(long, env = "CALLBACK_BRIDGE_MAX_LIFETIME", value_name = "DURATION")]
        pub max_lifetime: Option<DurationArg>,

        /// Exit after this long with no request; `off` disables [default: off]
        #[arg(long, env = "CALLBACK_BRIDGE_IDLE_EXIT", value_name = "DURATION")]
        pub idle_exit: Option<DurationArg>,

        /// Also write the readiness JSON to this path (atomically, mode 0600)
        #[arg(long, env = "CALLBACK_BRIDGE_READY_FILE", value_name = "PATH")]
        pub ready_file: Option<PathBuf>,

        /// Log format [default: json when stderr is not a terminal, else pretty]
        #[arg(long, env = "CALLBACK_BRIDGE_LOG_FORMAT", value_name = "FORMAT")]
        pub log_format: Option<LogFormat>,

        /// Log level or `target=level` list (RUST_LOG is read when this is not given) [default: info]
        #[arg(long, env = "CALLBACK_BRIDGE_LOG_LEVEL", value_name = "LEVEL")]
        pub log_level: Option<String>,

        /// Run id on every log line, sent upstream as x-paperclip-run-id (serve, relay); 1-128 of
        /// A-Z a-z 0-9 . _ : - [default: env PAPERCLIP_RUN_ID if set, else a generated UUIDv7 (logs only)]
        #[arg(long, env = "CALLBACK_BRIDGE_RUN_ID", value_name = "ID")]
        pub run_id: Option<String>,
    }
}

option_group! {
    /// The admin listener (health and metrics without the token) and whether listeners may bind a
    /// non-loopback address (`serve`, `gateway`, `relay`).
    #[derive(Debug, Clone, Default, Args, Deserialize)]
    pub struct AdminOptions {
        /// Also serve /livez, /readyz and /metrics (no token, nothing else) on this IP:PORT; must
        /// be loopback unless --allow-non-loopback [default: none]
        #[arg(long, env = "CALLBACK_BRIDGE_ADMIN_LISTEN", value_name = "ADDR")]
        pub admin_listen: Option<String>,

        /// Allow a listen or admin-listen address that is not loopback (true/false, yes/no, 1/0)
        /// [default: false]
        #[arg(long, env = "CALLBACK_BRIDGE_ALLOW_NON_LOOPBACK", num_args = 0..=1, default_missing_value = "true", value_name = "BOOL", value_parser = clap::builder::BoolishValueParser::new())]
        pub allow_non_loopback: Option<bool>,
    }
}

/// How a gateway and its relay talk (docs/reference.md §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// File queue in the sandbox, driven by one-shot commands (Paperclip `queue_v1`).
    Queue,
    /// HTTP/2 over a long-running command's stdin/stdout (Paperclip `http2_v1`).
    Stdio,
    /// Relay only: stdio when its gateway command starts, else the queue (docs/reference.md §6.5).
    Auto,
}

/// How the stdio gateway receives its bridge token and nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Handshake {
    /// From the environment (`CALLBACK_BRIDGE_TOKEN`, `CALLBACK_BRIDGE_NONCE` or the
    /// `PAPERCLIP_BRIDGE_*` aliases).
    Env,
    /// From one JSON line `{"token":…,"nonce":…}` on stdin, read before anything else.
    Stdin,
}

/// `serve` (and `check`): listener, upstream and the common options.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub listen: ListenOptions,
    #[command(flatten)]
    pub admin: AdminOptions,
    #[command(flatten)]
    pub upstream: UpstreamOptions,
    #[command(flatten)]
    pub common: CommonOptions,
}

option_group! {
    /// The gateway's transport settings.
    #[derive(Debug, Clone, Default, Args, Deserialize)]
    pub struct GatewayTransportOptions {
        /// Transport to the relay (PAPERCLIP_API_BRIDGE_MODE=queue_v1|http2_v1 is accepted too)
        #[arg(long, env = "CALLBACK_BRIDGE_TRANSPORT", value_name = "KIND")]
        pub transport: Option<TransportKind>,
        /// Queue directory (queue transport; alias PAPERCLIP_BRIDGE_QUEUE_DIR)
        #[arg(long, env = "CALLBACK_BRIDGE_QUEUE_DIR", value_name = "DIR")]
        pub queue_dir: Option<PathBuf>,
        /// Where the bridge token and nonce come from (stdio transport): `env` reads
        /// CALLBACK_BRIDGE_TOKEN/CALLBACK_BRIDGE_NONCE (or PAPERCLIP_BRIDGE_TOKEN/_NONCE), `stdin` one
        /// JSON line {"token":…,"nonce":…} read before anything else [default: env]
        #[arg(long, env = "CALLBACK_BRIDGE_HANDSHAKE", value_name = "HOW")]
        pub handshake: Option<Handshake>,
        /// How long to wait for the relay's response (alias PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS)
        /// [default: 30s queue, 35s stdio]
        #[arg(long, env = "CALLBACK_BRIDGE_RESPONSE_TIMEOUT", value_name = "DURATION")]
        pub response_timeout: Option<DurationArg>,
        /// How often the gateway looks for responses while requests wait; capped at 10ms (alias PAPERCLIP_BRIDGE_POLL_INTERVAL_MS) [default: 10ms]
        #[arg(long, env = "CALLBACK_BRIDGE_POLL_INTERVAL", value_name = "DURATION")]
        pub poll_interval: Option<DurationArg>,
        /// Request files that may wait at once; beyond -> 503 queue_full (alias PAPERCLIP_BRIDGE_MAX_QUEUE_DEPTH) [default: 64]
        #[arg(long, env = "CALLBACK_BRIDGE_MAX_QUEUE_DEPTH", value_name = "N")]
        pub max_queue_depth: Option<usize>,
    }
}

/// `gateway`: the agent-facing listener and the transport to the relay. It has no upstream
/// options: the upstream credential never enters the sandbox.
#[derive(Debug, Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub transport: GatewayTransportOptions,
    #[command(flatten)]
    pub listen: ListenOptions,
    #[command(flatten)]
    pub admin: AdminOptions,
    #[command(flatten)]
    pub common: CommonOptions,
}

option_group! {
    /// The relay's transport settings.
    #[derive(Debug, Clone, Default, Args, Deserialize)]
    pub struct RelayTransportOptions {
        /// Transport to the gateway
        #[arg(long, env = "CALLBACK_BRIDGE_TRANSPORT", value_name = "KIND")]
        pub transport: Option<TransportKind>,
        /// Queue directory inside the sandbox (queue transport)
        #[arg(long, env = "CALLBACK_BRIDGE_QUEUE_DIR", value_name = "DIR")]
        pub queue_dir: Option<PathBuf>,
        /// Path of callback-bridge inside the sandbox; used instead of sh+coreutils when given (queue)
        #[arg(long, env = "CALLBACK_BRIDGE_SANDBOX_HELPER", value_name = "PATH")]
        pub sandbox_helper: Option<String>,
        /// The gateway's response timeout (queue): each request is answered in the sandbox before
        /// the gateway gives up on it, with a margin (alias PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS)
        /// [default: the request file's responseTimeoutMs, else 30s]
        #[arg(long, env = "CALLBACK_BRIDGE_RESPONSE_TIMEOUT", value_name = "DURATION")]
        pub response_timeout: Option<DurationArg>,
        /// How the gateway gets its token and nonce (stdio): `env` puts CALLBACK_BRIDGE_TOKEN and
        /// CALLBACK_BRIDGE_NONCE in the command's environment, `stdin` writes one JSON line on its
        /// stdin first (then run the gateway with --handshake stdin) [default: env]
        #[arg(long, env = "CALLBACK_BRIDGE_HANDSHAKE", value_name = "HOW")]
        pub handshake: Option<Handshake>,
        /// With --transport auto: the script that starts the stdio gateway, given to the exec
        /// prefix after `--` as its last argument (e.g. `exec callback-bridge gateway --transport
        /// stdio --handshake stdin --listen 127.0.0.1:41200`)
        #[arg(long, env = "CALLBACK_BRIDGE_GATEWAY_SCRIPT", value_name = "SCRIPT")]
        pub gateway_script: Option<String>,
        /// More variables the commands the relay runs must not inherit, comma-separated (always
        /// removed: CALLBACK_BRIDGE_*, the configured credential and token variables,
        /// PAPERCLIP_API_KEY, PAPERCLIP_API_KEY_FILE, PAPERCLIP_BRIDGE_TOKEN/_NONCE)
        #[arg(long, env = "CALLBACK_BRIDGE_SCRUB_ENV", value_delimiter = ',', value_name = "NAMES")]
        pub scrub_env: Option<Vec<String>>,
    }
}

/// `relay`: upstream, the transport to the gateway, and the command that reaches the sandbox.
#[derive(Debug, Args)]
pub struct RelayArgs {
    #[command(flatten)]
    pub transport: RelayTransportOptions,
    #[command(flatten)]
    pub admin: AdminOptions,
    #[command(flatten)]
    pub upstream: UpstreamOptions,
    #[command(flatten)]
    pub common: CommonOptions,
    /// The exec prefix (queue, auto: e.g. `sh -c`, `docker exec -i C sh -c`) or the command that
    /// starts the gateway (stdio), after `--`
    #[arg(last = true, required = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// Hidden sandbox-side operations of the queue relay (run inside the sandbox).
#[derive(Debug, Args)]
pub struct QueueHelperArgs {
    /// The operation and its arguments
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// HTTP method, e.g. GET
    pub method: String,
    /// Request target as the agent would send it, e.g. /api/agents/me?x=1
    pub target: String,
    /// Request header `name: value` (repeatable). The bridge token is assumed valid.
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    pub headers: Vec<String>,
    /// Declared body size (sent as Content-Length)
    #[arg(long, value_name = "N")]
    pub body_bytes: Option<u64>,
    #[command(flatten)]
    pub common: CommonOptions,
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Base URL of the bridge (http only) [default: http://$CALLBACK_BRIDGE_LISTEN; without
    /// either, exit 2]
    #[arg(long, env = "CALLBACK_BRIDGE_HEALTH_URL", value_name = "URL")]
    pub url: Option<String>,
    /// Give up after this long [default: 2s]
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<DurationArg>,
}

/// A duration option: `250ms`, `10s`, `1.5s`, `1m30s`, `5m`, `1h` (humantime's syntax; a unit is
/// required); `0` or `off` means "none" where that is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationArg(pub Duration);

impl FromStr for DurationArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "off" || s == "0" {
            return Ok(DurationArg(Duration::ZERO));
        }
        if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(format!(
                "duration {s:?} needs a unit (e.g. 250ms, 1.5s, 1m30s)"
            ));
        }
        humantime::parse_duration(s)
            .map(DurationArg)
            .map_err(|e| format!("invalid duration {s:?}: {e} (e.g. 250ms, 1.5s, 1m30s)"))
    }
}

impl<'de> Deserialize<'de> for DurationArg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
