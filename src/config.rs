//! Configuration: raw options (file, env, flags) -> one validated `Config`, secrets loaded.
//!
//! Promise: after `Config::load` nothing downstream reads env vars or files again. Bad values exit
//! 2 with a one-line reason; a listen address that is not loopback is refused unless explicitly
//! allowed; secrets come only from env vars or files and are held in redacting types.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

use crate::auth::{BridgeToken, UpstreamCredential};
use crate::cli::{Lifeline, LogFormat, ProxyOptions};
use crate::policy::{HeaderRules, Policy, RouteTable};

/// Default listen address: loopback, ephemeral port (the spawner reads it from the ready line).
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
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
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// A duration option: `250ms`, `10s`, `5m`, `1h`; `0` or `off` means "none" where that is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationArg(pub Duration);

impl FromStr for DurationArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "off" || s == "0" {
            return Ok(DurationArg(Duration::ZERO));
        }
        let split = s
            .find(|c: char| !c.is_ascii_digit())
            .ok_or_else(|| format!("duration {s:?} needs a unit (ms, s, m, h)"))?;
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("invalid duration {s:?} (expected e.g. 250ms, 10s, 5m)"))?;
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            _ => {
                return Err(format!(
                    "invalid duration unit in {s:?} (use ms, s, m or h)"
                ))
            }
        };
        Ok(DurationArg(d))
    }
}

impl<'de> Deserialize<'de> for DurationArg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl ProxyOptions {
    /// Fills every option not given here from `lower` (flag/env over file).
    pub fn or(self, lower: ProxyOptions) -> ProxyOptions {
        macro_rules! pick {
            ($($f:ident),* $(,)?) => { ProxyOptions { $($f: self.$f.or(lower.$f)),* } };
        }
        pick!(
            config,
            listen,
            allow_non_loopback,
            upstream,
            upstream_token_env,
            upstream_token_file,
            upstream_auth_header,
            upstream_auth_scheme,
            run_id,
            token_env,
            token_file,
            routes,
            request_headers,
            response_headers,
            max_body_bytes,
            max_in_flight,
            max_connections,
            rate_limit_per_second,
            rate_limit_burst,
            header_read_timeout,
            body_idle_timeout,
            upstream_connect_timeout,
            upstream_timeout,
            drain_timeout,
            lifeline,
            max_lifetime,
            idle_exit,
            ready_file,
            log_format,
            log_level,
        )
    }

    /// Reads the TOML file named by `--config` (if any) and merges it under the flags/env.
    pub fn with_file(self) -> Result<ProxyOptions, ConfigError> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::ReadFile {
            path: path.clone(),
            source,
        })?;
        let file: ProxyOptions = toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
            path: path.clone(),
            message: one_line(&e.to_string()),
        })?;
        Ok(self.or(file))
    }
}

/// Collapses a multi-line library error (toml prints a snippet) into one line.
fn one_line(s: &str) -> String {
    let lines: Vec<&str> = s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('|') && !l.chars().all(|c| c == '^'))
        .collect();
    lines.join(" ")
}

/// The upstream origin and base path.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub scheme: http::uri::Scheme,
    pub authority: http::uri::Authority,
    /// Base path without a trailing slash ("" for the root), prepended to every forwarded path.
    pub base_path: String,
    /// The `host` header value sent upstream.
    pub host: http::HeaderValue,
}

impl Upstream {
    pub fn parse(raw: &str) -> Result<Upstream, ConfigError> {
        let key = "upstream";
        if raw.contains('#') {
            return Err(invalid(key, "must not contain a fragment"));
        }
        if raw.contains('?') {
            return Err(invalid(key, "must not contain a query"));
        }
        let uri: http::Uri = raw
            .parse()
            .map_err(|e| invalid(key, format!("{raw:?} is not a URL: {e}")))?;
        let scheme = uri
            .scheme()
            .cloned()
            .ok_or_else(|| invalid(key, format!("{raw:?} has no scheme (use http://)")))?;
        if scheme == http::uri::Scheme::HTTPS && !cfg!(feature = "tls") {
            return Err(invalid(
                key,
                "https upstreams need the `tls` feature, which this build was compiled without",
            ));
        }
        if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
            return Err(invalid(
                key,
                format!("scheme {scheme} is not http or https"),
            ));
        }
        let authority = uri
            .authority()
            .cloned()
            .ok_or_else(|| invalid(key, format!("{raw:?} has no host")))?;
        if authority.as_str().contains('@') {
            return Err(invalid(key, "must not contain userinfo"));
        }
        if authority.host().is_empty() {
            return Err(invalid(key, "has an empty host"));
        }
        #[cfg(feature = "tls")]
        if scheme == http::uri::Scheme::HTTPS {
            let host = authority.host().trim_matches(['[', ']']).to_owned();
            if tokio_rustls::rustls::pki_types::ServerName::try_from(host).is_err() {
                return Err(invalid(key, "host is not a valid TLS server name"));
            }
        }
        let base_path = uri.path().trim_end_matches('/').to_owned();
        let host = http::HeaderValue::from_str(authority.as_str())
            .map_err(|_| invalid(key, "host is not a valid header value"))?;
        Ok(Upstream {
            scheme,
            authority,
            base_path,
            host,
        })
    }

    /// The origin-form URI sent upstream for a checked target (path + optional query):
    /// the base path, then the target's bytes unchanged.
    pub fn uri_for(&self, target: &str) -> Result<http::Uri, http::Error> {
        if self.base_path.is_empty() {
            return Ok(http::Uri::try_from(target)?);
        }
        let mut pq = String::with_capacity(self.base_path.len() + target.len());
        pq.push_str(&self.base_path);
        pq.push_str(target);
        Ok(http::Uri::try_from(pq)?)
    }

    pub fn is_https(&self) -> bool {
        self.scheme == http::uri::Scheme::HTTPS
    }

    /// `host:port`, with the scheme's default port when none is given.
    pub fn connect_address(&self) -> String {
        let port = self
            .authority
            .port_u16()
            .unwrap_or(if self.is_https() { 443 } else { 80 });
        format!("{}:{port}", self.authority.host())
    }

    pub fn display(&self) -> String {
        format!("{}://{}{}", self.scheme, self.authority, self.base_path)
    }
}

/// Limits and timeouts, all validated.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: u64,
    pub max_in_flight: usize,
    pub max_connections: usize,
    /// `(per_second, burst)`; `None` when disabled.
    pub rate: Option<(u32, u32)>,
    pub header_read_timeout: Duration,
    pub body_idle_timeout: Duration,
    pub upstream_connect_timeout: Duration,
    pub upstream_timeout: Duration,
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
    pub level: String,
}

/// Where allowed requests go and what is injected into them.
#[derive(Debug)]
pub struct Target {
    pub upstream: Upstream,
    /// `None` when no credential is configured (forwarded without one, warned once).
    pub credential: Option<UpstreamCredential>,
    pub run_id: Option<http::HeaderValue>,
}

/// The validated configuration of `serve` (and of the relay's forwarding side).
#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub target: Target,
    pub token: BridgeToken,
    /// Whether the bridge generated the token (then it is printed on the ready line).
    pub token_generated: bool,
    pub policy: Policy,
    pub limits: Limits,
    pub lifecycle: Lifecycle,
    pub log: LogConfig,
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

/// Reads a secret from a file (preferred when configured) or an env var; empty counts as absent.
fn load_secret(
    what: &'static str,
    file: Option<&Path>,
    env_name: &str,
) -> Result<Option<String>, ConfigError> {
    let value = match file {
        Some(path) => Some(read_secret_file(what, path)?),
        None => std::env::var(env_name).ok(),
    };
    Ok(value.filter(|v| !v.is_empty()))
}

fn parse_listen(raw: &str, allow_non_loopback: bool) -> Result<SocketAddr, ConfigError> {
    let key = "listen";
    let addr = match raw.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => match raw.rsplit_once(':') {
            Some(("localhost", port)) => {
                let port: u16 = port
                    .parse()
                    .map_err(|_| invalid(key, format!("{raw:?} has an invalid port")))?;
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
            }
            _ => {
                return Err(invalid(
                    key,
                    format!("{raw:?} is not an IP:PORT address (e.g. 127.0.0.1:0)"),
                ))
            }
        },
    };
    if !addr.ip().is_loopback() && !allow_non_loopback {
        return Err(invalid(
            key,
            format!("{addr} is not a loopback address; set allow_non_loopback = true to permit it"),
        ));
    }
    Ok(addr)
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
pub fn build_policy(opts: &ProxyOptions) -> Result<Policy, ConfigError> {
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

impl Config {
    /// Validates merged options and loads secrets. One fallible step; nothing is read later.
    pub fn load(opts: ProxyOptions) -> Result<Config, ConfigError> {
        let listen = parse_listen(
            opts.listen.as_deref().unwrap_or("127.0.0.1:0"),
            opts.allow_non_loopback.unwrap_or(false),
        )?;
        let upstream = Upstream::parse(opts.upstream.as_deref().unwrap_or(DEFAULT_UPSTREAM))?;

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

        let run_id = opts
            .run_id
            .clone()
            .or_else(|| std::env::var("PAPERCLIP_RUN_ID").ok())
            .filter(|s| !s.is_empty())
            .map(|s| {
                http::HeaderValue::from_str(&s)
                    .map_err(|_| invalid("run_id", "is not a valid header value"))
            })
            .transpose()?;

        let token_env = opts.token_env.as_deref().unwrap_or(DEFAULT_TOKEN_ENV);
        let (token, token_generated) =
            match load_secret("bridge token", opts.token_file.as_deref(), token_env)? {
                Some(t) => (BridgeToken::new(t), false),
                None => (
                    BridgeToken::generate()
                        .map_err(|e| invalid("token", format!("cannot generate: {e}")))?,
                    true,
                ),
            };

        let policy = build_policy(&opts)?;
        let rate_per_second = opts
            .rate_limit_per_second
            .unwrap_or(DEFAULT_RATE_PER_SECOND);
        let rate_burst = opts.rate_limit_burst.unwrap_or(DEFAULT_RATE_BURST);
        let rate = (rate_per_second > 0 && rate_burst > 0).then_some((rate_per_second, rate_burst));
        let limits = Limits {
            max_body_bytes: policy.max_body_bytes,
            max_in_flight: opts.max_in_flight.unwrap_or(DEFAULT_MAX_IN_FLIGHT),
            max_connections: opts.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS),
            rate,
            header_read_timeout: positive(
                "header_read_timeout",
                duration_or(opts.header_read_timeout, DEFAULT_HEADER_READ_TIMEOUT),
            )?,
            body_idle_timeout: positive(
                "body_idle_timeout",
                duration_or(opts.body_idle_timeout, DEFAULT_BODY_IDLE_TIMEOUT),
            )?,
            upstream_connect_timeout: positive(
                "upstream_connect_timeout",
                duration_or(
                    opts.upstream_connect_timeout,
                    DEFAULT_UPSTREAM_CONNECT_TIMEOUT,
                ),
            )?,
            upstream_timeout: positive(
                "upstream_timeout",
                duration_or(opts.upstream_timeout, DEFAULT_UPSTREAM_TIMEOUT),
            )?,
            drain_timeout: duration_or(opts.drain_timeout, DEFAULT_DRAIN_TIMEOUT),
        };
        if limits.max_in_flight == 0 {
            return Err(invalid("max_in_flight", "must be greater than zero"));
        }
        if limits.max_connections == 0 {
            return Err(invalid("max_connections", "must be greater than zero"));
        }
        let lifecycle = Lifecycle {
            lifeline: opts.lifeline.unwrap_or(Lifeline::None),
            max_lifetime: optional_duration(opts.max_lifetime),
            idle_exit: optional_duration(opts.idle_exit),
            ready_file: opts.ready_file.clone(),
        };
        Ok(Config {
            listen,
            target: Target {
                upstream,
                credential,
                run_id,
            },
            token,
            token_generated,
            policy,
            limits,
            lifecycle,
            log: log_config(&opts),
        })
    }
}

/// Log settings alone (so logging can start before the rest is validated).
pub fn log_config(opts: &ProxyOptions) -> LogConfig {
    use std::io::IsTerminal;
    LogConfig {
        format: opts
            .log_format
            .unwrap_or(if std::io::stderr().is_terminal() {
                LogFormat::Pretty
            } else {
                LogFormat::Json
            }),
        level: opts.log_level.clone().unwrap_or_else(|| "info".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!("10".parse::<DurationArg>().is_err());
        assert!("10x".parse::<DurationArg>().is_err());
        assert!("s".parse::<DurationArg>().is_err());
    }

    #[test]
    fn refuses_non_loopback_listen_unless_allowed() {
        assert!(parse_listen("0.0.0.0:0", false).is_err());
        assert!(parse_listen("0.0.0.0:0", true).is_ok());
        assert!(parse_listen("127.0.0.1:0", false).is_ok());
        assert!(parse_listen("[::1]:8080", false).is_ok());
        assert!(parse_listen("localhost:9", false).is_ok());
        assert!(parse_listen("nonsense", false).is_err());
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
        #[cfg(feature = "tls")]
        assert!(Upstream::parse("https://paperclip.example").is_ok());
        for bad in [
            "ftp://x",
            "http://u:p@h/",
            "http://h/?q=1",
            "http://h/#f",
            "127.0.0.1:3100",
            "not a url",
        ] {
            assert!(Upstream::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn flags_beat_file_values() {
        let flags = ProxyOptions {
            max_body_bytes: Some(1),
            ..Default::default()
        };
        let file = ProxyOptions {
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
        let text = include_str!("../config/bridge.toml");
        let file: ProxyOptions = toml::from_str(text).expect("config/bridge.toml parses");
        assert_eq!(file.listen.as_deref(), Some("127.0.0.1:0"));
        assert_eq!(file.upstream.as_deref(), Some(DEFAULT_UPSTREAM));
        assert_eq!(file.max_body_bytes, Some(DEFAULT_MAX_BODY_BYTES));
        assert_eq!(file.max_in_flight, Some(DEFAULT_MAX_IN_FLIGHT));
        assert_eq!(file.max_connections, Some(DEFAULT_MAX_CONNECTIONS));
        assert_eq!(file.rate_limit_per_second, Some(DEFAULT_RATE_PER_SECOND));
        assert_eq!(file.rate_limit_burst, Some(DEFAULT_RATE_BURST));
        assert_eq!(
            file.header_read_timeout.map(|d| d.0),
            Some(DEFAULT_HEADER_READ_TIMEOUT)
        );
        assert_eq!(
            file.body_idle_timeout.map(|d| d.0),
            Some(DEFAULT_BODY_IDLE_TIMEOUT)
        );
        assert_eq!(
            file.upstream_timeout.map(|d| d.0),
            Some(DEFAULT_UPSTREAM_TIMEOUT)
        );
        assert_eq!(file.drain_timeout.map(|d| d.0), Some(DEFAULT_DRAIN_TIMEOUT));
        let defaults = HeaderRules::default();
        let names = |v: &[http::HeaderName]| -> Vec<String> {
            v.iter().map(|n| n.as_str().to_owned()).collect()
        };
        assert_eq!(file.request_headers, Some(names(defaults.request_names())));
        assert_eq!(
            file.response_headers,
            Some(names(defaults.response_names()))
        );
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let err = toml::from_str::<ProxyOptions>("listn = \"127.0.0.1:0\"").unwrap_err();
        assert!(err.to_string().contains("listn"), "{err}");
    }
}
