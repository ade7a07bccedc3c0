//! The upstream connection pool: HTTP/1.1 keep-alive connections to the one upstream.
//!
//! Promise: a request is retried on another connection only when hyper hands it back unsent
//! (the connection was found closed before a byte was written), so nothing that may have reached
//! the upstream is ever sent twice. Connections go back to the pool only after their response
//! body was read to the end; anything else closes them. One upstream means one key, so the pool
//! is a plain LIFO stack behind a mutex: no hashing, no per-request background task. An https
//! upstream is reached over rustls, verified against the compiled-in Mozilla roots (or, with
//! `upstream_ca_file`, against that file's CAs instead), HTTP/1.1 only.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

use crate::body::BridgeBody;

/// Idle pooled connections are not reused after this long (Node's HTTP server, which Paperclip
/// runs on, closes idle keep-alive sockets after 5 s; reusing one near that edge races its close).
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(4);
/// Idle connections kept: matches the default in-flight limit, so a full burst can be reused.
pub const POOL_MAX_IDLE: usize = 64;
/// Attempts on connections that turn out closed before the request was written; beyond that a
/// fresh connection is used, whose failure is final.
const MAX_STALE_RETRIES: usize = 3;

/// Most an upstream connection's read buffer grows to: response heads fit easily, and response
/// bodies stream through in chunks of at most this size (memory per connection stays flat).
const CLIENT_READ_BUFFER: usize = 64 * 1024;

/// Why the pool got no response. Every variant but [`UpstreamError::Exchange`] means nothing
/// was sent.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("cannot connect")]
    Connect(#[source] std::io::Error),
    #[cfg(feature = "tls")]
    #[error("TLS handshake timed out")]
    TlsTimeout,
    #[cfg(feature = "tls")]
    #[error("TLS handshake failed")]
    Tls(#[source] std::io::Error),
    #[error("no TLS client for this https upstream")]
    NoTls,
    #[error("HTTP/1.1 handshake failed")]
    Handshake(#[source] hyper::Error),
    #[error("the connection closed before the request was sent")]
    ClosedBeforeSend,
    #[error("the request was handed back unsent")]
    NotSent(#[source] hyper::Error),
    /// The request was (or may have been) written, then the exchange failed.
    #[error("the exchange failed")]
    Exchange(#[source] hyper::Error),
}

impl UpstreamError {
    /// Whether the request may have reached the upstream.
    pub fn maybe_sent(&self) -> bool {
        matches!(self, UpstreamError::Exchange(_))
    }
}

struct Idle {
    sender: SendRequest<BridgeBody>,
    since: Instant,
}

/// Keep-alive connections to one upstream `host:port`.
pub struct Pool {
    authority: String,
    connect_timeout: Duration,
    idle: Mutex<Vec<Idle>>,
    /// An https upstream is never spoken to in plain text, whatever else fails.
    https: bool,
    #[cfg(feature = "tls")]
    tls: Option<Tls>,
}

/// The TLS client side of an https upstream.
#[cfg(feature = "tls")]
struct Tls {
    connector: tokio_rustls::TlsConnector,
    server_name: tokio_rustls::rustls::pki_types::ServerName<'static>,
}

#[cfg(feature = "tls")]
impl Tls {
    fn for_upstream(
        upstream: &crate::config::Upstream,
        ca: Option<&crate::config::UpstreamCa>,
    ) -> Option<Tls> {
        use std::sync::Arc;
        use tokio_rustls::rustls;
        if !upstream.is_https() {
            return None;
        }
        let roots = match ca {
            Some(ca) => ca.roots.clone(),
            None => Arc::new(rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            }),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .ok()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let host = upstream
            .authority
            .host()
            .trim_matches(['[', ']'])
            .to_owned();
        let server_name = rustls::pki_types::ServerName::try_from(host).ok()?;
        Some(Tls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// `ca`: the CAs of `upstream_ca_file`, used instead of the built-in roots (https only).
    pub fn new(
        upstream: &crate::config::Upstream,
        #[allow(unused_variables)] ca: Option<&crate::config::UpstreamCa>,
        connect_timeout: Duration,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            authority: upstream.connect_address(),
            connect_timeout,
            idle: Mutex::new(Vec::new()),
            https: upstream.is_https(),
            #[cfg(feature = "tls")]
            tls: Tls::for_upstream(upstream, ca),
        })
    }

    fn checkout(&self) -> Option<SendRequest<BridgeBody>> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some(entry) = idle.pop() {
            if entry.since.elapsed() < POOL_IDLE_TIMEOUT && !entry.sender.is_closed() {
                return Some(entry.sender);
            }
        }
        None
    }

    fn checkin(&self, sender: SendRequest<BridgeBody>) {
        if sender.is_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < POOL_MAX_IDLE {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<SendRequest<BridgeBody>, UpstreamError> {
        let stream = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect(&self.authority),
        )
        .await
        .map_err(|_| UpstreamError::ConnectTimeout)?
        .map_err(UpstreamError::Connect)?;
        let _ = stream.set_nodelay(true);
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.tls {
            let stream = tokio::time::timeout(
                self.connect_timeout,
                tls.connector.connect(tls.server_name.clone(), stream),
            )
            .await
            .map_err(|_| UpstreamError::TlsTimeout)?
            .map_err(UpstreamError::Tls)?;
            return Self::handshake(stream).await;
        }
        if self.https {
            return Err(UpstreamError::NoTls);
        }
        Self::handshake(stream).await
    }

    async fn handshake<T>(io: T) -> Result<SendRequest<BridgeBody>, UpstreamError>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(CLIENT_READ_BUFFER)
            .handshake(TokioIo::new(io))
            .await
            .map_err(UpstreamError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// Sends one request; the response body hands the connection back when read to the end.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<BridgeBody>,
    ) -> Result<Response<PooledBody>, UpstreamError> {
        let mut stale = 0;
        loop {
            let (mut sender, fresh) = match (stale < MAX_STALE_RETRIES)
                .then(|| self.checkout())
                .flatten()
            {
                Some(s) => (s, false),
                None => (self.connect().await?, true),
            };
            if sender.ready().await.is_err() {
                if fresh {
                    return Err(UpstreamError::ClosedBeforeSend);
                }
                stale += 1;
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    let mut body = PooledBody {
                        inner: body,
                        lease: Some((sender, self.clone())),
                    };
                    if body.inner.is_end_stream() {
                        body.release();
                    }
                    return Ok(Response::from_parts(parts, body));
                }
                Err(mut err) => match err.take_message() {
                    // Handed back unsent: safe to try again elsewhere, whatever the method.
                    Some(unsent) if !fresh => {
                        req = unsent;
                        stale += 1;
                    }
                    Some(_) => {
                        return Err(UpstreamError::NotSent(err.into_error()));
                    }
                    None => return Err(UpstreamError::Exchange(err.into_error())),
                },
            }
        }
    }
}

/// An upstream response body that returns its connection to the pool at a clean end.
pub struct PooledBody {
    inner: Incoming,
    lease: Option<(SendRequest<BridgeBody>, Arc<Pool>)>,
}

impl PooledBody {
    fn release(&mut self) {
        if let Some((sender, pool)) = self.lease.take() {
            pool.checkin(sender);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.release(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.release(),
            Poll::Ready(Some(Err(_))) => self.lease = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
