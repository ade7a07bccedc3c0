//! Forwarding: an allowed request, with the real credential injected, to the one upstream. The
//! [`Forwarder`] is the dispatcher of `serve` and of both relays.
//!
//! Promise: the forwarded path and query are the checked bytes, only allowlisted headers plus the
//! credential, run id and `host` go upstream, the bridge frames the upstream request itself, bodies
//! stream both ways under the size and idle limits, and nothing that may have reached the upstream
//! is ever retried. Every failure says whether the request may have been applied
//! ([`ForwardError`]); the pipeline turns it into the agent's answer.

pub mod pool;

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{HeaderValue, CONTENT_LENGTH, HOST};
use http::{HeaderMap, Method, Request, Response};
use http_body_util::BodyExt;

use crate::auth::UpstreamCredential;
use crate::body::{self, BodyState, BridgeBody, GuardedBody};
use crate::config::{Common, Target, Upstream};
use crate::dispatch::{Allowed, Dispatch, ForwardError, Forwarded, Hop, RequestBody};
use crate::policy::{Allow, BodyKind, HeaderRules};
use crate::telemetry::Metrics;

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
    /// Builds the forwarder of a role (its response-header allowlist and body limits come from
    /// `common`); warns once when no upstream credential is configured.
    pub fn new(target: Target, common: &Common, metrics: Arc<Metrics>) -> Forwarder {
        let limits = &common.limits;
        let Target {
            upstream,
            ca,
            credential,
            run_id,
            connect_timeout,
            timeout,
        } = target;
        if credential.is_none() {
            tracing::warn!("no upstream credential configured; requests are forwarded without one");
        }
        let pool = pool::Pool::new(&upstream, ca.as_ref(), connect_timeout);
        Forwarder {
            pool,
            upstream,
            credential,
            run_id,
            response_headers: common.policy.headers.clone(),
            max_body_bytes: limits.max_body_bytes,
            body_idle_timeout: limits.body_idle_timeout,
            upstream_timeout: timeout,
            metrics,
        }
    }

    /// Builds the upstream request head: checked target, allowlisted headers, injected ones.
    fn upstream_request(
        &self,
        method: Method,
        allow: &mut Allow,
        body: BridgeBody,
    ) -> Result<Request<BridgeBody>, ForwardError> {
        // The policy only allows canonical origin-form targets; this cannot fail for them.
        let uri = self
            .upstream
            .uri_for(&allow.target)
            .map_err(|e| ForwardError::Unsent {
                hop: Hop::Upstream,
                source: Some(Box::new(e)),
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

    /// Forwards one allowed request.
    async fn forward<B: RequestBody>(&self, req: Allowed<B>) -> Result<Forwarded, ForwardError> {
        let Allowed {
            method,
            mut allow,
            body,
            req_state,
            deadline,
            extensions,
            ..
        } = req;
        // A transport may ask for an earlier deadline (the stdio relay, for its gateway's wait).
        let upstream_timeout = extensions
            .get::<crate::transport::stdio::UpstreamDeadline>()
            .map_or(self.upstream_timeout, |d| d.0.min(self.upstream_timeout));
        let upstream_body: BridgeBody = match allow.body {
            BodyKind::None => body::empty(),
            BodyKind::Length(_) | BodyKind::Chunked => GuardedBody::new(
                body,
                allow.max_body_bytes,
                self.body_idle_timeout,
                req_state.clone(),
            )
            .boxed(),
        };
        let is_head = method == Method::HEAD;
        let req = self.upstream_request(method, &mut allow, upstream_body)?;

        let started = Instant::now();
        let sent = tokio::time::timeout(upstream_timeout, self.pool.send(req));
        let result = tokio::select! {
            r = sent => r,
            () = deadline => return Err(ForwardError::ShuttingDown { sent: true }),
        };
        let upstream_time = started.elapsed();

        let response = match result {
            Err(_elapsed) if req_state.idle_timed_out() => {
                return Err(ForwardError::body(&req_state))
            }
            Err(_elapsed) => return Err(ForwardError::TimedOut { hop: Hop::Upstream }),
            Ok(Err(_)) if req_state.failed() => return Err(ForwardError::body(&req_state)),
            Ok(Err(err)) if err.maybe_sent() => {
                return Err(ForwardError::MaybeApplied {
                    hop: Hop::Upstream,
                    source: Some(Box::new(err)),
                })
            }
            Ok(Err(err)) => {
                return Err(ForwardError::Unsent {
                    hop: Hop::Upstream,
                    source: Some(Box::new(err)),
                })
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
            return Err(ForwardError::ResponseTooLarge { hop: Hop::Upstream });
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

impl Dispatch for Forwarder {
    fn dispatch<B: RequestBody>(
        &self,
        req: Allowed<B>,
    ) -> impl std::future::Future<Output = Result<Forwarded, ForwardError>> + Send {
        self.forward(req)
    }

    fn describe(&self) -> String {
        format!("upstream {}", self.upstream.display())
    }
}
