//! The small subcommands: `check`, `explain` and `health`.
//!
//! Promise: `check` validates exactly what `serve` would load (secrets included, without printing
//! them); `explain` runs the same policy function as the server and sends nothing; `health` needs
//! no shell tools in the image, so a container health check can call the binary itself.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use crate::config::{ExplainConfig, HealthConfig, ServeConfig};
use crate::policy::{Decision, LocalEndpoint, RequestHead, TokenCheck};

/// `check`: what `serve` loaded (secrets included, without printing them), and the compiled
/// policy.
pub fn check(config: &ServeConfig) -> String {
    let mut out = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(out, "configuration ok");
    let _ = writeln!(out, "listen      {}", config.listener.addr);
    if let Some(admin) = config.common.admin {
        let _ = writeln!(
            out,
            "admin       {admin} (/livez, /readyz, /metrics; no token)"
        );
    }
    let _ = writeln!(out, "upstream    {}", config.target.upstream.display());
    match &config.target.ca {
        Some(ca) => {
            let _ = writeln!(
                out,
                "upstream ca {} ({} certificate{}; instead of the built-in roots)",
                ca.path.display(),
                ca.count,
                if ca.count == 1 { "" } else { "s" }
            );
        }
        None if config.target.upstream.is_https() => {
            let _ = writeln!(out, "upstream ca built-in roots (Mozilla)");
        }
        None => {}
    }
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
        if config.token.generated {
            "generated at start"
        } else {
            "supplied"
        }
    );
    let routes = config.common.policy.routes.routes();
    let _ = writeln!(
        out,
        "routes      {} rules, {} method+path pairs",
        routes.len(),
        config.common.policy.routes.pair_count()
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
        names(config.common.policy.headers.request_names())
    );
    let _ = writeln!(
        out,
        "response headers  {}",
        names(config.common.policy.headers.response_names())
    );
    let _ = writeln!(
        out,
        "max_body_bytes    {}",
        config.common.policy.max_body_bytes
    );
    out
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("invalid method {0:?}")]
    Method(String),
    #[error("invalid header {0:?} (expected 'name: value')")]
    Header(String),
}

/// `explain`: the policy decision for one request, as a JSON line. The bridge token is assumed
/// valid (it is a per-run secret; `explain` is about the rest of the policy).
pub fn explain(args: ExplainConfig) -> Result<serde_json::Value, ExplainError> {
    let policy = args.policy;
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

/// Why `health` failed.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("invalid url {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot resolve {authority}: {source}")]
    Resolve {
        authority: String,
        source: std::io::Error,
    },
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no answer: {0}")]
    Io(#[from] std::io::Error),
    #[error("unhealthy: {0}")]
    Unhealthy(String),
}

impl HealthError {
    /// Whether the command line was at fault (the URL), not the bridge.
    pub fn is_usage(&self) -> bool {
        matches!(self, HealthError::Url { .. })
    }
}

/// `health`: exit 0 iff `GET URL/__bridge/health` answers 200.
pub fn health(config: &HealthConfig) -> Result<(), HealthError> {
    let url = &config.url;
    let timeout = config.timeout;
    let bad = |reason: &str| HealthError::Url {
        url: url.clone(),
        reason: reason.to_owned(),
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("only http:// is supported"));
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    let port = authority.port_u16().unwrap_or(80);
    let resolve = |source| HealthError::Resolve {
        authority: authority.to_string(),
        source,
    };
    let addrs: Vec<SocketAddr> = (authority.host().trim_matches(['[', ']']), port)
        .to_socket_addrs()
        .map_err(resolve)?
        .collect();
    let addr = *addrs.first().ok_or_else(|| {
        resolve(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no address",
        ))
    })?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|source| HealthError::Connect { addr, source })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let path = format!("{}/__bridge/health", uri.path().trim_end_matches('/'));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        match stream.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    let line = String::from_utf8_lossy(&head[..n]);
    if line.starts_with("HTTP/1.1 200") || line.starts_with("HTTP/1.0 200") {
        Ok(())
    } else {
        Err(HealthError::Unhealthy(
            line.lines().next().unwrap_or("no status line").to_owned(),
        ))
    }
}
