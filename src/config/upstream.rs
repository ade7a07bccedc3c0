//! The upstream URL: parsed and checked once (scheme, host, port, no userinfo, query or
//! fragment); the forwarder prepends its base path to every checked target.

use super::{invalid, ConfigError};

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
