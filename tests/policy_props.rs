//! Property tests of the request policy: whatever the input, an accepted target is canonical
//! and an `Allow` forwards exactly what was checked, to a route that matches it, with only
//! allowlisted headers; without the token nothing but 401 (health aside).
//!
//! The invariants themselves live in `callback_bridge::policy::invariants`, shared with the
//! fuzz targets in `fuzz/`: these tests run them on stable with proptest's generators, the
//! fuzzers with libFuzzer's.

use callback_bridge::auth::BridgeToken;
use callback_bridge::policy::invariants::{
    self, BodyInput, MethodInput, NameInput, PolicyInput, TargetInput, TokenInput, ValueInput,
};
use callback_bridge::policy::{Policy, RequestHead, TokenCheck};
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
    "%32",
    "%65",
    "%66",
    "2",
    "e",
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn accepted_targets_are_canonical_and_reserialise_identically(raw in target_strategy()) {
        if let Err(violation) = invariants::check_target(&raw) {
            return Err(TestCaseError::fail(violation.to_string()));
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
        let check = TokenCheck::Require(&token);
        let decision = policy.evaluate(&head, check);
        if let Err(violation) = invariants::check_decision(policy, &head, check, &decision) {
            return Err(TestCaseError::fail(violation.to_string()));
        }
    }
}

/// Free text for parameters, queries and raw header values: mostly the hostile pieces above.
fn text_strategy() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::collection::vec(
            prop_oneof![
                3 => prop::sample::select(GOOD_PARAMS),
                2 => prop::sample::select(BAD_PARAMS),
                1 => prop::sample::select(GOOD_PIECES),
            ],
            0..3,
        )
        .prop_map(|pieces| pieces.concat()),
        1 => any::<String>(),
    ]
}

/// The same structured request the `policy` fuzz target derives with `arbitrary`.
fn policy_input_strategy() -> impl Strategy<Value = PolicyInput> {
    let method = prop_oneof![
        3 => Just(MethodInput::Get),
        1 => Just(MethodInput::Head),
        3 => Just(MethodInput::Post),
        1 => Just(MethodInput::Put),
        1 => Just(MethodInput::Patch),
        1 => Just(MethodInput::Delete),
        1 => Just(MethodInput::Options),
        1 => Just(MethodInput::Trace),
        1 => Just(MethodInput::Track),
        1 => Just(MethodInput::Connect),
        1 => "[A-Za-z_-]{1,8}".prop_map(MethodInput::Other),
    ];
    let target = prop_oneof![
        6 => (
            any::<u16>(),
            prop::collection::vec(text_strategy(), 0..4),
            prop::option::of(text_strategy()),
        )
            .prop_map(|(route, params, query)| TargetInput::Route { route, params, query }),
        2 => target_strategy().prop_map(TargetInput::Raw),
        1 => prop::sample::select(&["", "/", "/health", "/health?x", "/metrics", "/x"][..])
            .prop_map(|s| TargetInput::Bridge(s.to_owned())),
    ];
    let token = prop_oneof![
        6 => Just(TokenInput::Valid),
        2 => Just(TokenInput::Missing),
        1 => Just(TokenInput::Twice),
        1 => text_strategy().prop_map(TokenInput::Bearer),
        1 => prop::collection::vec(any::<u8>(), 0..40).prop_map(TokenInput::Raw),
    ];
    let header = (
        prop_oneof![
            6 => any::<u8>().prop_map(NameInput::Known),
            1 => "[a-zA-Z_-]{1,12}".prop_map(NameInput::Raw),
        ],
        prop_oneof![
            6 => any::<u8>().prop_map(ValueInput::Known),
            1 => prop::collection::vec(any::<u8>(), 0..20).prop_map(ValueInput::Raw),
        ],
    );
    let body = prop_oneof![
        4 => Just(BodyInput::None),
        2 => prop_oneof![Just(0u64), Just(2), Just(17), Just(1025), any::<u64>()]
            .prop_map(BodyInput::JsonLength),
        1 => Just(BodyInput::JsonChunked),
        1 => any::<u64>().prop_map(BodyInput::Length),
    ];
    (
        any::<u8>(),
        method,
        target,
        token,
        prop::collection::vec(header, 0..6),
        body,
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(policy, method, target, token, headers, body, skip_token_check)| PolicyInput {
                policy,
                method,
                target,
                token,
                headers,
                body,
                skip_token_check,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn structured_requests_keep_every_policy_invariant(input in policy_input_strategy()) {
        if let Err(violation) = invariants::check_policy_input(&input) {
            return Err(TestCaseError::fail(violation.to_string()));
        }
    }
}
