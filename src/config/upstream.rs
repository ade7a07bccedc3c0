//! The upstream URL: parsed and checked once (scheme, host, port, no userinfo, query or
//! fragment); the forwarder prepends its base path to every checked target.

use super::{env_nonempty, invalid, ConfigError, Env};

/// The upstream a host-side role uses when no flag, `CALLBACK_BRIDGE_UPSTREAM` or file key names
/// one: where Paperclip's own server listens, as Paperclip's host derives it —
/// `PAPERCLIP_LISTEN_HOST` (else `HOST`) and `PAPERCLIP_LISTEN_PORT` (else `PORT`), a wildcard
/// host mapped to the loopback address of its family. `None` when none of the four is set; a
/// missing host is `127.0.0.1`, a missing port 3100 (docs/reference.md §2.1).
pub fn from_paperclip_listen(env: Env<'_>) -> Result<Option<String>, ConfigError> {
    let host = ["PAPERCLIP_LISTEN_HOST", "HOST"]
        .into_iter()
        .find_map(|k| env_nonempty(env, k).map(|v| (k, v)));
    let port = ["PAPERCLIP_LISTEN_PORT", "PORT"]
        .into_iter()
        .find_map(|k| env_nonempty(env, k).map(|v| (k, v)));
    if host.is_none() && port.is_none() {
        return Ok(None);
    }
    let port = match port {
        Some((key, v)) => match v.trim().parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(invalid(key, format!("{v:?} is not a port number"))),
        },
        None => 3100,
    };
    let (key, host) = host.unwrap_or(("PAPERCLIP_LISTEN_HOST", "127.0.0.1".into()));
    let host = match host.trim() {
        "0.0.0.0" => "127.0.0.1".to_owned(),
        "::" | "[::]" => "[::1]".to_owned(),
        h if h.contains(':') && !h.starts_with('[') => format!("[{h}]"),
        h => h.to_owned(),
    };
    let url = format!("http://{host}:{port}");
    match Upstream::parse(&url) {
        Ok(u) if u.base_path.is_empty() && u.authority.host().len() == host.len() => Ok(Some(url)),
        _ => Err(invalid(
            key,
            format!("{host:?} is not a host name or address"),
        )),
    }
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
        // `http::Uri` keeps a port it cannot read as a number (`:notaport`, `:99999`) as text.
        let after_host = &authority.as_str()[authority.as_str().rfind(']').unwrap_or(0)..];
        if let Some((_, port)) = after_host.rsplit_once(':') {
            if port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(invalid(
                    key,
                    format!("{raw:?} has an invalid port (1 to 65535)"),
                ));
            }
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
