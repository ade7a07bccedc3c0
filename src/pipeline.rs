//! The request pipeline every role runs: token → policy → rate limit → in-flight → dispatch →
//! record (access log, metrics, exit summary), in the order of the request policy.
//!
//! Promise: `serve`, both gateways and both relays handle every request through
//! [`Pipeline::handle`], so each role checks the same token and policy, enforces the same limits
//! (rate, in-flight, body size) and counts the same metrics; a dispatcher's failure becomes the
//! agent's answer in one place ([`ForwardError::into_deny`]). The relays re-apply the whole
//! policy to everything the sandbox sends. Attacks defended: a request that skips a check because
//! it arrived over another transport, and limits that hold in one role only.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::{HeaderMap, Method, Request, Response};
use tokio::sync::{mpsc, watch};

use crate::auth::BridgeToken;
use crate::body::{BodyState, BridgeBody};
use crate::config::{Common, Lifecycle, Limits};
use crate::dispatch::{Allowed, Dispatch, ForwardError, RequestBody};
use crate::lifecycle::{self, Activity, ExitReason};
use crate::limits::{InFlight, InFlightGuard, RateLimit};
use crate::policy::{Decision, Deny, DenyCode, LocalEndpoint, Policy, RequestHead, TokenCheck};
use crate::respond::{self, X_REQUEST_ID};
use crate::telemetry::{self, AccessRecord, Logged, Metrics, RequestIds};

/// Whether the role answers `/__bridge/health` and `/__bridge/metrics` itself, and so whether it
/// is the agent's hop or a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalEndpoints {
    /// The agent-facing roles (`serve`, gateways) answer them, and assign each request its id
    /// (an `x-request-id` from the agent is not used).
    Answer,
    /// The relays: the gateway answers these; one that reaches a relay is 404 `not_found`. A
    /// relay keeps the request id the gateway sent (`x-request-id`) when it is valid, and
    /// assigns a new one otherwise (docs/reference.md §3.7).
    NotFound,
}

/// What the pipeline needs besides its dispatcher.
pub struct PipelineSettings {
    pub policy: Policy,
    /// The bridge token every request must carry; `None` only for the queue relay, whose request
    /// files carry no token (the gateway checked it).
    pub token: Option<BridgeToken>,
    pub limits: Limits,
    pub local: LocalEndpoints,
}

impl PipelineSettings {
    /// The settings of a role's [`Common`] configuration.
    pub fn new(common: &Common, token: Option<BridgeToken>, local: LocalEndpoints) -> Self {
        PipelineSettings {
            policy: common.policy.clone(),
            token,
            limits: common.limits.clone(),
            local,
        }
    }
}

/// One role's request pipeline.
pub struct Pipeline<D> {
    policy: Policy,
    token: Option<BridgeToken>,
    local: LocalEndpoints,
    dispatcher: D,
    metrics: Arc<Metrics>,
    rate: RateLimit,
    in_flight: InFlight,
    /// Turns true when the drain deadline passes (see [`Pipeline::pass_deadline`]).
    deadline: watch::Sender<bool>,
    activity: Arc<Activity>,
    ids: RequestIds,
}

impl<D: Dispatch> Pipeline<D> {
    pub fn new(settings: PipelineSettings, dispatcher: D, metrics: Arc<Metrics>) -> Pipeline<D> {
        let PipelineSettings {
            policy,
            token,
            limits,
            local,
        } = settings;
        Pipeline {
            policy,
            token,
            local,
            dispatcher,
            rate: RateLimit::new(limits.rate),
            in_flight: InFlight::new(limits.max_in_flight, metrics.in_flight.clone()),
            metrics,
            deadline: watch::channel(false).0,
            activity: Arc::default(),
            ids: RequestIds::default(),
        }
    }

    pub fn dispatcher(&self) -> &D {
        &self.dispatcher
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Starts the stop-reason watchers (signals, lifeline, lifetime, idle) for this pipeline.
    pub fn watch_lifecycle(self: &Arc<Self>, lifecycle: &Lifecycle, stop: mpsc::Sender<ExitReason>)
    where
        D: Dispatch,
    {
        let me = self.clone();
        // Every stop reason passes here first: the admin listener's /readyz turns 503 as soon as
        // the role starts to stop.
        let (watched_tx, mut watched_rx) = mpsc::channel::<ExitReason>(4);
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            while let Some(reason) = watched_rx.recv().await {
                metrics.readiness.stopping();
                if stop.send(reason).await.is_err() {
                    break;
                }
            }
        });
        lifecycle::spawn_watchers(
            lifecycle,
            self.activity.clone(),
            move || me.in_flight.current() > 0,
            watched_tx,
        );
    }

    /// The drain deadline passed: every dispatch still waiting answers at once (503, or 409 for
    /// a mutation that may have been applied).
    pub fn pass_deadline(&self) {
        self.deadline.send_replace(true);
    }

    /// Whether the token in `authorization` is the bridge token (for a transport that must decide
    /// before the policy runs whether to read anything of a request).
    pub fn token_ok(&self, authorization: Option<&http::HeaderValue>) -> bool {
        match &self.token {
            Some(token) => authorization.is_some_and(|v| token.verify_authorization(v.as_bytes())),
            None => true,
        }
    }

    /// Handles one request from any transport: policy (token first), rate limit, in-flight
    /// limit, dispatch, and the record of the outcome, written when the response body ends.
    pub async fn handle<B: RequestBody>(&self, req: Inbound<B>) -> Response<Logged> {
        let mut record = self.begin(&req.method, Some(&req.headers));
        let Inbound {
            method,
            target,
            mut headers,
            extensions,
            body,
        } = req;
        if self.local == LocalEndpoints::NotFound {
            // Taken as the request id above; the policy sees the head as the agent sent it (its
            // header count and size limits included), and the id is set again when allowed.
            headers.remove(X_REQUEST_ID);
        }
        let target = target.as_str();
        let head = RequestHead {
            method: &method,
            target: &target,
            headers: &headers,
        };
        let check = match &self.token {
            Some(token) => TokenCheck::Require(token),
            None => TokenCheck::Skip,
        };
        let decision = self.policy.evaluate(&head, check);
        let mut slot = None;
        let response = match decision {
            Decision::Local(endpoint) => match (self.local, endpoint) {
                (LocalEndpoints::Answer, LocalEndpoint::Health) => {
                    record.logged = false;
                    respond::json_ok(b"{\"status\":\"ok\"}")
                }
                (LocalEndpoints::Answer, LocalEndpoint::Metrics) => {
                    respond::metrics_text(self.metrics.render())
                }
                (LocalEndpoints::NotFound, _) => deny(
                    &mut record,
                    Deny::new(
                        DenyCode::NotFound,
                        "Bridge-local paths are answered by the gateway, not carried to the relay",
                    ),
                ),
            },
            Decision::Deny(d) => deny(&mut record, d),
            Decision::Allow(mut allow) => {
                // The one id of this request, from the agent's hop to the upstream: the relay
                // or the upstream gets it as `x-request-id` (whatever the allowlist says).
                if let Ok(id) = http::HeaderValue::from_str(&record.request_id) {
                    allow.headers.insert(X_REQUEST_ID, id);
                }
                record.route = Some(allow.route_id.clone());
                record.query_keys = crate::telemetry::query_keys(&allow.target);
                if let Err(retry_after) = self.rate.check() {
                    record.code = Some(DenyCode::RateLimited);
                    respond::rate_limited(retry_after)
                } else if let Some(guard) = self.in_flight.try_enter() {
                    slot = Some(guard);
                    let req_state = Arc::new(BodyState::default());
                    record.req_state = Some(req_state.clone());
                    let allowed = Allowed {
                        method: method.clone(),
                        allow,
                        body,
                        req_state,
                        deadline: Box::pin(deadline_passed(self.deadline.subscribe())),
                        extensions,
                    };
                    let result = self.dispatcher.dispatch(allowed).await;
                    let reached = result
                        .as_ref()
                        .map_or_else(ForwardError::reached_next_hop, |_| true);
                    if reached {
                        self.metrics.forwarded.fetch_add(1, Ordering::Relaxed);
                        self.metrics.readiness.next_hop(true);
                    } else if matches!(result, Err(ForwardError::Unsent { .. })) {
                        self.metrics.readiness.next_hop(false);
                    }
                    match result {
                        Ok(forwarded) => {
                            record.upstream_time = Some(forwarded.upstream_time);
                            forwarded.response
                        }
                        Err(e) => self.failed(&mut record, &method, e),
                    }
                } else {
                    deny(
                        &mut record,
                        Deny::new(DenyCode::Overloaded, "Too many requests in flight"),
                    )
                }
            }
        };
        self.finish(response, record, slot)
    }

    /// Answers a request the transport refused before the policy could run (an unreadable queue
    /// file, an HTTP/2 stream with too many headers), counted and logged like any other.
    pub fn reject(&self, method: &Method, refusal: Deny) -> Response<Logged> {
        let mut record = self.begin(method, None);
        let response = deny(&mut record, refusal);
        self.finish(response, record, None)
    }

    fn begin(&self, method: &Method, headers: Option<&HeaderMap>) -> AccessRecord {
        self.metrics.requests.fetch_add(1, Ordering::Relaxed);
        self.activity.touch();
        AccessRecord::new(
            self.request_id(headers),
            method.clone(),
            self.metrics.clone(),
        )
    }

    /// The request's id: a new one at the agent's hop; at a relay, the gateway's when it is one
    /// valid `x-request-id` (untrusted input: anything else is replaced, and the replacement
    /// logged without the rejected bytes).
    fn request_id(&self, headers: Option<&HeaderMap>) -> String {
        if self.local == LocalEndpoints::Answer {
            return self.ids.next();
        }
        let Some(headers) = headers else {
            return self.ids.next();
        };
        let mut values = headers.get_all(X_REQUEST_ID).iter();
        match (values.next(), values.next()) {
            (Some(v), None) if telemetry::valid_request_id(v.as_bytes()) => {
                // Checked: ASCII only.
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            }
            (None, _) => self.ids.next(),
            _ => {
                let id = self.ids.next();
                tracing::warn!(
                    request_id = %id,
                    "x-request-id from the sandbox is not a valid request id; replaced"
                );
                id
            }
        }
    }

    /// A dispatcher's failure: counted, logged with its source, answered per the failure table.
    fn failed(
        &self,
        record: &mut AccessRecord,
        method: &Method,
        e: ForwardError,
    ) -> Response<BridgeBody> {
        if e.is_upstream_error() {
            self.metrics.upstream_errors.fetch_add(1, Ordering::Relaxed);
        }
        record.failed = true;
        if matches!(
            e,
            ForwardError::Unsent { .. }
                | ForwardError::MaybeApplied { .. }
                | ForwardError::BadResponse { .. }
        ) {
            tracing::warn!(
                request_id = %record.request_id,
                to = %self.dispatcher.describe(),
                error = %ErrorChain(&e),
                "forwarding failed"
            );
        }
        deny(record, e.into_deny(method))
    }

    fn finish(
        &self,
        response: Response<BridgeBody>,
        mut record: AccessRecord,
        slot: Option<InFlightGuard>,
    ) -> Response<Logged> {
        let (mut parts, inner) = response.into_parts();
        if let Ok(v) = http::HeaderValue::from_str(&record.request_id) {
            parts.headers.insert(X_REQUEST_ID, v);
        }
        record.status = parts.status.as_u16();
        self.metrics.record_outcome(
            record.route.as_ref(),
            record.status,
            record.code,
            record.failed,
        );
        Response::from_parts(parts, Logged::new(inner, record, slot))
    }
}

fn deny(record: &mut AccessRecord, deny: Deny) -> Response<BridgeBody> {
    record.code = Some(deny.code);
    respond::deny_response(&deny)
}

/// An error and its sources on one line (`a: b: c`).
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

/// A request as a transport received it: the transport-neutral head, and the body.
pub struct Inbound<B> {
    pub method: Method,
    pub target: Target,
    pub headers: HeaderMap,
    /// What the transport attaches for its dispatcher (e.g. the queue relay's "recovered" mark).
    pub extensions: http::Extensions,
    pub body: B,
}

/// The request target, exactly as the agent sent it: the policy checks these bytes and the
/// dispatcher forwards the same ones.
pub enum Target {
    /// From an HTTP request line or `:path`.
    Uri(http::Uri),
    /// From a queue file's `path` + `query`, never parsed as a URI before the policy sees it.
    Text(String),
}

impl Target {
    /// Origin-form path+query, `*`, or the absolute URI.
    fn as_str(&self) -> std::borrow::Cow<'_, str> {
        use std::borrow::Cow;
        match self {
            Target::Text(t) => Cow::Borrowed(t),
            Target::Uri(uri) if uri.scheme().is_some() || uri.authority().is_some() => {
                Cow::Owned(uri.to_string())
            }
            Target::Uri(uri) => Cow::Borrowed(
                uri.path_and_query()
                    .map(|pq| pq.as_str())
                    .unwrap_or_else(|| uri.path()),
            ),
        }
    }
}

impl<B> From<Request<B>> for Inbound<B> {
    fn from(req: Request<B>) -> Self {
        let (parts, body) = req.into_parts();
        Inbound {
            method: parts.method,
            target: Target::Uri(parts.uri),
            headers: parts.headers,
            extensions: parts.extensions,
            body,
        }
    }
}

/// Resolves when the drain deadline passes.
async fn deadline_passed(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|d| *d).await;
}
