//! Where an allowed request goes: the [`Dispatch`] abstraction (the upstream forwarder, a queue
//! file, an HTTP/2 stream to the relay) and the one error type every dispatcher returns.
//!
//! Promise: a [`ForwardError`] says whether the request may have been applied, and it becomes
//! the agent's answer in exactly one place ([`ForwardError::into_deny`]): a request that may have
//! reached the next hop is never answered with a retryable-looking status unless its method is
//! safe (mutations get 409 `outcome_indeterminate`); one that cannot have been applied is.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONNECTION, CONTENT_LENGTH};
use http::{HeaderMap, Method, Response};

use crate::body::{BodyState, BoxError, BridgeBody};
use crate::limits::BoxFuture;
use crate::policy::{Allow, Deny, DenyCode, HeaderRules};
use crate::respond::{X_BRIDGE_ERROR, X_OUTCOME};

/// A request body any dispatcher accepts: hyper's HTTP/1 and HTTP/2 bodies, a peeked HTTP/2 body,
/// or bytes read from a queue file.
pub trait RequestBody:
    http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Sync + 'static
{
}

impl<B> RequestBody for B
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
}

/// An allowed request, as the pipeline hands it to a dispatcher.
pub struct Allowed<B> {
    pub method: Method,
    /// The policy's verdict: checked target, allowlisted headers, body framing and limit.
    pub allow: Allow,
    /// The agent's body (only read when the request declared one).
    pub body: B,
    /// How the agent's body ended, once it is streamed on.
    pub req_state: Arc<BodyState>,
    /// Resolves when the drain deadline passes: the dispatcher must then answer at once.
    pub deadline: BoxFuture<()>,
    /// What the transport attached to the request (e.g. the queue relay's "recovered" mark).
    pub extensions: http::Extensions,
}

/// What a dispatcher hands back besides the response.
#[derive(Debug)]
pub struct Forwarded {
    pub response: Response<BridgeBody>,
    /// Time from dispatch to the response head.
    pub upstream_time: Duration,
}

/// Where allowed requests go. `serve` and the relays forward upstream; the gateways hand the
/// request to their relay.
pub trait Dispatch: Send + Sync + 'static {
    /// Handles one allowed request.
    fn dispatch<B: RequestBody>(
        &self,
        req: Allowed<B>,
    ) -> impl Future<Output = Result<Forwarded, ForwardError>> + Send;

    /// A one-line description for logs ("upstream http://…", "queue /q").
    fn describe(&self) -> String;
}

/// The next hop a request was handed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// The configured upstream (`serve`, relays).
    Upstream,
    /// The relay on the host (gateways).
    Relay,
}

impl std::fmt::Display for Hop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Hop::Upstream => "upstream",
            Hop::Relay => "bridge relay",
        })
    }
}

/// How the agent's own request body failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFailure {
    TooLarge,
    Stalled,
    Unreadable,
}

impl BodyFailure {
    /// Reads how a guarded body ended.
    pub fn of(state: &BodyState) -> BodyFailure {
        if state.too_large() {
            BodyFailure::TooLarge
        } else if state.idle_timed_out() {
            BodyFailure::Stalled
        } else {
            BodyFailure::Unreadable
        }
    }
}

/// Why a dispatcher produced no response, and so whether the request may have been applied.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The dispatcher refused the request before sending anything (queue full, a header it cannot
    /// carry). Not applied.
    #[error("refused: {}", .0.message)]
    Refused(Deny),
    /// Nothing reached the next hop (connect failed, relay not connected, file not written, the
    /// relay never took it). Not applied: safe to retry whatever the method.
    #[error("the request did not reach the {hop}")]
    Unsent {
        hop: Hop,
        #[source]
        source: Option<BoxError>,
    },
    /// The connection failed after the request may have reached the next hop.
    #[error("the {hop} connection failed before a response")]
    MaybeApplied {
        hop: Hop,
        #[source]
        source: Option<BoxError>,
    },
    /// The next hop answered something unreadable (a malformed response file, a failed body).
    #[error("the {hop}'s response could not be read")]
    BadResponse {
        hop: Hop,
        #[source]
        source: Option<BoxError>,
    },
    /// No response head within the deadline. May have been applied.
    #[error("the {hop} did not answer in time")]
    TimedOut { hop: Hop },
    /// The response is larger than the body limit. Applied, but cannot be delivered.
    #[error("the {hop}'s response is larger than the limit")]
    ResponseTooLarge { hop: Hop },
    /// The agent's own body failed while it was streamed on: the request was aborted mid-body,
    /// so nothing can have acted on it.
    #[error("the request body failed: {0:?}")]
    Body(BodyFailure),
    /// The drain deadline passed. `sent`: the request may have reached the next hop.
    #[error("shutting down")]
    ShuttingDown { sent: bool },
    /// The next hop answered that the outcome is unknown (`x-paperclip-bridge-outcome:
    /// indeterminate`, which Paperclip's host writes with a 504). The agent gets the bridge's own
    /// 409, whatever the method.
    #[error("the {hop} reported an indeterminate outcome")]
    ReportedIndeterminate { hop: Hop },
}

/// Methods whose repetition has no effect (RFC 9110 safe methods).
pub fn is_safe(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The answer when a request has no known outcome: 409 for mutations, `safe_code` for safe
/// methods.
fn unknown_outcome(method: &Method, safe_code: DenyCode, safe_message: &str) -> Deny {
    if is_safe(method) {
        Deny::new(safe_code, safe_message)
    } else {
        Deny::new(
            DenyCode::OutcomeIndeterminate,
            "The upstream may or may not have applied this request; do not retry it blindly",
        )
    }
}

impl ForwardError {
    /// The body failure a guarded body recorded.
    pub fn body(state: &BodyState) -> ForwardError {
        ForwardError::Body(BodyFailure::of(state))
    }

    /// Whether the request was handed to the next hop and may have been applied (counted as
    /// forwarded). A body failure aborted the request mid-way: nothing can have acted on it.
    pub fn reached_next_hop(&self) -> bool {
        match self {
            ForwardError::Refused(_)
            | ForwardError::Unsent { .. }
            | ForwardError::Body(_)
            | ForwardError::ShuttingDown { sent: false } => false,
            ForwardError::MaybeApplied { .. }
            | ForwardError::BadResponse { .. }
            | ForwardError::TimedOut { .. }
            | ForwardError::ResponseTooLarge { .. }
            | ForwardError::ReportedIndeterminate { .. }
            | ForwardError::ShuttingDown { sent: true } => true,
        }
    }

    /// Whether this counts as an upstream error in the metrics.
    pub fn is_upstream_error(&self) -> bool {
        matches!(
            self,
            ForwardError::Unsent {
                hop: Hop::Upstream,
                ..
            } | ForwardError::MaybeApplied {
                hop: Hop::Upstream,
                ..
            } | ForwardError::BadResponse {
                hop: Hop::Upstream,
                ..
            } | ForwardError::TimedOut { hop: Hop::Upstream }
                | ForwardError::ResponseTooLarge { hop: Hop::Upstream }
        )
    }

    /// The agent's answer: the one place where "may it have been applied?" becomes a status.
    pub fn into_deny(self, method: &Method) -> Deny {
        match self {
            ForwardError::Refused(deny) => deny,
            ForwardError::Unsent {
                hop: Hop::Upstream, ..
            } => Deny::new(
                DenyCode::UpstreamUnavailable,
                "The upstream is not reachable",
            ),
            ForwardError::Unsent {
                hop: Hop::Relay, ..
            } => Deny::new(
                DenyCode::BridgeUnavailable,
                "The bridge relay did not receive the request; it was not sent",
            ),
            ForwardError::MaybeApplied {
                hop: Hop::Upstream, ..
            } => unknown_outcome(
                method,
                DenyCode::UpstreamError,
                "The upstream connection failed before a response",
            ),
            ForwardError::MaybeApplied {
                hop: Hop::Relay, ..
            } => unknown_outcome(
                method,
                DenyCode::BridgeUnavailable,
                "The session with the bridge relay ended before a response",
            ),
            ForwardError::BadResponse { hop, .. } => unknown_outcome(
                method,
                DenyCode::UpstreamError,
                match hop {
                    Hop::Upstream => "The upstream response failed",
                    Hop::Relay => "The relay's response could not be read",
                },
            ),
            ForwardError::TimedOut { hop: Hop::Upstream } => unknown_outcome(
                method,
                DenyCode::UpstreamTimeout,
                "The upstream did not answer in time",
            ),
            ForwardError::TimedOut { hop: Hop::Relay } => unknown_outcome(
                method,
                DenyCode::BridgeTimeout,
                "The bridge relay did not answer in time",
            ),
            ForwardError::ResponseTooLarge { hop } => unknown_outcome(
                method,
                DenyCode::ResponseTooLarge,
                match hop {
                    Hop::Upstream => "The upstream response is larger than the bridge's limit",
                    Hop::Relay => "The relay's response is larger than the bridge's limit",
                },
            ),
            ForwardError::Body(BodyFailure::TooLarge) => Deny::new(
                DenyCode::BodyTooLarge,
                "Request body exceeds the size limit of this route",
            ),
            ForwardError::Body(BodyFailure::Stalled) => Deny::new(
                DenyCode::BodyTimeout,
                "Request body stalled longer than the body idle timeout",
            ),
            ForwardError::Body(BodyFailure::Unreadable) => {
                Deny::new(DenyCode::BadRequest, "Request body could not be read")
            }
            ForwardError::ShuttingDown { sent: false } => {
                Deny::new(DenyCode::ShuttingDown, "The bridge is shutting down")
            }
            ForwardError::ShuttingDown { sent: true } => unknown_outcome(
                method,
                DenyCode::ShuttingDown,
                "The bridge is shutting down",
            ),
            ForwardError::ReportedIndeterminate { .. } => Deny::new(
                DenyCode::OutcomeIndeterminate,
                "The upstream may or may not have applied this request; do not retry it blindly",
            ),
        }
    }
}

/// A relay's answer as the agent gets it, the same for both gateways: a response marked
/// indeterminate becomes the bridge's own 409; only allowlisted response headers and the relay's
/// `x-bridge-error` pass (a HEAD keeps its declared length); a denial the relay made closes the
/// agent's connection exactly as `serve` would.
pub fn relay_answer(
    status: http::StatusCode,
    relayed: &HeaderMap,
    rules: &HeaderRules,
    is_head: bool,
) -> Result<HeaderMap, ForwardError> {
    let indeterminate = relayed.get(X_OUTCOME).is_some_and(|v| {
        std::str::from_utf8(v.as_bytes())
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("indeterminate"))
    });
    if indeterminate {
        return Err(ForwardError::ReportedIndeterminate { hop: Hop::Relay });
    }
    let mut headers = rules.filter_response(relayed);
    if let Some(code) = relayed.get(X_BRIDGE_ERROR) {
        headers.insert(X_BRIDGE_ERROR, code.clone());
    }
    if is_head {
        if let Some(length) = relayed.get(CONTENT_LENGTH) {
            headers.insert(CONTENT_LENGTH, length.clone());
        }
    }
    let closes = headers
        .get(X_BRIDGE_ERROR)
        .and_then(|v| {
            DenyCode::ALL
                .iter()
                .find(|c| c.as_str().as_bytes() == v.as_bytes())
        })
        .is_some_and(|code| code.status() == status && code.closes_connection());
    if closes {
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_that_may_have_applied_a_mutation_answer_409() {
        let post = Method::POST;
        let get = Method::GET;
        let maybe = || {
            [
                ForwardError::MaybeApplied {
                    hop: Hop::Upstream,
                    source: None,
                },
                ForwardError::MaybeApplied {
                    hop: Hop::Relay,
                    source: None,
                },
                ForwardError::TimedOut { hop: Hop::Upstream },
                ForwardError::TimedOut { hop: Hop::Relay },
                ForwardError::ResponseTooLarge { hop: Hop::Upstream },
                ForwardError::BadResponse {
                    hop: Hop::Relay,
                    source: None,
                },
                ForwardError::ShuttingDown { sent: true },
            ]
        };
        for e in maybe() {
            assert_eq!(e.into_deny(&post).code, DenyCode::OutcomeIndeterminate);
        }
        for e in maybe() {
            assert_ne!(e.into_deny(&get).code, DenyCode::OutcomeIndeterminate);
        }
        let never = [
            ForwardError::Unsent {
                hop: Hop::Upstream,
                source: None,
            },
            ForwardError::Unsent {
                hop: Hop::Relay,
                source: None,
            },
            ForwardError::Body(BodyFailure::TooLarge),
            ForwardError::Body(BodyFailure::Stalled),
            ForwardError::ShuttingDown { sent: false },
            ForwardError::Refused(Deny::new(DenyCode::QueueFull, "full")),
        ];
        for e in never {
            assert_ne!(e.into_deny(&post).code, DenyCode::OutcomeIndeterminate);
        }
    }

    #[test]
    fn statuses_match_the_failure_table() {
        let code = |e: ForwardError| e.into_deny(&Method::GET).code;
        assert_eq!(
            code(ForwardError::Unsent {
                hop: Hop::Upstream,
                source: None
            }),
            DenyCode::UpstreamUnavailable
        );
        assert_eq!(
            code(ForwardError::TimedOut { hop: Hop::Upstream }),
            DenyCode::UpstreamTimeout
        );
        assert_eq!(
            code(ForwardError::TimedOut { hop: Hop::Relay }),
            DenyCode::BridgeTimeout
        );
        assert_eq!(
            code(ForwardError::Unsent {
                hop: Hop::Relay,
                source: None
            }),
            DenyCode::BridgeUnavailable
        );
        assert_eq!(
            code(ForwardError::Body(BodyFailure::Stalled)),
            DenyCode::BodyTimeout
        );
    }
}
