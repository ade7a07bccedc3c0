//! Forwarding: an allowed request, with the real credential injected, to the one upstream.
//!
//! Promise: the forwarded path and query are the checked bytes, only allowlisted headers plus the
//! credential, run id and `host` go upstream, the bridge frames the upstream request itself, bodies
//! stream both ways under the size and idle limits, and nothing that may have reached the upstream
//! is ever retried. Failures map to SPEC §5: a mutation whose outcome is unknown is answered 409
//! `outcome_indeterminate`, never a retryable-looking 5xx.

pub mod pool;
pub mod respond;

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_LENGTH, HOST};
use http::{HeaderMap, Method, Request, Response};
use http_body::Body;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty};

use crate::auth::UpstreamCredential;
use crate::config::{Limits, Target, Upstream};
use crate::limits::{BodyError, BodyState, GuardedBody};
use crate::policy::{Allow, BodyKind, Deny, DenyCode, HeaderRules};
use crate::telemetry::Metrics;

/// The body type of every response the bridge sends and every request it forwards.
pub type BridgeBody = BoxBody<Bytes, BodyError>;

/// Methods whose repetition has no effect (RFC 9110 safe methods).
pub fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The answer when a forwarded request has no known outcome: 409 for mutations, `safe_code`
/// for safe methods (SPEC §5).
pub fn unknown_outcome(method: &Method, safe_code: DenyCode, safe_message: &str) -> Deny {
    if is_safe(method) {
        Deny::new(safe_code, safe_message)
    } else {
        Deny::new(
            DenyCode::OutcomeIndeterminate,
            "The upstream may or may not have applied this request; do not retry it blindly",
        )
    }
}

/// What `forward` hands back besides the response.
#[derive(Debug)]
pub struct Forwarded {
    pub response: Response<BridgeBody>,
    /// Time from forwarding to the upstream response head.
    pub upstream_time: Duration,
}

/// The upstream side: client pool, upstream URL, credential and response rules.
#[derive(Debug)]
pub struct Forwarder {
    pool: Arc<pool::Pool>,
    upstream: Upstream,
    credential: Option<UpstreamCredential>,
    run_id: Option<HeaderValue>,
    response_headers: HeaderRules,
    max_body_bytes: u64,
    body_idle_timeout: Duration,
    upstream_timeout: Duration,
    metrics: Arc<Metrics>,
}

impl Forwarder {
    /// Builds the forwarder; warns once when no upstream credential is configured.
    pub fn new(
        target: Target,
        response_headers: HeaderRules,
        limits: &Limits,
        metrics: Arc<Metrics>,
    ) -> Forwarder {
        let Target {
            upstream,
            credential,
            run_id,
        } = target;
        if credential.is_none() {
            tracing::warn!("no upstream credential configured; requests are forwarded without one");
        }
        let pool = pool::Pool::new(&upstream, limits.upstream_connect_timeout);
        Forwarder {
            pool,
            upstream,
            credential,
            run_id,
            response_headers,
            max_body_bytes: limits.max_body_bytes,
            body_idle_timeout: limits.body_idle_timeout,
            upstream_timeout: limits.upstream_timeout,
            metrics,
        }
    }

    pub fn upstream(&self) -> &Upstream {
        &self.upstream
    }

    /// Builds the upstream request head: checked target, allowlisted headers, injected ones.
    fn upstream_request(
        &self,
        method: Method,
        allow: &mut Allow,
        body: BridgeBody,
    ) -> Result<Request<BridgeBody>, Deny> {
        let uri = self.upstream.uri_for(&allow.target).map_err(|_| {
            // The policy only allows canonical origin-form targets; this cannot fail for them.
            Deny::new(DenyCode::InvalidPath, "Request target cannot be forwarded")
        })?;
        let mut req = Request::new(body);
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        let headers = req.headers_mut();
        *headers = std::mem::take(&mut allow.headers);
        if let Some(cred) = &self.credential {
            headers.insert(cred.header().clone(), cred.value().clone());
        }
        if let Some(run_id) = &self.run_id {
            headers.insert("x-paperclip-run-id", run_id.clone());
        }
        headers.insert(HOST, self.upstream.host.clone());
        if let BodyKind::Length(n) = allow.body {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
        Ok(req)
    }

    /// Forwards one allowed request. `body` is the agent's request body (only read when the
    /// request declared one). `deadline` resolves when the bridge's drain deadline passes.
    pub async fn forward<B>(
        &self,
        method: Method,
        mut allow: Allow,
        body: B,
        req_state: Arc<BodyState>,
        deadline: impl Future<Output = ()>,
    ) -> Result<Forwarded, Deny>
    where
        B: Body<Data = Bytes> + Send + Sync + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let upstream_body: BridgeBody = match allow.body {
            BodyKind::None => Empty::new().map_err(|never| match never {}).boxed(),
            BodyKind::Length(_) | BodyKind::Chunked => GuardedBody::new(
                body,
                allow.max_body_bytes,
                self.body_idle_timeout,
                req_state.clone(),
            )
            .boxed(),
        };
        let is_head = method == Method::HEAD;
        let req = self.upstream_request(method.clone(), &mut allow, upstream_body)?;

        self.metrics.forwarded.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let sent = tokio::time::timeout(self.upstream_timeout, self.pool.send(req));
        let result = tokio::select! {
            r = sent => r,
            () = deadline => {
                return Err(unknown_outcome(
                    &method,
                    DenyCode::ShuttingDown,
                    "The bridge is shutting down",
                ));
            }
        };
        let upstream_time = started.elapsed();

        let response = match result {
            Err(_elapsed) => {
                if req_state.idle_timed_out() {
                    return Err(body_failure(&req_state));
                }
                self.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
                return Err(unknown_outcome(
                    &method,
                    DenyCode::UpstreamTimeout,
                    "The upstream did not answer in time",
                ));
            }
            Ok(Err(err)) => {
                if req_state.failed() {
                    return Err(body_failure(&req_state));
                }
                self.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
                if let pool::UpstreamError::Connect(_) = err {
                    tracing::warn!(error = %err, "upstream connect failed");
                    return Err(Deny::new(
                        DenyCode::UpstreamUnavailable,
                        "The upstream is not reachable",
                    ));
                }
                tracing::warn!(error = %err, "upstream request failed");
                return Err(unknown_outcome(
                    &method,
                    DenyCode::UpstreamError,
                    "The upstream connection failed before a response",
                ));
            }
            Ok(Ok(resp)) => resp,
        };
        self.metrics.record_upstream_latency(upstream_time);

        let (parts, incoming) = response.into_parts();
        let declared = parts
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body_bytes) && !is_head {
            self.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
            return Err(unknown_outcome(
                &method,
                DenyCode::ResponseTooLarge,
                "The upstream response is larger than the bridge's limit",
            ));
        }
        let mut headers: HeaderMap = self.response_headers.filter_response(&parts.headers);
        if is_head {
            if let Some(cl) = parts.headers.get(CONTENT_LENGTH) {
                headers.insert(CONTENT_LENGTH, cl.clone());
            }
        }
        let body = GuardedBody::new(
            incoming,
            self.max_body_bytes,
            self.body_idle_timeout,
            Arc::new(BodyState::default()),
        )
        .boxed();
        let mut out = Response::new(body);
        *out.status_mut() = parts.status;
        *out.headers_mut() = headers;
        Ok(Forwarded {
            response: out,
            upstream_time,
        })
    }
}

/// The answer when the agent's own body failed (too large or stalled) while it was streamed on:
/// the request was aborted mid-body, so nothing can have acted on it.
pub fn body_failure(state: &BodyState) -> Deny {
    if state.too_large() {
        Deny::new(
            DenyCode::BodyTooLarge,
            "Request body exceeds the size limit of this route",
        )
    } else if state.idle_timed_out() {
        Deny::new(
            DenyCode::BodyTimeout,
            "Request body stalled longer than the body idle timeout",
        )
    } else {
        Deny::new(DenyCode::BadRequest, "Request body could not be read")
    }
}
