//! The policy's security invariants as executable checks, shared by the property tests
//! (`tests/policy_props.rs`) and the fuzz targets (`fuzz/fuzz_targets/`). Not part of the
//! product's API (hidden from the docs); pure, no I/O.
//!
//! Promise: each check restates a docs/reference.md §4 guarantee *independently* of the code under test — a
//! naive reference reading of the target rules, a naive template matcher, an explicit list of
//! forbidden headers — so that the fuzzers compare two implementations rather than one with
//! itself. A check returns a [`Violation`] naming the broken rule and the input, never panics.
//!
//! What is checked:
//! * [`check_target`]: the parser accepts exactly what the reference rules accept; anything
//!   accepted is canonical origin-form (no `//`, no dot segment after one *or two* rounds of
//!   percent-decoding, no encoded `/`, `\` or NUL, well-formed escapes, length limits) and
//!   re-serialises to the identical bytes.
//! * [`check_decision`]: the token check comes first (without the right token only 401, except
//!   `GET`/`HEAD /__bridge/health`); an `Allow` forwards the checked target byte-for-byte, names
//!   a route that matches it (by an independent matcher) and allows the method, declares
//!   unambiguous framing within the route's limit, and forwards only allowlisted headers — never
//!   a credential, host, forwarding, framing or hop-by-hop one, never one with `_`, never a value
//!   the caller did not send.
//! * [`PolicyInput`]: one structured request (method, target, token, headers, body framing) that
//!   the `policy` fuzz target derives with `arbitrary` (feature `fuzzing`) and the property tests
//!   generate with proptest; [`check_policy_input`] evaluates it and runs [`check_decision`].

use std::fmt;
use std::sync::LazyLock;

use http::header::{AUTHORIZATION, CONNECTION, CONTENT_LENGTH, CONTENT_TYPE, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::target::{MAX_PATH_BYTES, MAX_QUERY_BYTES};
use super::{
    BodyKind, Decision, DenyCode, HeaderRules, LocalEndpoint, Policy, RequestHead, RequestTarget,
    RouteTable, TokenCheck, HEALTH_PATH, MAX_HEADER_BYTES, MAX_HEADER_COUNT, METRICS_PATH,
};
use crate::auth::BridgeToken;

/// A broken invariant: which rule, for which input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation(pub String);

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Violation {}

/// `Err(Violation)` unless `cond`, with a lazily built message.
fn ensure(cond: bool, message: impl FnOnce() -> String) -> Result<(), Violation> {
    if cond {
        Ok(())
    } else {
        Err(Violation(message()))
    }
}

// ---------------------------------------------------------------------------------------------
// Request targets

fn hex(b: u8) -> Option<u8> {
    char::from(b).to_digit(16).map(|d| d as u8)
}

/// Decodes every well-formed `%XX` escape and leaves anything else as it is (what a lenient
/// upstream does). Written independently of `target.rs`.
pub fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// Whether a decoded segment is `.` or `..`, also when followed by a `;` path parameter.
fn is_dot(decoded_segment: &[u8]) -> bool {
    let before_param = decoded_segment
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default();
    before_param == b"." || before_param == b".."
}

/// RFC 3986 `pchar` without `%`: unreserved, sub-delims, `:` and `@`.
fn is_pchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b)
}

/// The target rules of docs/reference.md §4 step 4 and of `target.rs`'s documented decisions, restated
/// naively (several passes, allocations): `Ok` when the target must be accepted, else the rule
/// it breaks.
pub fn reference_target_verdict(raw: &str) -> Result<(), &'static str> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err("not origin-form");
    }
    let (path, query) = match raw.split_once('?') {
        Some((p, q)) => (p.as_bytes(), Some(q.as_bytes())),
        None => (bytes, None),
    };
    if path.len() > MAX_PATH_BYTES {
        return Err("path too long");
    }
    if query.is_some_and(|q| q.len() > MAX_QUERY_BYTES) {
        return Err("query too long");
    }
    // Byte classes and escapes.
    let mut i = 0;
    while i < path.len() {
        match path[i] {
            b'/' => i += 1,
            b'%' => {
                let ok =
                    i + 2 < path.len() && hex(path[i + 1]).is_some() && hex(path[i + 2]).is_some();
                if !ok {
                    return Err("malformed escape");
                }
                i += 3;
            }
            b if is_pchar(b) => i += 1,
            _ => return Err("byte outside pchar"),
        }
    }
    if path.windows(2).any(|w| w == b"//") {
        return Err("empty segment");
    }
    let once = percent_decode(path);
    if once.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err("encoded NUL or control character");
    }
    // Every '/' in the path is raw, so an encoded one shows as an extra '/' after decoding.
    if once.iter().filter(|&&b| b == b'/').count() != path.iter().filter(|&&b| b == b'/').count()
        || once.contains(&b'\\')
    {
        return Err("encoded slash or backslash");
    }
    if std::str::from_utf8(&once).is_err() {
        return Err("escapes do not decode to UTF-8");
    }
    // A '%' that survives one decoding came from %25: it must not start a second escape.
    if once
        .windows(3)
        .any(|w| w[0] == b'%' && hex(w[1]).is_some() && hex(w[2]).is_some())
    {
        return Err("double percent-encoding");
    }
    if path[1..]
        .split(|&b| b == b'/')
        .any(|s| is_dot(&percent_decode(s)))
    {
        return Err("dot segment");
    }
    if let Some(query) = query {
        if query
            .iter()
            .any(|&b| b < 0x20 || b == 0x7f || b" #\"<>".contains(&b))
        {
            return Err("query byte that cannot be forwarded");
        }
    }
    Ok(())
}

/// Checks what [`RequestTarget::parse`] makes of `raw`: it agrees with
/// [`reference_target_verdict`], and an accepted target is canonical and round-trips.
pub fn check_target(raw: &str) -> Result<(), Violation> {
    let parsed = RequestTarget::parse(raw);
    let reference = reference_target_verdict(raw);
    match (&parsed, reference) {
        (Ok(_), Err(rule)) => {
            return Err(Violation(format!(
                "accepted {raw:?}, which breaks the rule: {rule}"
            )))
        }
        (Err(e), Ok(())) => {
            return Err(Violation(format!(
                "refused {raw:?} ({e}), which every rule accepts"
            )))
        }
        _ => {}
    }
    match parsed {
        Ok(target) => check_canonical(raw, &target),
        Err(_) => Ok(()),
    }
}

/// [`check_target`] on arbitrary bytes (a fuzzer's input). Bytes that are not UTF-8 are
/// replaced with U+FFFD, which the parser must then refuse as non-ASCII: hyper only ever hands
/// over a `str`.
pub fn check_target_bytes(data: &[u8]) -> Result<(), Violation> {
    check_target(&String::from_utf8_lossy(data))
}

/// The docs/reference.md §4 step 4 statement of "canonical", for a target that was accepted.
pub fn check_canonical(raw: &str, target: &RequestTarget<'_>) -> Result<(), Violation> {
    let path = target.path.as_bytes();
    ensure(path.first() == Some(&b'/'), || {
        format!("{raw:?}: accepted path does not start with '/'")
    })?;
    ensure(!target.path.contains("//"), || {
        format!("{raw:?}: accepted path contains '//'")
    })?;
    ensure(path.len() <= MAX_PATH_BYTES, || {
        format!("{raw:?}: accepted path is too long")
    })?;
    ensure(
        target.query.map_or(true, |q| q.len() <= MAX_QUERY_BYTES),
        || format!("{raw:?}: accepted query is too long"),
    )?;
    ensure(
        path.iter()
            .all(|&b| b > 0x20 && b < 0x7f && b != b'\\' && b != b'#'),
        || format!("{raw:?}: accepted path has a control, space, '\\', '#' or non-ASCII byte"),
    )?;
    let lower = target.path.to_ascii_lowercase();
    for encoded in ["%2f", "%5c", "%00"] {
        ensure(!lower.contains(encoded), || {
            format!("{raw:?}: accepted path contains {encoded}")
        })?;
    }
    for segment in target.path[1..].split('/') {
        let once = percent_decode(segment.as_bytes());
        let twice = percent_decode(&once);
        ensure(!is_dot(&once) && !is_dot(&twice), || {
            format!("{raw:?}: accepted path has a dot segment {segment:?} once decoded")
        })?;
        ensure(
            !twice.iter().any(|&b| matches!(b, b'/' | b'\\' | 0)),
            || format!("{raw:?}: segment {segment:?} decodes twice to '/', '\\' or NUL"),
        )?;
    }
    let mut rebuilt = target.path.to_owned();
    if let Some(query) = target.query {
        rebuilt.push('?');
        rebuilt.push_str(query);
    }
    ensure(rebuilt == raw && target.to_string() == raw, || {
        format!("{raw:?}: re-serialises as {rebuilt:?} / {target}")
    })?;
    ensure(RequestTarget::parse(&rebuilt) == Ok(*target), || {
        format!("{raw:?}: re-parsing the serialised target gives something else")
    })
}

// ---------------------------------------------------------------------------------------------
// Decisions

/// Request headers that must never be forwarded, whatever the configured allowlist: they carry
/// the caller's identity, the routing, or the framing the bridge does itself (docs/reference.md §4 step 9,
/// §4.4).
pub const NEVER_FORWARDED: [&str; 16] = [
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "x-api-key",
    "forwarded",
    "x-real-ip",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "proxy-authenticate",
];

/// Whether a header name may never be forwarded (see [`NEVER_FORWARDED`]).
pub fn is_never_forwarded(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    NEVER_FORWARDED.contains(&name.as_str())
        || name.starts_with("x-forwarded-")
        || name.contains('_')
}

/// Whether `head` carries exactly one `Authorization: Bearer <token>` for `token`.
fn token_ok(head: &RequestHead<'_>, token: TokenCheck<'_>) -> bool {
    let TokenCheck::Require(expected) = token else {
        return true;
    };
    let values: Vec<&HeaderValue> = head.headers.get_all(AUTHORIZATION).iter().collect();
    let wanted = format!("Bearer {}", expected.expose());
    values.len() == 1 && values[0].as_bytes() == wanted.as_bytes()
}

/// Naive template match: same number of segments; a literal equals the raw segment; `{name}`
/// takes any non-empty segment; `{name}suffix` a segment ending in `suffix` with a non-empty
/// rest.
pub fn template_matches(template: &str, path: &str) -> bool {
    let (Some(template), Some(path)) = (template.strip_prefix('/'), path.strip_prefix('/')) else {
        return false;
    };
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    t.len() == p.len()
        && t.iter().zip(&p).all(|(t, p)| match t.strip_prefix('{') {
            Some(rest) => {
                let suffix = rest.split_once('}').map_or("", |(_, s)| s);
                p.len() > suffix.len() && p.ends_with(suffix)
            }
            None => t == p,
        })
}

/// The codes [`Policy::evaluate`] can answer with.
const POLICY_CODES: [DenyCode; 9] = [
    DenyCode::InvalidToken,
    DenyCode::MethodNotAllowed,
    DenyCode::InvalidPath,
    DenyCode::RouteNotAllowed,
    DenyCode::BadRequest,
    DenyCode::UnsupportedMediaType,
    DenyCode::BodyTooLarge,
    DenyCode::HeadersTooLarge,
    DenyCode::NotFound,
];

/// Checks one decision of `policy` for `head` against docs/reference.md §4 (see the module docs).
pub fn check_decision(
    policy: &Policy,
    head: &RequestHead<'_>,
    token: TokenCheck<'_>,
    decision: &Decision,
) -> Result<(), Violation> {
    let method = head.method;
    let raw = head.target;
    let what = || format!("{method} {raw:?} with headers {:?}", head.headers);
    let path = raw.split_once('?').map_or(raw, |(p, _)| p);
    let read = *method == Method::GET || *method == Method::HEAD;
    let health = read && path == HEALTH_PATH;
    let bridge_local = path == "/__bridge" || path.starts_with("/__bridge/");

    // Step 2 comes first: without the token, nothing but 401 (health aside).
    if !token_ok(head, token) {
        let expected = if health {
            matches!(decision, Decision::Local(LocalEndpoint::Health))
        } else {
            matches!(decision, Decision::Deny(d) if d.code == DenyCode::InvalidToken)
        };
        return ensure(expected, || {
            format!("{}: no valid token, yet decided {decision:?}", what())
        });
    }
    match decision {
        Decision::Local(LocalEndpoint::Health) => ensure(health, || {
            format!("{}: answered as the health endpoint", what())
        }),
        Decision::Local(LocalEndpoint::Metrics) => ensure(read && path == METRICS_PATH, || {
            format!("{}: answered as the metrics endpoint", what())
        }),
        Decision::Deny(deny) => {
            ensure(deny.code != DenyCode::InvalidToken, || {
                format!("{}: valid token, yet 401", what())
            })?;
            ensure(POLICY_CODES.contains(&deny.code), || {
                format!("{}: the policy answered {}", what(), deny.code)
            })?;
            ensure(!deny.message.is_empty(), || {
                format!("{}: empty message", what())
            })?;
            if !bridge_local {
                if matches!(method.as_str(), "TRACE" | "TRACK" | "CONNECT") {
                    ensure(deny.code == DenyCode::MethodNotAllowed, || {
                        format!("{}: {method} denied as {}", what(), deny.code)
                    })?;
                } else if reference_target_verdict(raw).is_err() {
                    ensure(deny.code == DenyCode::InvalidPath, || {
                        format!("{}: bad target denied as {}", what(), deny.code)
                    })?;
                }
            }
            Ok(())
        }
        Decision::Allow(allow) => {
            ensure(!bridge_local, || {
                format!("{}: a /__bridge path would be forwarded", what())
            })?;
            ensure(
                !matches!(method.as_str(), "TRACE" | "TRACK" | "CONNECT"),
                || format!("{}: {method} would be forwarded", what()),
            )?;
            // The forwarded target is the checked one, byte for byte, and it is canonical.
            ensure(allow.target == raw, || {
                format!("{}: forwards {:?} instead", what(), allow.target)
            })?;
            check_target(&allow.target)?;
            let target = RequestTarget::parse(&allow.target)
                .map_err(|e| Violation(format!("{}: forwarded target refused: {e}", what())))?;
            // A route with this id matches the forwarded path and allows the method.
            let route = policy.routes.routes().iter().find(|r| {
                r.id == allow.route_id && template_matches(&r.path, target.path) && r.allows(method)
            });
            ensure(route.is_some(), || {
                format!("{}: route {} does not match it", what(), allow.route_id)
            })?;
            let found = policy.routes.find(method, target.path).map(|r| &r.id);
            ensure(found == Some(&allow.route_id), || {
                format!(
                    "{}: allowed as {} but the table finds {found:?}",
                    what(),
                    allow.route_id
                )
            })?;
            check_framing(
                head,
                allow.body,
                allow.max_body_bytes,
                policy.max_body_bytes,
            )
            .map_err(|v| Violation(format!("{}: {v}", what())))?;
            check_forwarded_headers(&policy.headers, head.headers, &allow.headers)
                .map_err(|v| Violation(format!("{}: {v}", what())))?;
            let header_bytes: usize = head
                .headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len())
                .sum();
            ensure(
                head.headers.len() <= MAX_HEADER_COUNT && header_bytes <= MAX_HEADER_BYTES,
                || format!("{}: allowed with too many or too large headers", what()),
            )
        }
    }
}

/// An allowed request's framing is unambiguous and within the limits.
fn check_framing(
    head: &RequestHead<'_>,
    body: BodyKind,
    route_limit: u64,
    global_limit: u64,
) -> Result<(), Violation> {
    let lengths: Vec<&HeaderValue> = head.headers.get_all(CONTENT_LENGTH).iter().collect();
    let encodings: Vec<&HeaderValue> = head.headers.get_all(TRANSFER_ENCODING).iter().collect();
    ensure(lengths.len() <= 1 && encodings.len() <= 1, || {
        "allowed with repeated framing headers".into()
    })?;
    ensure(lengths.is_empty() || encodings.is_empty(), || {
        "allowed with both Content-Length and Transfer-Encoding".into()
    })?;
    let declared = lengths.first().map(|v| {
        std::str::from_utf8(v.as_bytes())
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
    });
    let expected = match (declared, encodings.first()) {
        (Some(None), _) => return Err(Violation("allowed with a malformed Content-Length".into())),
        (Some(Some(0)), _) | (None, None) => BodyKind::None,
        (Some(Some(n)), _) => BodyKind::Length(n),
        (None, Some(te)) if te.as_bytes().eq_ignore_ascii_case(b"chunked") => BodyKind::Chunked,
        (None, Some(te)) => {
            return Err(Violation(format!("allowed with Transfer-Encoding {te:?}")))
        }
    };
    ensure(body == expected, || {
        format!("body framing {body:?}, headers declare {expected:?}")
    })?;
    let read = *head.method == Method::GET || *head.method == Method::HEAD;
    ensure(!read || body == BodyKind::None, || {
        "a GET or HEAD request with a body is allowed".into()
    })?;
    ensure(route_limit <= global_limit, || {
        format!("route limit {route_limit} above the global {global_limit}")
    })?;
    if let BodyKind::Length(n) = body {
        ensure(n <= route_limit, || {
            format!("declared {n} bytes above the limit {route_limit}")
        })?;
    }
    if body != BodyKind::None {
        ensure(
            head.headers.get_all(CONTENT_TYPE).iter().count() == 1,
            || "a body without exactly one Content-Type is allowed".into(),
        )?;
    }
    Ok(())
}

/// Forwarded headers are allowlisted, never forbidden, not nominated by `Connection`, and each
/// name's values are a subsequence of what the caller sent.
fn check_forwarded_headers(
    rules: &HeaderRules,
    sent: &HeaderMap,
    forwarded: &HeaderMap,
) -> Result<(), Violation> {
    let nominated: Vec<String> = sent
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(|t| String::from_utf8_lossy(t.trim_ascii()).to_ascii_lowercase())
        .collect();
    for name in forwarded.keys() {
        ensure(rules.request_names().contains(name), || {
            format!("forwards {name}, which is not allowlisted")
        })?;
        ensure(!is_never_forwarded(name.as_str()), || {
            format!("forwards {name}")
        })?;
        ensure(!nominated.iter().any(|n| n == name.as_str()), || {
            format!("forwards {name}, which Connection made hop-by-hop")
        })?;
        let mut sent_values = sent.get_all(name).iter();
        for value in forwarded.get_all(name) {
            ensure(sent_values.any(|v| v == value), || {
                format!("forwards {name}: {value:?}, which the caller did not send (in that order)")
            })?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Structured requests for the fuzzer and the property tests

/// The bridge token every [`PolicyInput`] is checked against.
pub const FUZZ_TOKEN: &str = "fuzz-token-0123456789";

/// A route table that exercises what the built-in one does not: a per-route limit, parameters
/// with suffixes next to literals, several methods, a custom content type, a small global limit.
const FUZZ_ROUTES: &str = r#"
[[route]]
id = "small"
methods = ["POST", "PUT"]
path = "/s/{id}"
max_body_bytes = 16

[[route]]
id = "files.txt"
method = "GET"
path = "/f/{name}.txt"

[[route]]
id = "files.min"
method = "GET"
path = "/f/{name}.min.txt"

[[route]]
id = "files.literal"
methods = ["GET", "DELETE"]
path = "/f/readme.txt"

[[route]]
id = "upload"
method = "POST"
path = "/u/{a}/{b}"
content_types = ["multipart/form-data", "text/plain", "application/*+xml"]

[[route]]
id = "options"
method = "OPTIONS"
paths = ["/o", "/o/{x}/me"]
"#;

/// The policies inputs are evaluated under: the built-in one (the documented defaults), and
/// [`FUZZ_ROUTES`] with a 1 KiB global limit and a custom header allowlist.
pub static FUZZ_POLICIES: LazyLock<[Policy; 2]> = LazyLock::new(|| {
    let custom_routes = RouteTable::from_toml(FUZZ_ROUTES).expect("FUZZ_ROUTES compiles");
    let strings = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let custom_headers = HeaderRules::new(
        &strings(&["accept", "content-type", "x-trace", "if-match", "X-Custom"]),
        &strings(&["content-type"]),
    )
    .expect("custom header rules compile");
    [
        Policy::default(),
        Policy::new(custom_routes, custom_headers, 1024),
    ]
});

/// Header names that matter to the policy, picked by index so that a fuzzer reaches them.
pub const INTERESTING_HEADERS: [&str; 32] = [
    "authorization",
    "Authorization",
    "AUTHORIZATION",
    "proxy-authorization",
    "cookie",
    "host",
    "x-api-key",
    "x_api_key",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-real-ip",
    "accept",
    "content-type",
    "Content-Type",
    "content-length",
    "Content-Length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "upgrade",
    "if-match",
    "if-none-match",
    "idempotency-key",
    "x-paperclip-github-capability",
    "x-paperclip-run-id",
    "x-trace",
    "x-custom",
    "x_custom",
    "content_type",
    "expect",
];

/// Header values that matter to the policy.
pub const INTERESTING_VALUES: [&str; 24] = [
    "application/json",
    "application/json; charset=utf-8",
    "application/vnd.x+json",
    "application/json, text/html",
    "multipart/form-data; boundary=x",
    "text/plain",
    "application/soap+xml",
    "chunked",
    "Chunked",
    "chunked, identity",
    "identity",
    "gzip, chunked",
    "0",
    "1",
    "16",
    "17",
    "1024",
    "1025",
    "10551296",
    "10551297",
    "-1",
    "close, if-match",
    "accept",
    "Bearer wrong",
];

/// The request method.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub enum MethodInput {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
    Trace,
    Track,
    Connect,
    /// Any token (invalid method bytes make the input uninteresting and it is skipped).
    Other(String),
}

/// The request target.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub enum TargetInput {
    /// Exactly these bytes.
    Raw(String),
    /// One of the policy's route templates (picked by index) with its parameters filled in
    /// from `params` (in order, `x` when they run out) and an optional query.
    Route {
        route: u16,
        params: Vec<String>,
        query: Option<String>,
    },
    /// `/__bridge` followed by this.
    Bridge(String),
}

/// The `Authorization` header(s) sent.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub enum TokenInput {
    Missing,
    Valid,
    /// The right token sent twice.
    Twice,
    /// `Bearer ` followed by this.
    Bearer(String),
    /// This exact header value.
    Raw(Vec<u8>),
}

/// A header name.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub enum NameInput {
    /// An entry of [`INTERESTING_HEADERS`] (by index, modulo its length).
    Known(u8),
    Raw(String),
}

/// A header value.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub enum ValueInput {
    /// An entry of [`INTERESTING_VALUES`] (by index, modulo its length).
    Known(u8),
    Raw(Vec<u8>),
}

/// How the request declares its body.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub enum BodyInput {
    None,
    /// `content-type: application/json` and `content-length: n`.
    JsonLength(u64),
    /// `content-type: application/json` and `transfer-encoding: chunked`.
    JsonChunked,
    /// `content-length: n` only.
    Length(u64),
}

/// One structured request for [`check_policy_input`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "fuzzing", derive(arbitrary::Arbitrary))]
pub struct PolicyInput {
    /// Index into [`FUZZ_POLICIES`] (modulo its length).
    pub policy: u8,
    pub method: MethodInput,
    pub target: TargetInput,
    pub token: TokenInput,
    pub headers: Vec<(NameInput, ValueInput)>,
    pub body: BodyInput,
    /// Evaluate with [`TokenCheck::Skip`] (as the relay does for queue files).
    pub skip_token_check: bool,
}

impl PolicyInput {
    /// The policy this input is evaluated under.
    pub fn policy(&self) -> &'static Policy {
        let policies = &*FUZZ_POLICIES;
        &policies[usize::from(self.policy) % policies.len()]
    }

    /// The method, the target and the headers, or `None` when the input cannot be an HTTP
    /// request at all (a method or header name that is not a token, a value with a newline).
    pub fn build(&self) -> Option<(Method, String, HeaderMap)> {
        let method = match &self.method {
            MethodInput::Get => Method::GET,
            MethodInput::Head => Method::HEAD,
            MethodInput::Post => Method::POST,
            MethodInput::Put => Method::PUT,
            MethodInput::Patch => Method::PATCH,
            MethodInput::Delete => Method::DELETE,
            MethodInput::Options => Method::OPTIONS,
            MethodInput::Trace => Method::TRACE,
            MethodInput::Track => Method::from_bytes(b"TRACK").ok()?,
            MethodInput::Connect => Method::CONNECT,
            MethodInput::Other(name) => Method::from_bytes(name.as_bytes()).ok()?,
        };
        let target = match &self.target {
            TargetInput::Raw(raw) => raw.clone(),
            TargetInput::Bridge(rest) => format!("/__bridge{rest}"),
            TargetInput::Route {
                route,
                params,
                query,
            } => {
                let routes = self.policy().routes.routes();
                let template = &routes[usize::from(*route) % routes.len()].path;
                let mut params = params.iter().map(String::as_str);
                let mut path = String::new();
                for segment in template.split('/').skip(1) {
                    path.push('/');
                    match segment.strip_prefix('{') {
                        Some(rest) => {
                            path.push_str(params.next().unwrap_or("x"));
                            path.push_str(rest.split_once('}').map_or("", |(_, s)| s));
                        }
                        None => path.push_str(segment),
                    }
                }
                match query {
                    Some(q) => format!("{path}?{q}"),
                    None => path,
                }
            }
        };
        let mut headers = HeaderMap::new();
        let mut add = |name: &str, value: &[u8]| -> Option<()> {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).ok()?,
                HeaderValue::from_bytes(value).ok()?,
            );
            Some(())
        };
        let bearer = format!("Bearer {FUZZ_TOKEN}");
        match &self.token {
            TokenInput::Missing => {}
            TokenInput::Valid => add("authorization", bearer.as_bytes())?,
            TokenInput::Twice => {
                add("authorization", bearer.as_bytes())?;
                add("authorization", bearer.as_bytes())?;
            }
            TokenInput::Bearer(t) => add("authorization", format!("Bearer {t}").as_bytes())?,
            TokenInput::Raw(v) => add("authorization", v)?,
        }
        for (name, value) in &self.headers {
            let name = match name {
                NameInput::Known(i) => {
                    INTERESTING_HEADERS[usize::from(*i) % INTERESTING_HEADERS.len()]
                }
                NameInput::Raw(name) => name,
            };
            let value = match value {
                ValueInput::Known(i) => {
                    INTERESTING_VALUES[usize::from(*i) % INTERESTING_VALUES.len()].as_bytes()
                }
                ValueInput::Raw(v) => v,
            };
            add(name, value)?;
        }
        let json = b"application/json".as_slice();
        match self.body {
            BodyInput::None => {}
            BodyInput::JsonLength(n) => {
                add("content-type", json)?;
                add("content-length", n.to_string().as_bytes())?;
            }
            BodyInput::JsonChunked => {
                add("content-type", json)?;
                add("transfer-encoding", b"chunked")?;
            }
            BodyInput::Length(n) => add("content-length", n.to_string().as_bytes())?,
        }
        Some((method, target, headers))
    }
}

/// Evaluates `input` under its policy and checks the decision ([`check_decision`]). Inputs that
/// cannot be an HTTP request pass trivially.
pub fn check_policy_input(input: &PolicyInput) -> Result<(), Violation> {
    let Some((method, target, headers)) = input.build() else {
        return Ok(());
    };
    let policy = input.policy();
    let token = BridgeToken::new(FUZZ_TOKEN.to_owned());
    let check = if input.skip_token_check {
        TokenCheck::Skip
    } else {
        TokenCheck::Require(&token)
    };
    let head = RequestHead {
        method: &method,
        target: &target,
        headers: &headers,
    };
    let decision = policy.evaluate(&head, check);
    check_decision(policy, &head, check, &decision)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Allow, Deny};
    use std::sync::Arc;

    #[test]
    fn reference_agrees_with_the_parser_on_the_unit_cases() {
        for raw in [
            "/",
            "/a/b",
            "/a?x=1",
            "/a/%c3%a9",
            "/a/...",
            "/a;b=c/d",
            "/a/%25zz",
            "/a?q=é",
            "/a/.",
            "/a/%2e%2E",
            "/a/..;/b",
            "/a//b",
            "/a%2fb",
            "/a%5C",
            "/a%00",
            "/a%zz",
            "/a%252e",
            "/a/%c0%ae",
            "/a/é",
            "/a b",
            "/a#b",
            "*",
            "http://x/",
            "/a?x=<",
        ] {
            check_target(raw).unwrap();
        }
    }

    #[test]
    fn reference_rejects_double_encoding_through_encoded_hex_digits() {
        // `%25%32%65` decodes once to `%2e` and twice to `.`.
        assert_eq!(
            reference_target_verdict("/a/%25%32%65%25%32%65/b"),
            Err("double percent-encoding")
        );
        assert_eq!(reference_target_verdict("/a/%25zz"), Ok(()));
    }

    #[test]
    fn canonical_check_catches_a_non_canonical_target() {
        // Built by hand, bypassing the parser: the check must flag each of these.
        for (raw, path, query) in [
            ("/a/../b", "/a/../b", None),
            ("/a//b", "/a//b", None),
            ("/a%2fb", "/a%2fb", None),
            ("/a/%252e%252e", "/a/%252e%252e", None),
            ("/a?x", "/a", Some("y")),
        ] {
            let target = RequestTarget { path, query };
            assert!(check_canonical(raw, &target).is_err(), "{raw}");
        }
    }

    fn head_parts(list: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for &(n, v) in list {
            map.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        map
    }

    /// A decision check that cannot fail is worthless: feed it wrong decisions.
    #[test]
    fn decision_check_catches_wrong_decisions() {
        let policy = Policy::default();
        let token = BridgeToken::new(FUZZ_TOKEN.to_owned());
        let check = TokenCheck::Require(&token);
        let auth = format!("Bearer {FUZZ_TOKEN}");
        let with_token = head_parts(&[("authorization", &auth), ("cookie", "c")]);
        let without = head_parts(&[]);
        let allow = |target: &str, route: &str, headers: HeaderMap| {
            Decision::Allow(Allow {
                route_id: Arc::from(route),
                target: target.to_owned(),
                body: BodyKind::None,
                max_body_bytes: policy.max_body_bytes,
                headers,
            })
        };
        let get = Method::GET;
        let head = |target, headers| RequestHead {
            method: &get,
            target,
            headers,
        };
        let wrong: Vec<(RequestHead<'_>, Decision)> = vec![
            // Allowed without a token.
            (
                head("/api/agents/me", &without),
                allow("/api/agents/me", "agents.me.get", HeaderMap::new()),
            ),
            // A denial other than 401 without a token.
            (
                head("/api/agents/me", &without),
                Decision::Deny(Deny::new(DenyCode::RouteNotAllowed, "x")),
            ),
            // Forwards another target than the checked one.
            (
                head("/api/agents/me", &with_token),
                allow("/api/agents/me?x", "agents.me.get", HeaderMap::new()),
            ),
            // Names a route that does not match.
            (
                head("/api/agents/me", &with_token),
                allow("/api/agents/me", "agents.get", HeaderMap::new()),
            ),
            // Forwards a cookie.
            (
                head("/api/agents/me", &with_token),
                allow(
                    "/api/agents/me",
                    "agents.me.get",
                    head_parts(&[("cookie", "c")]),
                ),
            ),
            // Forwards a value the caller did not send.
            (
                head("/api/agents/me", &with_token),
                allow(
                    "/api/agents/me",
                    "agents.me.get",
                    head_parts(&[("accept", "x")]),
                ),
            ),
            // 401 despite the right token.
            (
                head("/api/agents/me", &with_token),
                Decision::Deny(Deny::new(DenyCode::InvalidToken, "x")),
            ),
            // A bad target denied as something else.
            (
                head("/api/agents/../x", &with_token),
                Decision::Deny(Deny::new(DenyCode::RouteNotAllowed, "x")),
            ),
        ];
        for (head, decision) in &wrong {
            assert!(
                check_decision(&policy, head, check, decision).is_err(),
                "{head:?} {decision:?}"
            );
        }
    }

    #[test]
    fn structured_inputs_build_and_pass() {
        let input = PolicyInput {
            policy: 0,
            method: MethodInput::Post,
            target: TargetInput::Route {
                route: 0,
                params: vec![],
                query: Some("a=1".into()),
            },
            token: TokenInput::Valid,
            headers: vec![(NameInput::Known(4), ValueInput::Known(0))],
            body: BodyInput::JsonLength(2),
            skip_token_check: false,
        };
        let (method, target, headers) = input.build().unwrap();
        assert_eq!(method, Method::POST);
        assert_eq!(target, "/runtime-tools/github/credentials?a=1");
        assert_eq!(headers.len(), 4);
        check_policy_input(&input).unwrap();
        for policy in 0..2 {
            for route in 0..100 {
                let input = PolicyInput {
                    policy,
                    target: TargetInput::Route {
                        route,
                        params: vec!["p".into(); 4],
                        query: None,
                    },
                    ..input.clone()
                };
                check_policy_input(&input).unwrap();
            }
        }
    }
}
