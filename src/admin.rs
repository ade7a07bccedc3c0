//! The optional admin listener (`admin_listen`): liveness, readiness and metrics for a probe or a
//! scraper that does not hold the bridge token.
//!
//! Promise: it answers `GET`/`HEAD` of `/livez`, `/readyz`, `/metrics` and the compatible
//! `/__bridge/health` and `/__bridge/metrics`, nothing else (404 `not_found`, or 405 for another
//! method on one of these paths); it never reads a request body, forwards nothing, checks no token
//! and so reveals nothing but counters; its requests are neither counted nor access-logged. It is
//! bound before the role's readiness line, so a bind failure stops the role at start.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::body::{full, BridgeBody};
use crate::policy::{Deny, DenyCode};
use crate::respond;
use crate::server::ServeError;
use crate::telemetry::Metrics;

/// Connections the admin listener serves at once; more wait in the kernel's queue.
const MAX_ADMIN_CONNECTIONS: usize = 16;
/// Time a client has to send its request head.
const ADMIN_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound admin listener, not yet serving.
pub struct Admin {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Admin {
    /// Binds `addr` (already checked: loopback unless allowed), if configured.
    pub async fn bind(addr: Option<SocketAddr>) -> Result<Option<Admin>, ServeError> {
        let Some(addr) = addr else { return Ok(None) };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ServeError::Bind { addr, source })?;
        Ok(Some(Admin { listener, addr }))
    }

    /// `http://IP:PORT`, for the readiness line.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Serves until the runtime ends.
    pub fn spawn(self, metrics: Arc<Metrics>) {
        tracing::info!(admin = %self.addr, "admin listener ready");
        tokio::spawn(serve(self.listener, metrics));
    }
}

/// [`Admin::bind`] and [`Admin::spawn`] in one step; returns the URL for the readiness line.
pub async fn start(
    addr: Option<SocketAddr>,
    metrics: &Arc<Metrics>,
) -> Result<Option<String>, ServeError> {
    Ok(Admin::bind(addr).await?.map(|admin| {
        let url = admin.url();
        admin.spawn(metrics.clone());
        url
    }))
}

async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(ADMIN_HEADER_READ_TIMEOUT)
        .keep_alive(true);
    let http = Arc::new(http);
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        let http = http.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let answer = answer(&req, &metrics);
                async move { Ok::<_, Infallible>(answer) }
            });
            let _ = http.serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

/// The answer to one admin request (its body, if any, is never read).
fn answer<B>(req: &Request<B>, metrics: &Metrics) -> Response<BridgeBody> {
    let path = req.uri().path();
    let known = matches!(
        path,
        "/livez" | "/readyz" | "/metrics" | "/__bridge/health" | "/__bridge/metrics"
    );
    if !known {
        return respond::deny_response(&Deny::new(
            DenyCode::NotFound,
            "The admin listener serves only /livez, /readyz and /metrics",
        ));
    }
    if !matches!(*req.method(), Method::GET | Method::HEAD) {
        return respond::deny_response(&Deny::new(
            DenyCode::MethodNotAllowed,
            "The admin listener answers only GET and HEAD",
        ));
    }
    match path {
        "/livez" | "/__bridge/health" => respond::json_ok(b"{\"status\":\"ok\"}"),
        "/readyz" => match metrics.readiness.check() {
            Ok(()) => respond::json_ok(b"{\"status\":\"ready\"}"),
            Err(reason) => {
                let body = serde_json::json!({"status": "not_ready", "reason": reason});
                let mut resp = Response::new(full(body.to_string()));
                *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                resp
            }
        },
        _ => respond::metrics_text(metrics.render()),
    }
}
