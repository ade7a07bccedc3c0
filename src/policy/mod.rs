//! The request policy: one pure function from a request head to a decision.
//!
//! Promise: nothing reaches the upstream unless the caller presented the bridge token, the method
//! is not a tunnelling/tracing one, the raw request target is canonical origin-form, a route rule
//! matches the whole path, the framing is unambiguous, the content type and declared size fit the
//! route, and only allowlisted headers are kept. No I/O happens here, so `serve`, the relay, the
//! gateway, `explain` and the fuzzers all call exactly this code. Checks run in SPEC §4 order and
//! the first failure answers.

pub mod headers;
pub mod routes;
pub mod target;

use std::sync::Arc;

use http::{HeaderMap, Method, StatusCode};

pub use headers::HeaderRules;
pub use routes::{Route, RouteTable, RoutesError};
pub use target::{RequestTarget, TargetError};

use crate::auth::BridgeToken;

/// Largest number of request headers the bridge accepts (SPEC §4 step 9).
pub const MAX_HEADER_COUNT: usize = 100;
/// Largest total size of request header names and values, in bytes (SPEC §4 step 9).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Stable denial and error codes. Each knows its HTTP status and its snake_case wire name; the
/// names are public interface (SPEC §4.1, §5, §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DenyCode {
    InvalidToken,
    MethodNotAllowed,
    InvalidPath,
    RouteNotAllowed,
    BadRequest,
    UnsupportedMediaType,
    BodyTooLarge,
    HeadersTooLarge,
    BodyTimeout,
    RateLimited,
    Overloaded,
    NotFound,
    UpstreamUnavailable,
    UpstreamTimeout,
    UpstreamError,
    ResponseTooLarge,
    OutcomeIndeterminate,
    ShuttingDown,
    BridgeTimeout,
    BridgeUnavailable,
    QueueFull,
}

impl DenyCode {
    /// Every code, for tables and metrics.
    pub const ALL: [DenyCode; 21] = [
        DenyCode::InvalidToken,
        DenyCode::MethodNotAllowed,
        DenyCode::InvalidPath,
        DenyCode::RouteNotAllowed,
        DenyCode::BadRequest,
        DenyCode::UnsupportedMediaType,
        DenyCode::BodyTooLarge,
        DenyCode::HeadersTooLarge,
        DenyCode::BodyTimeout,
        DenyCode::RateLimited,
        DenyCode::Overloaded,
        DenyCode::NotFound,
        DenyCode::UpstreamUnavailable,
        DenyCode::UpstreamTimeout,
        DenyCode::UpstreamError,
        DenyCode::ResponseTooLarge,
        DenyCode::OutcomeIndeterminate,
        DenyCode::ShuttingDown,
        DenyCode::BridgeTimeout,
        DenyCode::BridgeUnavailable,
        DenyCode::QueueFull,
    ];

    pub fn status(self) -> StatusCode {
        match self {
            DenyCode::InvalidToken => StatusCode::UNAUTHORIZED,
            DenyCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            DenyCode::InvalidPath | DenyCode::BadRequest => StatusCode::BAD_REQUEST,
            DenyCode::RouteNotAllowed => StatusCode::FORBIDDEN,
            DenyCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            DenyCode::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            DenyCode::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            DenyCode::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            DenyCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            DenyCode::Overloaded
            | DenyCode::ShuttingDown
            | DenyCode::BridgeUnavailable
            | DenyCode::QueueFull => StatusCode::SERVICE_UNAVAILABLE,
            DenyCode::NotFound => StatusCode::NOT_FOUND,
            DenyCode::UpstreamUnavailable
            | DenyCode::UpstreamError
            | DenyCode::ResponseTooLarge => StatusCode::BAD_GATEWAY,
            DenyCode::UpstreamTimeout | DenyCode::BridgeTimeout => StatusCode::GATEWAY_TIMEOUT,
            DenyCode::OutcomeIndeterminate => StatusCode::CONFLICT,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DenyCode::InvalidToken => "invalid_token",
            DenyCode::MethodNotAllowed => "method_not_allowed",
            DenyCode::InvalidPath => "invalid_path",
            DenyCode::RouteNotAllowed => "route_not_allowed",
            DenyCode::BadRequest => "bad_request",
            DenyCode::UnsupportedMediaType => "unsupported_media_type",
            DenyCode::BodyTooLarge => "body_too_large",
            DenyCode::HeadersTooLarge => "headers_too_large",
            DenyCode::BodyTimeout => "body_timeout",
            DenyCode::RateLimited => "rate_limited",
            DenyCode::Overloaded => "overloaded",
            DenyCode::NotFound => "not_found",
            DenyCode::UpstreamUnavailable => "upstream_unavailable",
            DenyCode::UpstreamTimeout => "upstream_timeout",
            DenyCode::UpstreamError => "upstream_error",
            DenyCode::ResponseTooLarge => "response_too_large",
            DenyCode::OutcomeIndeterminate => "outcome_indeterminate",
            DenyCode::ShuttingDown => "shutting_down",
            DenyCode::BridgeTimeout => "bridge_timeout",
            DenyCode::BridgeUnavailable => "bridge_unavailable",
            DenyCode::QueueFull => "queue_full",
        }
    }

    /// Whether the bridge closes the client connection after answering with this code
    /// (SPEC §4.1: after a 400/401/405/413/431 it generated).
    pub fn closes_connection(self) -> bool {
        matches!(self.status().as_u16(), 400 | 401 | 405 | 408 | 413 | 431)
    }
}

impl std::fmt::Display for DenyCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A denial: the code (status + wire name) and a human message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deny {
    pub code: DenyCode,
    pub message: String,
}

impl Deny {
    pub fn new(code: DenyCode, message: impl Into<String>) -> Self {
        Deny {
            code,
            message: message.into(),
        }
    }
}

/// What the request declares about its body, from its framing headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// No `Content-Length` (or `Content-Length: 0`) and no `Transfer-Encoding`.
    None,
    /// `Content-Length: n` with n > 0.
    Length(u64),
    /// `Transfer-Encoding: chunked`: size unknown until read.
    Chunked,
}

/// Endpoints the bridge answers itself under `/__bridge/` (SPEC §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalEndpoint {
    Health,
    Metrics,
}

/// An allowed request: what to forward and under which limits.
#[derive(Debug, Clone)]
pub struct Allow {
    /// Id of the route rule that matched.
    pub route_id: Arc<str>,
    /// Path and query to forward: byte-identical to what was checked.
    pub target: String,
    /// Body framing as declared by the request.
    pub body: BodyKind,
    /// Largest body this route accepts (route limit or the global one).
    pub max_body_bytes: u64,
    /// The allowlisted request headers, to be forwarded (credential and host not yet set).
    pub headers: HeaderMap,
}

#[derive(Debug, Clone)]
pub enum Decision {
    Allow(Allow),
    Local(LocalEndpoint),
    Deny(Deny),
}

/// Whether the caller's bearer token is checked. The relay re-applies the policy to requests
/// read from files in the sandbox, which carry no token (the gateway checked it); everything
/// else is still checked.
#[derive(Debug, Clone, Copy)]
pub enum TokenCheck<'a> {
    Require(&'a BridgeToken),
    Skip,
}

/// The input of [`Policy::evaluate`]: a request head as received, nothing parsed yet.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    pub method: &'a Method,
    /// The raw request target as received (origin-form expected; absolute-form and `*` are
    /// denied). Path plus optional `?query`.
    pub target: &'a str,
    pub headers: &'a HeaderMap,
}

/// The compiled policy: route table, header rules and the global body limit.
#[derive(Debug, Clone)]
pub struct Policy {
    pub routes: RouteTable,
    pub headers: HeaderRules,
    pub max_body_bytes: u64,
}

// TEMPORARY STUB (replaced by the policy branch).
impl Policy {
    pub fn new(routes: RouteTable, headers: HeaderRules, max_body_bytes: u64) -> Policy {
        Policy {
            routes,
            headers,
            max_body_bytes,
        }
    }
    pub fn evaluate(&self, head: &RequestHead<'_>, token: TokenCheck<'_>) -> Decision {
        if head.target == "/__bridge/health" {
            return Decision::Local(LocalEndpoint::Health);
        }
        if let TokenCheck::Require(t) = token {
            let ok = head
                .headers
                .get(http::header::AUTHORIZATION)
                .is_some_and(|v| t.verify_authorization(v.as_bytes()));
            if !ok {
                return Decision::Deny(Deny::new(
                    DenyCode::InvalidToken,
                    "Missing or invalid bridge token",
                ));
            }
        }
        if head.target == "/__bridge/metrics" {
            return Decision::Local(LocalEndpoint::Metrics);
        }
        let body = match head
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        {
            Some(0) | None if head.headers.get(http::header::TRANSFER_ENCODING).is_none() => {
                BodyKind::None
            }
            Some(n) => BodyKind::Length(n),
            None => BodyKind::Chunked,
        };
        Decision::Allow(Allow {
            route_id: Arc::from("stub"),
            target: head.target.to_owned(),
            body,
            max_body_bytes: self.max_body_bytes,
            headers: self.headers.filter_request(head.headers),
        })
    }
}
