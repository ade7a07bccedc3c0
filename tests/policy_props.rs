//! Property tests of the request policy: whatever the input, an accepted target is canonical
//! and an `Allow` forwards exactly what was checked, to a route that matches it, with only
//! allowlisted headers.

use callback_bridge::auth::BridgeToken;
use callback_bridge::policy::{
    Decision, HeaderRules, Policy, RequestHead, RequestTarget, TokenCheck,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use proptest::prelude::*;
use std::sync::LazyLock;

/// Pieces of targets that are fine on their own (the `/` and `.` pieces still combine into
/// empty and dot segments).
const GOOD_PIECES: &[&str] = &[
    "/",
    "/",
    "/",
    "/",
    "a",
    "api",
    "agents",
    "me",
    ".",
    "..",
    "%2e",
    "%2E",
    "%41",
    "%c3%a9",
    "%e2%82%ac",
    "%25",
    ";",
    "=",
    "&",
    "~",
    "@",
    ":",
    "x=1",
    "?",
    ".txt",
    "*",
    "-",
    "_",
];

/// Pieces that break at least one target rule.
const BAD_PIECES: &[&str] = &[
    "%2f", "%2F", "%5c", "%5C", "%00", "%0a", "%252e", "%c0%ae", "%ff", "%", "%4", "%zz", "#",
    "\\", " ", "\t", "\r\n", "\0", "\x7f", "é", "\u{ff0e}", "{x}", "<", "\"", "http:", "//",
];

fn target_strategy() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        12 => prop::sample::select(GOOD_PIECES),
        1 => prop::sample::select(BAD_PIECES),
    ];
    prop_oneof![
        6 => prop::collection::vec(piece, 0..12).prop_map(|pieces| format!("/{}", pieces.concat())),
        1 => any::<String>(),
        1 => "[ -~]{0,40}",
    ]
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Naive percent-decoding, independent of the implementation under test.
fn decode(segment: &str) -> Vec<u8> {
    let bytes = segment.as_bytes();
    let mut out = Vec::new();
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

fn assert_canonical(raw: &str, target: &RequestTarget<'_>) {
    let path = target.path;
    assert!(path.starts_with('/'), "{raw:?}");
    assert!(!path.contains("//"), "{raw:?}");
    assert!(path.len() <= 2048, "{raw:?}");
    assert!(target.query.map_or(true, |q| q.len() <= 4096), "{raw:?}");
    let lower = path.to_ascii_lowercase();
    for forbidden in ["%2f", "%5c", "%00", "\\", "\0"] {
        assert!(!lower.contains(forbidden), "{raw:?} contains {forbidden:?}");
    }
    assert!(
        !raw.bytes()
            .any(|b| b < 0x20 || b == 0x7f || b == b' ' || b == b'#'),
        "{raw:?}"
    );
    let bytes = path.as_bytes();
    for (i, _) in path.match_indices('%') {
        assert!(
            i + 2 < bytes.len() && hex(bytes[i + 1]).is_some() && hex(bytes[i + 2]).is_some(),
            "{raw:?}: bad escape at {i}"
        );
    }
    for segment in path.split('/').skip(1) {
        let decoded = decode(segment);
        assert!(
            decoded != b"." && decoded != b"..",
            "{raw:?}: dot segment {segment:?}"
        );
    }
    let mut rebuilt = path.to_owned();
    if let Some(query) = target.query {
        rebuilt.push('?');
        rebuilt.push_str(query);
    }
    assert_eq!(rebuilt, raw);
    assert_eq!(target.to_string(), raw);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn accepted_targets_are_canonical_and_reserialise_identically(raw in target_strategy()) {
        if let Ok(target) = RequestTarget::parse(&raw) {
            assert_canonical(&raw, &target);
        }
    }
}

const TOKEN: &str = "prop-token";

/// Compiled once: building the table for every case would dominate the run time.
static POLICY: LazyLock<Policy> = LazyLock::new(Policy::default);

/// Values put into `{param}` positions of real templates: mostly valid, some hostile.
const GOOD_PARAMS: &[&str] = &[
    "x", "1", "me", "c1", "%41", "a.b", "codex", "...", "%2e", "x;y",
];
const BAD_PARAMS: &[&str] = &[
    ".", "..", "%2e%2e", "", "a%2fb", "%c0%ae", "a b", "é", "..;", "a/b", "%00", "a#b",
];

/// Methods: mostly ones routes use, some that are always refused or never routed.
const COMMON_METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];
const ODD_METHODS: &[&str] = &["OPTIONS", "TRACE", "CONNECT", "TRACK", "PURGE"];

const HEADER_NAMES: &[&str] = &[
    "authorization",
    "authorization",
    "cookie",
    "host",
    "x-forwarded-for",
    "x-api-key",
    "proxy-authorization",
    "accept",
    "content-type",
    "content-type",
    "content-length",
    "content-length",
    "transfer-encoding",
    "if-match",
    "idempotency-key",
    "x-custom",
    "connection",
    "x-paperclip-run-id",
    "x-paperclip-github-capability",
];

const HEADER_VALUES: &[&str] = &[
    "Bearer prop-token",
    "Bearer wrong",
    "application/json",
    "multipart/form-data; boundary=b",
    "text/plain",
    "0",
    "5",
    "abc",
    "99999999999",
    "chunked",
    "gzip",
    "if-match",
    "v",
];

fn method_strategy() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        8 => prop::sample::select(COMMON_METHODS),
        1 => prop::sample::select(ODD_METHODS),
    ]
}

/// A method and a concrete path for one of the built-in routes, with `{param}` positions
/// filled; the method is usually one the route allows.
fn templated_request() -> impl Strategy<Value = (String, String)> {
    let routes: Vec<(Vec<String>, String)> = POLICY
        .routes
        .routes()
        .iter()
        .map(|r| {
            (
                r.methods.iter().map(|m| m.to_string()).collect(),
                r.path.clone(),
            )
        })
        .collect();
    (
        prop::sample::select(routes),
        prop::option::weighted(0.8, any::<prop::sample::Index>()),
        method_strategy(),
        prop::collection::vec(
            prop_oneof![
                8 => prop::sample::select(GOOD_PARAMS),
                1 => prop::sample::select(BAD_PARAMS),
            ],
            8,
        ),
        prop::option::of(prop::sample::select(
            &["", "a=1", "x=%2e%2e/..", "q=a b", "z#f"][..],
        )),
    )
        .prop_map(|((methods, template), pick, other, values, query)| {
            let method = match pick {
                Some(index) => index.get(&methods).clone(),
                None => other.to_owned(),
            };
            let mut values = values.into_iter();
            let mut path = String::new();
            for segment in template.split('/').skip(1) {
                path.push('/');
                match segment.strip_prefix('{') {
                    Some(rest) => {
                        let suffix = rest.split_once('}').map_or("", |(_, s)| s);
                        path.push_str(values.next().unwrap_or("x"));
                        path.push_str(suffix);
                    }
                    None => path.push_str(segment),
                }
            }
            let target = match query {
                Some(q) => format!("{path}?{q}"),
                None => path,
            };
            (method, target)
        })
}

fn request_strategy() -> impl Strategy<Value = (String, String)> {
    prop_oneof![
        3 => templated_request(),
        1 => (method_strategy(), target_strategy()).prop_map(|(m, t)| (m.to_owned(), t)),
    ]
}

fn headers_strategy() -> impl Strategy<Value = Vec<(&'static str, &'static str)>> {
    prop::collection::vec(
        (
            prop::sample::select(HEADER_NAMES),
            prop::sample::select(HEADER_VALUES),
        ),
        0..8,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn allow_forwards_what_was_checked(
        (method, target) in request_strategy(),
        list in headers_strategy(),
        with_token in any::<bool>(),
    ) {
        let policy = &*POLICY;
        let token = BridgeToken::new(TOKEN.to_owned());
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let mut headers = HeaderMap::new();
        if with_token {
            headers.append("authorization", HeaderValue::from_static("Bearer prop-token"));
        }
        for (name, value) in list {
            headers.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        let head = RequestHead { method: &method, target: &target, headers: &headers };
        match policy.evaluate(&head, TokenCheck::Require(&token)) {
            Decision::Allow(allow) => {
                prop_assert_eq!(&allow.target, &target);
                let checked = RequestTarget::parse(&allow.target).expect("forwarded target parses");
                assert_canonical(&target, &checked);
                let route = policy.routes.find(&method, checked.path).expect("route matches");
                prop_assert_eq!(&route.id, &allow.route_id);
                let allowed = HeaderRules::default();
                for name in allow.headers.keys() {
                    prop_assert!(allowed.request_names().contains(name), "forwarded {}", name);
                }
                prop_assert!(allow.headers.get("authorization").is_none());
                prop_assert!(method != Method::TRACE && method != Method::CONNECT);
                prop_assert_eq!(headers.get_all("authorization").iter().count(), 1);
            }
            Decision::Local(_) => prop_assert!(target.starts_with("/__bridge/")),
            Decision::Deny(deny) => prop_assert!(!deny.message.is_empty()),
        }
    }
}
