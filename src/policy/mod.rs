//! The request policy: one pure function from a request head to a decision.
//!
//! Promise: nothing reaches the upstream unless the caller presented the bridge token, the method
//! is not a tunnelling/tracing one, the raw request target is canonical origin-form, a route rule
//! matches the whole path, the framing is unambiguous, the content type and declared size fit the
//! route, and only allowlisted headers are kept. No I/O happens here, so `serve`, the relay, the
//! gateway, `explain` and the fuzzers all call exactly this code. Checks run in docs/reference.md §4 order and
//! the first failure answers.
//!
//! Attacks defended: probing the policy without the token (the token is checked before anything
//! else about the request is looked at, and a 401 never says whether the token was missing or
//! wrong), reaching bridge-local endpoints through the upstream or the upstream through
//! `/__bridge/` (that prefix is never forwarded), request smuggling through conflicting framing,
//! bodies on `GET`/`HEAD`, and a checked path that differs from the forwarded one (the target is
//! checked once and forwarded as the very same string).
//!
//! Decisions where docs/reference.md §4 leaves a choice:
//! * `/__bridge` itself and everything under `/__bridge/` is bridge-local: only `GET`/`HEAD` of
//!   `/__bridge/health` (no token; any query ignored) and `/__bridge/metrics` (token) exist;
//!   anything else there, any method, is 404 `not_found` after the token check.
//! * A route's `max_body_bytes` can only lower the global limit, never raise it: the global
//!   limit also sizes the queue transport's envelopes (docs/reference.md §6.1).
//! * Header count and size (step 9) are checked last, as docs/reference.md §4 orders them; they count every
//!   header line, duplicates included, and names plus values in bytes.

pub mod headers;
#[doc(hidden)]
pub mod invariants;
pub mod routes;
pub mod target;

use std::sync::Arc;

use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{HeaderMap, Method, StatusCode};

pub use headers::{content_type_allowed, HeaderRules, HeaderRulesError};
pub use routes::{Route, RouteTable, RoutesError};
pub use target::{RequestTarget, TargetError, TargetPart};

use crate::auth::BridgeToken;

/// Largest number of request headers the bridge accepts (docs/reference.md §4 step 9), counting every
/// header line including repeated names. Agents send well under 20; the bound caps per-request
/// work and matches the stdio transport's 100 header pairs (docs/reference.md §6.2).
pub const MAX_HEADER_COUNT: usize = 100;
/// Largest total size of request header names and values, in bytes (docs/reference.md §4 step 9). Matches
/// the stdio transport's 16 KiB header list and Node's default header limit upstream.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Default largest request body: Paperclip's 10 MiB attachment limit plus 64 KiB of headroom
/// for the multipart framing around a maximum-size file (boundaries, part headers and the small
/// JSON metadata part), so that a valid upload never fails at the bridge (docs/reference.md §2).
pub const DEFAULT_MAX_BODY_BYTES: u64 = 10 * 1024 * 1024 + 64 * 1024;

/// Paths under this prefix (and the bare `/__bridge`) are answered by the bridge, never
/// forwarded (docs/reference.md §3).
pub const BRIDGE_PREFIX: &str = "/__bridge/";
/// The health endpoint: `GET`/`HEAD`, no token.
pub const HEALTH_PATH: &str = "/__bridge/health";
/// The metrics endpoint: `GET`/`HEAD`, bridge token required.
pub const METRICS_PATH: &str = "/__bridge/metrics";

/// The one 401 message: it must not reveal whether the token was missing or wrong (docs/reference.md §4.1).
pub const INVALID_TOKEN_MESSAGE: &str = "Missing or invalid bridge token";

/// Stable denial and error codes. Each knows its HTTP status and its snake_case wire name; the
/// names are public interface (docs/reference.md §4.1, §5, §6).
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
    /// (docs/reference.md §4.1: after a 400/401/405/413/431 it generated).
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

    pub fn status(&self) -> StatusCode {
        self.code.status()
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

/// Endpoints the bridge answers itself under `/__bridge/` (docs/reference.md §3).
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
    /// Largest body this route accepts: the route's limit capped at the global one. The server
    /// enforces it on chunked bodies while streaming (docs/reference.md §4 step 8).
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

impl Default for Policy {
    /// The built-in Paperclip allowlist, the docs/reference.md §4.4 header lists and the default body limit.
    fn default() -> Self {
        Policy::new(
            RouteTable::builtin(),
            HeaderRules::default(),
            DEFAULT_MAX_BODY_BYTES,
        )
    }
}

impl Policy {
    pub fn new(routes: RouteTable, headers: HeaderRules, max_body_bytes: u64) -> Policy {
        Policy {
            routes,
            headers,
            max_body_bytes,
        }
    }

    /// Decides one request (docs/reference.md §4 steps 1-9, in order; the first failure answers).
    pub fn evaluate(&self, head: &RequestHead<'_>, token: TokenCheck<'_>) -> Decision {
        match self.decide(head, token) {
            Ok(decision) => decision,
            Err(deny) => Decision::Deny(deny),
        }
    }

    fn decide(&self, head: &RequestHead<'_>, token: TokenCheck<'_>) -> Result<Decision, Deny> {
        let method = head.method;
        let read = *method == Method::GET || *method == Method::HEAD;

        // 1. Bridge-local paths. Only a prefix compare happens before the token check.
        let raw_path = head.target.split_once('?').map_or(head.target, |(p, _)| p);
        let local = raw_path == "/__bridge" || raw_path.starts_with(BRIDGE_PREFIX);
        if local && read && raw_path == HEALTH_PATH {
            return Ok(Decision::Local(LocalEndpoint::Health));
        }

        // 2. Caller token.
        check_token(head.headers, token)?;
        if local {
            if read && raw_path == METRICS_PATH {
                return Ok(Decision::Local(LocalEndpoint::Metrics));
            }
            return Err(Deny::new(DenyCode::NotFound, "No such bridge endpoint"));
        }

        // 3. Method.
        if matches!(method.as_str(), "TRACE" | "TRACK" | "CONNECT") {
            return Err(Deny::new(
                DenyCode::MethodNotAllowed,
                format!("Method {method} is never allowed"),
            ));
        }

        // 4. Request target.
        let target = RequestTarget::parse(head.target).map_err(|e| {
            Deny::new(
                DenyCode::InvalidPath,
                format!("Invalid request target: {e}"),
            )
        })?;

        // 5. Route.
        let route = self.routes.find(method, target.path).ok_or_else(|| {
            Deny::new(
                DenyCode::RouteNotAllowed,
                format!("Route not allowed: {method} {}", target.path),
            )
        })?;

        // 6. Framing. A `Connection` header may not make a header the policy reads hop-by-hop:
        // the bridge would check it, then drop it, and forward something it never checked.
        headers::refuse_nominated_checked_headers(head.headers).map_err(bad_request)?;
        let body = body_kind(head.headers)?;
        if read && body != BodyKind::None {
            return Err(bad_request(format!(
                "A {method} request cannot carry a body"
            )));
        }

        // 7. Content type.
        if body != BodyKind::None {
            check_content_type(head.headers, route)?;
        }

        // 8. Declared size.
        let max_body_bytes = route
            .max_body_bytes
            .map_or(self.max_body_bytes, |limit| limit.min(self.max_body_bytes));
        if let BodyKind::Length(n) = body {
            if n > max_body_bytes {
                return Err(Deny::new(
                    DenyCode::BodyTooLarge,
                    format!("Request body of {n} bytes exceeds this route's limit of {max_body_bytes} bytes"),
                ));
            }
        }

        // 9. Header count and size; only allowlisted headers are kept.
        check_header_size(head.headers)?;
        Ok(Decision::Allow(Allow {
            route_id: route.id.clone(),
            target: head.target.to_owned(),
            body,
            max_body_bytes,
            headers: self.headers.filter_request(head.headers),
        }))
    }
}

fn bad_request(message: impl Into<String>) -> Deny {
    Deny::new(DenyCode::BadRequest, message)
}

/// Exactly one `authorization` header that passes the constant-time check.
fn check_token(headers: &HeaderMap, token: TokenCheck<'_>) -> Result<(), Deny> {
    let TokenCheck::Require(expected) = token else {
        return Ok(());
    };
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let valid = match (values.next(), values.next()) {
        (Some(value), None) => expected.verify_authorization(value.as_bytes()),
        _ => false,
    };
    if valid {
        Ok(())
    } else {
        Err(Deny::new(DenyCode::InvalidToken, INVALID_TOKEN_MESSAGE))
    }
}

/// The body framing the headers declare, or 400 when it is ambiguous (docs/reference.md §4 step 6).
fn body_kind(headers: &HeaderMap) -> Result<BodyKind, Deny> {
    let mut lengths = headers.get_all(CONTENT_LENGTH).iter();
    let length = match (lengths.next(), lengths.next()) {
        (None, _) => None,
        (Some(value), None) => Some(
            parse_content_length(value.as_bytes())
                .ok_or_else(|| bad_request("Content-Length is not a decimal number of bytes"))?,
        ),
        (Some(_), Some(_)) => return Err(bad_request("More than one Content-Length header")),
    };
    let mut encodings = headers.get_all(TRANSFER_ENCODING).iter();
    let chunked = match (encodings.next(), encodings.next()) {
        (None, _) => false,
        (Some(value), None) if value.as_bytes().eq_ignore_ascii_case(b"chunked") => true,
        (Some(_), None) => {
            return Err(bad_request("Transfer-Encoding must be exactly \"chunked\""))
        }
        (Some(_), Some(_)) => return Err(bad_request("More than one Transfer-Encoding header")),
    };
    match (length, chunked) {
        (Some(_), true) => Err(bad_request(
            "Both Transfer-Encoding and Content-Length are present",
        )),
        (None | Some(0), false) => Ok(BodyKind::None),
        (Some(n), false) => Ok(BodyKind::Length(n)),
        (None, true) => Ok(BodyKind::Chunked),
    }
}

/// `1*DIGIT` that fits in a u64; no sign, no spaces, no list.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// A body needs exactly one content type that the route accepts (docs/reference.md §4 step 7).
fn check_content_type(headers: &HeaderMap, route: &Route) -> Result<(), Deny> {
    let mut values = headers.get_all(CONTENT_TYPE).iter();
    let accepted = match (values.next(), values.next()) {
        (Some(value), None) => {
            content_type_allowed(value.as_bytes(), route.content_types.as_deref())
        }
        _ => false,
    };
    if accepted {
        return Ok(());
    }
    let expected = match &route.content_types {
        Some(list) => list.join(" or "),
        None => "application/json or application/*+json".to_owned(),
    };
    Err(Deny::new(
        DenyCode::UnsupportedMediaType,
        format!("Missing or unsupported Content-Type; this route accepts {expected}"),
    ))
}

/// At most [`MAX_HEADER_COUNT`] header lines and [`MAX_HEADER_BYTES`] of names plus values.
fn check_header_size(headers: &HeaderMap) -> Result<(), Deny> {
    // `HeaderMap::len` counts values, so repeated names count once per line.
    if headers.len() > MAX_HEADER_COUNT {
        return Err(Deny::new(
            DenyCode::HeadersTooLarge,
            format!("More than {MAX_HEADER_COUNT} request headers"),
        ));
    }
    let bytes: usize = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum();
    if bytes > MAX_HEADER_BYTES {
        return Err(Deny::new(
            DenyCode::HeadersTooLarge,
            format!("Request headers exceed {MAX_HEADER_BYTES} bytes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};

    const TOKEN: &str = "s3cret-token";
    const AUTH: (&str, &str) = ("authorization", "Bearer s3cret-token");

    fn headers(list: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for &(name, value) in list {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    fn eval_with(policy: &Policy, method: &str, target: &str, list: &[(&str, &str)]) -> Decision {
        let token = BridgeToken::new(TOKEN.to_owned());
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let headers = headers(list);
        let head = RequestHead {
            method: &method,
            target,
            headers: &headers,
        };
        policy.evaluate(&head, TokenCheck::Require(&token))
    }

    fn eval(method: &str, target: &str, list: &[(&str, &str)]) -> Decision {
        eval_with(&Policy::default(), method, target, list)
    }

    /// The request with a valid token added.
    fn eval_auth(method: &str, target: &str, list: &[(&str, &str)]) -> Decision {
        let mut with_token = vec![AUTH];
        with_token.extend_from_slice(list);
        eval(method, target, &with_token)
    }

    #[track_caller]
    fn allow(decision: Decision) -> Allow {
        match decision {
            Decision::Allow(allow) => allow,
            other => panic!("expected Allow, got {other:?}"),
        }
    }

    #[track_caller]
    fn deny(decision: Decision) -> Deny {
        match decision {
            Decision::Deny(deny) => deny,
            other => panic!("expected Deny, got {other:?}"),
        }
    }

    #[track_caller]
    fn code(decision: Decision) -> DenyCode {
        deny(decision).code
    }

    #[test]
    fn health_needs_no_token() {
        for (method, target) in [
            ("GET", "/__bridge/health"),
            ("HEAD", "/__bridge/health"),
            ("GET", "/__bridge/health?probe=1"),
        ] {
            assert!(
                matches!(
                    eval(method, target, &[]),
                    Decision::Local(LocalEndpoint::Health)
                ),
                "{method} {target}"
            );
        }
        // A wrong token does not matter either.
        assert!(matches!(
            eval(
                "GET",
                "/__bridge/health",
                &[("authorization", "Bearer nope")]
            ),
            Decision::Local(LocalEndpoint::Health)
        ));
    }

    #[test]
    fn metrics_requires_the_token() {
        assert_eq!(
            code(eval("GET", "/__bridge/metrics", &[])),
            DenyCode::InvalidToken
        );
        assert!(matches!(
            eval_auth("GET", "/__bridge/metrics", &[]),
            Decision::Local(LocalEndpoint::Metrics)
        ));
        assert!(matches!(
            eval_auth("HEAD", "/__bridge/metrics?x=1", &[]),
            Decision::Local(LocalEndpoint::Metrics)
        ));
    }

    #[test]
    fn other_bridge_paths_are_not_found_after_the_token_check() {
        for (method, target) in [
            ("POST", "/__bridge/health"),
            ("DELETE", "/__bridge/metrics"),
            ("GET", "/__bridge/"),
            ("GET", "/__bridge"),
            ("GET", "/__bridge?x"),
            ("GET", "/__bridge/health/"),
            ("GET", "/__bridge/health#x"),
            ("GET", "/__bridge/../api/agents/me"),
            ("GET", "/__bridge/admin"),
            ("TRACE", "/__bridge/x"),
        ] {
            assert_eq!(
                code(eval(method, target, &[])),
                DenyCode::InvalidToken,
                "{method} {target}"
            );
            assert_eq!(
                code(eval_auth(method, target, &[])),
                DenyCode::NotFound,
                "{method} {target}"
            );
        }
    }

    #[test]
    fn bridge_paths_are_never_forwarded_even_with_a_route() {
        let routes = RouteTable::from_toml(
            "[[route]]\nid = \"x\"\nmethod = \"GET\"\npath = \"/__bridge/x\"\n",
        )
        .unwrap();
        let policy = Policy::new(routes, HeaderRules::default(), 1024);
        assert_eq!(
            code(eval_with(&policy, "GET", "/__bridge/x", &[AUTH])),
            DenyCode::NotFound
        );
    }

    #[test]
    fn rejects_missing_or_invalid_token_with_one_message() {
        let cases: &[&[(&str, &str)]] = &[
            &[],
            &[("authorization", "Bearer wrong")],
            &[("authorization", "bearer s3cret-token")],
            &[("authorization", "Bearer  s3cret-token")],
            &[("authorization", "Basic czNjcmV0LXRva2Vu")],
            &[("authorization", "s3cret-token")],
            &[("authorization", "")],
            &[("x-api-key", "s3cret-token")],
            &[("proxy-authorization", "Bearer s3cret-token")],
            // Two headers, even if one is right.
            &[AUTH, AUTH],
            &[AUTH, ("authorization", "Bearer wrong")],
        ];
        for list in cases {
            let d = deny(eval("GET", "/api/agents/me", list));
            assert_eq!(d.code, DenyCode::InvalidToken, "{list:?}");
            assert_eq!(d.status(), StatusCode::UNAUTHORIZED);
            assert_eq!(d.message, INVALID_TOKEN_MESSAGE);
        }
    }

    #[test]
    fn checks_the_token_before_anything_else() {
        let bad = [("authorization", "Bearer wrong")];
        for (method, target, extra) in [
            ("GET", "/api/../secrets", &[][..]),
            ("TRACE", "/api/agents/me", &[][..]),
            ("POST", "/api/companies/c1/agents", &[][..]),
            ("GET", "http://evil.example/", &[][..]),
            ("GET", "*", &[][..]),
            (
                "POST",
                "/api/issues/i1/comments",
                &[("content-type", "text/plain"), ("content-length", "5")][..],
            ),
            (
                "POST",
                "/api/issues/i1/comments",
                &[("content-length", "1"), ("content-length", "2")][..],
            ),
            (
                "POST",
                "/api/issues/i1/comments",
                &[
                    ("content-type", "application/json"),
                    ("content-length", "999999999999"),
                ][..],
            ),
        ] {
            let mut list = bad.to_vec();
            list.extend_from_slice(extra);
            assert_eq!(
                code(eval(method, target, &list)),
                DenyCode::InvalidToken,
                "{method} {target}"
            );
        }
        // Too many headers without a token is still a 401.
        let many: Vec<(String, String)> =
            (0..200).map(|i| (format!("x-h{i}"), "v".into())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        assert_eq!(
            code(eval("GET", "/api/agents/me", &many)),
            DenyCode::InvalidToken
        );
    }

    #[test]
    fn skip_token_check_skips_only_that_step() {
        let policy = Policy::default();
        let method = Method::GET;
        let map = headers(&[]);
        let head = |target| RequestHead {
            method: &method,
            target,
            headers: &map,
        };
        let a = allow(policy.evaluate(&head("/api/agents/me"), TokenCheck::Skip));
        assert_eq!(&*a.route_id, "agents.me.get");
        assert!(matches!(
            policy.evaluate(&head("/__bridge/metrics"), TokenCheck::Skip),
            Decision::Local(LocalEndpoint::Metrics)
        ));
        let d = policy.evaluate(&head("/api/./agents/me"), TokenCheck::Skip);
        assert_eq!(code(d), DenyCode::InvalidPath);
    }

    #[test]
    fn refuses_tracing_and_tunnelling_methods() {
        for method in ["TRACE", "TRACK", "CONNECT"] {
            let d = deny(eval_auth(method, "/api/agents/me", &[]));
            assert_eq!(d.code, DenyCode::MethodNotAllowed, "{method}");
            assert_eq!(d.status(), StatusCode::METHOD_NOT_ALLOWED);
            // Even before the target is looked at.
            assert_eq!(
                code(eval_auth(method, "evil.example:443", &[])),
                DenyCode::MethodNotAllowed
            );
        }
    }

    #[test]
    fn rejects_invalid_targets_with_the_reason() {
        for (target, reason) in [
            ("/api/issues/%2e%2e/comments", "'.' or '..' segment"),
            ("/api//agents/me", "empty segment"),
            ("http://127.0.0.1:3100/api/agents/me", "absolute-form"),
            ("*", "asterisk-form"),
            ("/api/agents%2fme", "encoded slash"),
            ("/api/agents/me\\", "backslash"),
            ("/api/agents/%00", "NUL"),
            ("/api/agents/m e", "space"),
            ("/api/agents/%zz", "invalid percent-encoding"),
        ] {
            let d = deny(eval_auth("GET", target, &[]));
            assert_eq!(d.code, DenyCode::InvalidPath, "{target}");
            assert!(
                d.message.starts_with("Invalid request target: "),
                "{}",
                d.message
            );
            assert!(d.message.contains(reason), "{target}: {}", d.message);
        }
    }

    #[test]
    fn denies_unlisted_routes_with_method_and_path() {
        let d = deny(eval_auth("POST", "/api/companies/c1/agents?x=1", &[]));
        assert_eq!(d.code, DenyCode::RouteNotAllowed);
        assert_eq!(d.status(), StatusCode::FORBIDDEN);
        assert_eq!(
            d.message,
            "Route not allowed: POST /api/companies/c1/agents"
        );
    }

    #[test]
    fn allows_every_builtin_pair_and_denies_the_spec_examples() {
        for &(method, _, path, id) in routes::builtin_cases::ALLOWED {
            let list: &[(&str, &str)] = if method == "GET" || method == "DELETE" {
                &[]
            } else if id == "issues.attachments.upload" {
                &[
                    ("content-type", "multipart/form-data; boundary=b"),
                    ("content-length", "100"),
                ]
            } else {
                &[
                    ("content-type", "application/json"),
                    ("content-length", "2"),
                ]
            };
            let a = allow(eval_auth(method, path, list));
            assert_eq!(&*a.route_id, id, "{method} {path}");
            assert_eq!(a.target, path);
        }
        for &(method, path) in routes::builtin_cases::DENIED {
            let d = deny(eval_auth(method, path, &[]));
            assert!(
                matches!(d.code, DenyCode::RouteNotAllowed | DenyCode::InvalidPath),
                "{method} {path}: {d:?}"
            );
        }
    }

    #[test]
    fn head_is_allowed_where_get_is() {
        let a = allow(eval_auth("HEAD", "/api/issues/i1/comments/m1", &[]));
        assert_eq!(&*a.route_id, "issues.comments.read");
        assert_eq!(
            code(eval_auth("HEAD", "/api/issues/i1/checkout", &[])),
            DenyCode::RouteNotAllowed
        );
    }

    #[test]
    fn allow_forwards_the_target_byte_identical_with_filtered_headers() {
        let target = "/api/companies/c1/issues?status=todo,in_progress&q=%E2%9C%93&x=a/../b";
        let a = allow(eval_auth(
            "GET",
            target,
            &[
                ("accept", "application/json"),
                ("cookie", "session=1"),
                ("x-api-key", "k"),
                ("proxy-authorization", "Basic x"),
                ("host", "evil.example"),
                ("x-forwarded-for", "10.0.0.1"),
                ("forwarded", "for=10.0.0.1"),
                ("x_api_key", "k"),
                ("idempotency-key", "abc"),
                ("x-paperclip-github-capability", "cap"),
            ],
        ));
        assert_eq!(a.target, target);
        assert_eq!(&*a.route_id, "companies.issues.list");
        assert_eq!(a.body, BodyKind::None);
        assert_eq!(a.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        let mut names: Vec<&str> = a.headers.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(
            names,
            ["accept", "idempotency-key", "x-paperclip-github-capability"]
        );
        assert!(a.headers.get("authorization").is_none());
    }

    #[test]
    fn refuses_ambiguous_framing() {
        let json = ("content-type", "application/json");
        let cases: &[&[(&str, &str)]] = &[
            &[json, ("content-length", "1"), ("content-length", "1")],
            &[json, ("content-length", "1"), ("content-length", "2")],
            &[json, ("content-length", "")],
            &[json, ("content-length", "+5")],
            &[json, ("content-length", "-1")],
            &[json, ("content-length", " 5")],
            &[json, ("content-length", "5, 5")],
            &[json, ("content-length", "0x10")],
            &[json, ("content-length", "1e3")],
            &[json, ("content-length", "18446744073709551616")],
            &[json, ("transfer-encoding", "gzip")],
            &[json, ("transfer-encoding", "gzip, chunked")],
            &[json, ("transfer-encoding", "chunked, chunked")],
            &[json, ("transfer-encoding", "chunked ")],
            &[json, ("transfer-encoding", "identity")],
            &[
                json,
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked"),
            ],
            &[
                json,
                ("transfer-encoding", "chunked"),
                ("content-length", "5"),
            ],
            &[
                json,
                ("transfer-encoding", "chunked"),
                ("content-length", "0"),
            ],
        ];
        for list in cases {
            let d = deny(eval_auth("POST", "/api/issues/i1/comments", list));
            assert_eq!(d.code, DenyCode::BadRequest, "{list:?}");
        }
    }

    #[test]
    fn reads_body_kind_from_framing() {
        let json = ("content-type", "application/json");
        let path = "/api/issues/i1/comments";
        for (list, expected) in [
            (vec![], BodyKind::None),
            (vec![("content-length", "0")], BodyKind::None),
            (vec![json, ("content-length", "0")], BodyKind::None),
            (vec![json, ("content-length", "17")], BodyKind::Length(17)),
            (vec![json, ("content-length", "007")], BodyKind::Length(7)),
            (
                vec![json, ("transfer-encoding", "chunked")],
                BodyKind::Chunked,
            ),
            (
                vec![json, ("transfer-encoding", "Chunked")],
                BodyKind::Chunked,
            ),
        ] {
            assert_eq!(
                allow(eval_auth("POST", path, &list)).body,
                expected,
                "{list:?}"
            );
        }
    }

    #[test]
    fn refuses_a_body_on_get_or_head() {
        let json = ("content-type", "application/json");
        for method in ["GET", "HEAD"] {
            for list in [
                vec![json, ("content-length", "2")],
                vec![json, ("transfer-encoding", "chunked")],
            ] {
                assert_eq!(
                    code(eval_auth(method, "/api/agents/me", &list)),
                    DenyCode::BadRequest,
                    "{method} {list:?}"
                );
            }
            allow(eval_auth(
                method,
                "/api/agents/me",
                &[("content-length", "0")],
            ));
        }
    }

    #[test]
    fn checks_content_type_of_bodies() {
        let comments = "/api/issues/i1/comments";
        let upload = "/api/companies/c1/issues/i1/attachments";
        let len = ("content-length", "10");
        for (path, content_type, ok) in [
            (comments, Some("application/json"), true),
            (comments, Some("application/json; charset=utf-8"), true),
            (
                comments,
                Some("application/vnd.api+json; charset=utf-8"),
                true,
            ),
            (comments, Some("APPLICATION/JSON"), true),
            (comments, Some("text/plain"), false),
            (comments, Some("application/x-www-form-urlencoded"), false),
            (comments, Some("multipart/form-data; boundary=x"), false),
            (comments, Some("application/json, text/plain"), false),
            (comments, None, false),
            (upload, Some("multipart/form-data; boundary=----x"), true),
            (upload, Some("application/json"), false),
            (upload, None, false),
        ] {
            let mut list = vec![len];
            list.extend(content_type.map(|v| ("content-type", v)));
            let d = eval_auth("POST", path, &list);
            if ok {
                allow(d);
            } else {
                let d = deny(d);
                assert_eq!(
                    d.code,
                    DenyCode::UnsupportedMediaType,
                    "{path} {content_type:?}"
                );
                assert_eq!(d.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
            }
        }
        // Two content types are refused even if both are acceptable.
        assert_eq!(
            code(eval_auth(
                "POST",
                comments,
                &[
                    len,
                    ("content-type", "application/json"),
                    ("content-type", "application/json")
                ]
            )),
            DenyCode::UnsupportedMediaType
        );
        // Chunked bodies are checked too; a request without a body needs no content type.
        assert_eq!(
            code(eval_auth(
                "POST",
                comments,
                &[("transfer-encoding", "chunked")]
            )),
            DenyCode::UnsupportedMediaType
        );
        allow(eval_auth("POST", "/api/issues/i1/checkout", &[]));
        allow(eval_auth(
            "POST",
            "/api/issues/i1/checkout",
            &[("content-type", "text/plain")],
        ));
    }

    #[test]
    fn refuses_declared_bodies_over_the_limit() {
        let json = ("content-type", "application/json");
        let at = DEFAULT_MAX_BODY_BYTES.to_string();
        let over = (DEFAULT_MAX_BODY_BYTES + 1).to_string();
        let path = "/api/issues/i1/comments";
        allow(eval_auth("POST", path, &[json, ("content-length", &at)]));
        let d = deny(eval_auth("POST", path, &[json, ("content-length", &over)]));
        assert_eq!(d.code, DenyCode::BodyTooLarge);
        assert_eq!(d.status(), StatusCode::PAYLOAD_TOO_LARGE);
        // Chunked bodies carry the limit for the server to enforce while streaming.
        let a = allow(eval_auth(
            "POST",
            path,
            &[json, ("transfer-encoding", "chunked")],
        ));
        assert_eq!(a.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
    }

    #[test]
    fn route_limit_lowers_but_never_raises_the_global_limit() {
        let routes = RouteTable::from_toml(
            r#"
            [[route]]
            id = "small"
            method = "POST"
            path = "/small"
            max_body_bytes = 10

            [[route]]
            id = "big"
            method = "POST"
            path = "/big"
            max_body_bytes = 1000000
            "#,
        )
        .unwrap();
        let policy = Policy::new(routes, HeaderRules::default(), 100);
        let json = ("content-type", "application/json");
        let post = |path, len| {
            eval_with(
                &policy,
                "POST",
                path,
                &[AUTH, json, ("content-length", len)],
            )
        };
        assert_eq!(allow(post("/small", "10")).max_body_bytes, 10);
        assert_eq!(code(post("/small", "11")), DenyCode::BodyTooLarge);
        assert_eq!(allow(post("/big", "100")).max_body_bytes, 100);
        assert_eq!(code(post("/big", "101")), DenyCode::BodyTooLarge);
    }

    #[test]
    fn refuses_too_many_headers_counting_repeats() {
        let path = "/api/agents/me";
        // AUTH plus 99 more lines is exactly the limit.
        let at: Vec<(&str, &str)> = std::iter::repeat(("accept", "a"))
            .take(MAX_HEADER_COUNT - 1)
            .collect();
        let a = allow(eval_auth("GET", path, &at));
        assert_eq!(a.headers.len(), MAX_HEADER_COUNT - 1);
        let over: Vec<(&str, &str)> = std::iter::repeat(("accept", "a"))
            .take(MAX_HEADER_COUNT)
            .collect();
        let d = deny(eval_auth("GET", path, &over));
        assert_eq!(d.code, DenyCode::HeadersTooLarge);
        assert_eq!(d.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }

    #[test]
    fn refuses_header_data_over_the_byte_limit() {
        let path = "/api/agents/me";
        let used = AUTH.0.len() + AUTH.1.len() + "x-pad".len();
        let fits = "v".repeat(MAX_HEADER_BYTES - used);
        allow(eval_auth("GET", path, &[("x-pad", &fits)]));
        let too_big = "v".repeat(MAX_HEADER_BYTES - used + 1);
        assert_eq!(
            code(eval_auth("GET", path, &[("x-pad", &too_big)])),
            DenyCode::HeadersTooLarge
        );
    }

    #[test]
    fn follows_the_spec_order_between_later_steps() {
        let comments = "/api/issues/i1/comments";
        // Method (3) before target (4).
        assert_eq!(
            code(eval_auth("TRACE", "/a/../b", &[])),
            DenyCode::MethodNotAllowed
        );
        // Target (4) before route (5).
        assert_eq!(
            code(eval_auth("POST", "/api/companies/c1/agents/..", &[])),
            DenyCode::InvalidPath
        );
        // Route (5) before framing (6).
        assert_eq!(
            code(eval_auth("POST", "/nope", &[("content-length", "x")])),
            DenyCode::RouteNotAllowed
        );
        // Framing (6) before content type (7).
        assert_eq!(
            code(eval_auth(
                "POST",
                comments,
                &[("content-length", "x"), ("content-type", "text/plain")]
            )),
            DenyCode::BadRequest
        );
        // Content type (7) before size (8).
        assert_eq!(
            code(eval_auth(
                "POST",
                comments,
                &[
                    ("content-length", "99999999999"),
                    ("content-type", "text/plain")
                ]
            )),
            DenyCode::UnsupportedMediaType
        );
        // Size (8) before header limits (9).
        let mut list: Vec<(&str, &str)> = std::iter::repeat(("x-a", "a")).take(150).collect();
        list.push(("content-type", "application/json"));
        list.push(("content-length", "99999999999"));
        assert_eq!(
            code(eval_auth("POST", comments, &list)),
            DenyCode::BodyTooLarge
        );
    }

    #[test]
    fn deny_codes_map_to_spec_statuses() {
        for (code, status, wire) in [
            (DenyCode::InvalidToken, 401, "invalid_token"),
            (DenyCode::MethodNotAllowed, 405, "method_not_allowed"),
            (DenyCode::InvalidPath, 400, "invalid_path"),
            (DenyCode::RouteNotAllowed, 403, "route_not_allowed"),
            (DenyCode::BadRequest, 400, "bad_request"),
            (
                DenyCode::UnsupportedMediaType,
                415,
                "unsupported_media_type",
            ),
            (DenyCode::BodyTooLarge, 413, "body_too_large"),
            (DenyCode::HeadersTooLarge, 431, "headers_too_large"),
            (DenyCode::NotFound, 404, "not_found"),
        ] {
            assert_eq!((code.status().as_u16(), code.as_str()), (status, wire));
        }
    }
}
