//! The small subcommands: `check`, `explain` and `health`.
//!
//! Promise: `check` validates exactly what `serve` would load (secrets included, without printing
//! them); `explain` runs the same policy function as the server and sends nothing; `health` needs
//! no shell tools in the image, so a container health check can call the binary itself.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::cli::{ExplainArgs, HealthArgs, ProxyOptions};
use crate::config::{build_policy, Config, ConfigError};
use crate::policy::{Decision, LocalEndpoint, RequestHead, TokenCheck};

/// How long `health` waits by default: well under Docker's default 30 s check timeout.
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// `check`: load everything `serve` would, print the compiled policy.
pub fn check(opts: ProxyOptions) -> Result<String, ConfigError> {
    let config = Config::load(opts)?;
    let mut out = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(out, "configuration ok");
    let _ = writeln!(out, "listen      {}", config.listen);
    let _ = writeln!(out, "upstream    {}", config.target.upstream.display());
    let _ = writeln!(
        out,
        "credential  {}",
        match &config.target.credential {
            Some(c) => format!("configured (injected as {})", c.header()),
            None => "none (requests are forwarded without one)".to_owned(),
        }
    );
    let _ = writeln!(
        out,
        "bridge token {}",
        if config.token_generated {
            "generated at start"
        } else {
            "supplied"
        }
    );
    let routes = config.policy.routes.routes();
    let _ = writeln!(
        out,
        "routes      {} rules, {} method+path pairs",
        routes.len(),
        config.policy.routes.pair_count()
    );
    for route in routes {
        let methods: Vec<&str> = route.methods.iter().map(Method::as_str).collect();
        let mut extra = String::new();
        if let Some(ct) = &route.content_types {
            let _ = write!(extra, "  content_types={}", ct.join(","));
        }
        if let Some(max) = route.max_body_bytes {
            let _ = write!(extra, "  max_body_bytes={max}");
        }
        let _ = writeln!(
            out,
            "  {:<42} {:<12} {}{}",
            route.id,
            methods.join(","),
            route.path,
            extra
        );
    }
    let names = |v: &[HeaderName]| {
        v.iter()
            .map(HeaderName::as_str)
            .collect::<Vec<_>>()
            .join(",")
    };
    let _ = writeln!(
        out,
        "request headers   {}",
        names(config.policy.headers.request_names())
    );
    let _ = writeln!(
        out,
        "response headers  {}",
        names(config.policy.headers.response_names())
    );
    let _ = writeln!(out, "max_body_bytes    {}", config.policy.max_body_bytes);
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("invalid method {0:?}")]
    Method(String),
    #[error("invalid header {0:?} (expected 'name: value')")]
    Header(String),
}

/// `explain`: the policy decision for one request, as a JSON line. The bridge token is assumed
/// valid (it is a per-run secret; `explain` is about the rest of the policy).
pub fn explain(args: ExplainArgs) -> Result<serde_json::Value, ExplainError> {
    let policy = build_policy(&args.options)?;
    let method = Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| ExplainError::Method(args.method.clone()))?;
    let mut headers = HeaderMap::new();
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| ExplainError::Header(h.clone()))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| ExplainError::Header(h.clone()))?;
        let value =
            HeaderValue::from_str(value.trim()).map_err(|_| ExplainError::Header(h.clone()))?;
        headers.append(name, value);
    }
    if let Some(n) = args.body_bytes {
        headers.insert(http::header::CONTENT_LENGTH, HeaderValue::from(n));
        if !headers.contains_key(http::header::CONTENT_TYPE) && n > 0 {
            // Most agent calls send JSON; say so explicitly rather than failing on 415.
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    let head = RequestHead {
        method: &method,
        target: &args.target,
        headers: &headers,
    };
    let decision = policy.evaluate(&head, TokenCheck::Skip);
    Ok(match decision {
        Decision::Allow(a) => serde_json::json!({
            "allow": true,
            "route": &*a.route_id,
            "code": null,
            "status": null,
            "forward_target": a.target,
            "max_body_bytes": a.max_body_bytes,
            "forwarded_headers": a.headers.keys().map(HeaderName::as_str).collect::<Vec<_>>(),
        }),
        Decision::Local(endpoint) => serde_json::json!({
            "allow": true,
            "route": match endpoint {
                LocalEndpoint::Health => "__bridge.health",
                LocalEndpoint::Metrics => "__bridge.metrics",
            },
            "code": null,
            "status": 200,
            "local": true,
        }),
        Decision::Deny(d) => serde_json::json!({
            "allow": false,
            "route": null,
            "code": d.code.as_str(),
            "status": d.code.status().as_u16(),
            "message": d.message,
        }),
    })
}

/// `health`: exit 0 iff `GET URL/__bridge/health` answers 200.
pub fn health(args: HealthArgs) -> Result<(), String> {
    let url = match args.url {
        Some(u) => u,
        None => match std::env::var("CALLBACK_BRIDGE_LISTEN") {
            Ok(listen) if !listen.is_empty() => format!("http://{listen}"),
            _ => return Err("no --url given and CALLBACK_BRIDGE_LISTEN is not set".into()),
        },
    };
    let timeout = args.timeout.map_or(DEFAULT_HEALTH_TIMEOUT, |d| d.0);
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("invalid url {url:?}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url:?}: only http:// is supported"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url:?} has no host"))?;
    let port = authority.port_u16().unwrap_or(80);
    let addrs: Vec<SocketAddr> = (authority.host().trim_matches(['[', ']']), port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {authority}: {e}"))?
        .collect();
    let addr = addrs
        .first()
        .ok_or_else(|| format!("cannot resolve {authority}"))?;
    let mut stream = TcpStream::connect_timeout(addr, timeout)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(|e| e.to_string())?;
    let path = format!("{}/__bridge/health", uri.path().trim_end_matches('/'));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("cannot send: {e}"))?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match stream.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) => return Err(format!("no answer: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&head[..n]);
    if line.starts_with("HTTP/1.1 200") || line.starts_with("HTTP/1.0 200") {
        Ok(())
    } else {
        Err(format!(
            "unhealthy: {}",
            line.lines().next().unwrap_or("no status line")
        ))
    }
}
