//! Attacks on the request target: absolute- and asterisk-form, dot segments in every spelling
//! (`%2e`, double-encoded `%252e` and `%25%32%65`, overlong UTF-8 `%c0%ae`, `..;`), `;` path
//! parameters, Unicode look-alikes of literal segments, and very long paths and queries.
//!
//! Most targets below would reach an allowed route if the bridge normalised them (or if the
//! upstream decoded them once more); the bridge must refuse them outright — 400 `invalid_path`,
//! or 400 from hyper's parser for bytes it does not accept in a request line — and the upstream
//! must see nothing. Targets that are legitimately allowed are forwarded byte for byte.

mod support;

use support::attack::*;
use support::*;

/// `GET target` with the token on a fresh connection.
fn get(bridge: &Bridge, target: &str) -> Response {
    let mut conn = RawConn::connect(bridge.addr);
    let _ = conn.write(head("GET", target, "connection: close\r\n").as_bytes());
    conn.read_response(false)
        .unwrap_or_else(|e| panic!("no response to GET {target:?}: {e}"))
}

/// Sends each target to one bridge; every one must be refused with 400 and nothing forwarded.
fn assert_all_refused(cases: &[(&str, String)]) {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    for (what, target) in cases {
        let resp = get(&bridge, target);
        assert_eq!(
            resp.status,
            400,
            "{what}: GET {target:?} must be refused, got {} {:?}",
            resp.status,
            resp.text()
        );
        resp.assert_status_maybe_from_parser(400, "invalid_path");
        assert_upstream_saw_nothing(&upstream, what);
    }
}

#[test]
fn absolute_form_targets_are_refused_whatever_the_authority() {
    let upstream = MockUpstream::start();
    let authority = upstream.authority();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    for target in [
        format!("http://{authority}{ME}"),
        format!("http://evil.example{ME}"),
        format!("HTTP://evil.example{ME}"),
        format!("https://{authority}{ME}"),
        format!("http://user:pass@{authority}{ME}"),
        format!("//{authority}{ME}"),
        authority.clone(),
    ] {
        let resp = get(&bridge, &target);
        resp.assert_status_maybe_from_parser(400, "invalid_path");
        assert_upstream_saw_nothing(&upstream, &target);
    }
}

#[test]
fn asterisk_form_is_refused_for_every_method() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    for method in ["OPTIONS", "GET", "POST"] {
        let mut conn = RawConn::connect(bridge.addr);
        let _ = conn.write(head(method, "*", "connection: close\r\n").as_bytes());
        let resp = conn.read_response(false).unwrap();
        resp.assert_status_maybe_from_parser(400, "invalid_path");
    }
    assert_upstream_saw_nothing(&upstream, "asterisk-form");
}

#[test]
fn dot_segments_in_every_spelling_are_refused() {
    // Each one normalises (or decodes, once or twice) to an allowed route or to one outside the
    // allowlist: /api/agents/me, /api/issues/ISS-1, /api/companies/cmp-1/agents, /api/secrets.
    let cases: Vec<(&str, String)> = [
        ("raw ..", "/api/agents/x/../me"),
        ("raw .", "/api/agents/./me"),
        ("%2e%2e", "/api/agents/x/%2e%2e/me"),
        ("%2E%2E", "/api/agents/x/%2E%2E/me"),
        (".%2e", "/api/agents/x/.%2e/me"),
        ("%2e.", "/api/issues/x/%2e./ISS-1"),
        ("%2e", "/api/agents/%2e/me"),
        ("double-encoded %252e%252e", "/api/agents/x/%252e%252e/me"),
        ("double-encoded %252E", "/api/agents/%252E/me"),
        (
            "encoded hex digits %25%32%65",
            "/api/agents/x/%25%32%65%25%32%65/me",
        ),
        (
            "half-encoded hex digits %252%65",
            "/api/agents/x/%252%65%252%65/me",
        ),
        (
            "half-encoded hex digits %25%32e",
            "/api/agents/x/%25%32e%25%32e/me",
        ),
        ("overlong %c0%ae", "/api/agents/x/%c0%ae%c0%ae/me"),
        ("overlong %C0%AE", "/api/agents/x/%C0%AE/me"),
        ("overlong %e0%80%ae", "/api/agents/x/%e0%80%ae%e0%80%ae/me"),
        ("overlong %f0%80%80%ae", "/api/agents/x/%f0%80%80%ae/me"),
        ("overlong slash %c0%af", "/api/agents/x%c0%af..%c0%afme"),
        ("mixed overlong and raw", "/api/agents/x/.%c0%ae/me"),
        ("Tomcat ..;", "/api/agents/x/..;/me"),
        ("Tomcat ..;param", "/api/issues/x/..;jsessionid=1/ISS-1"),
        ("encoded ; %3b", "/api/agents/x/..%3b/me"),
        ("encoded dot and ;", "/api/agents/x/%2e%2e;/me"),
        ("trailing ..", "/api/agents/me/.."),
        (
            "escape to a forbidden route",
            "/api/issues/ISS-1/../../companies/cmp-1/agents",
        ),
        (
            "encoded slash traversal",
            "/api/agents/me%2f..%2f..%2fsecrets",
        ),
        (
            "encoded backslash traversal",
            "/api/agents/me%5c..%5c..%5csecrets",
        ),
        ("raw backslash traversal", "/api/agents/me\\..\\secrets"),
        ("NUL truncation", "/api/agents/me%00/../secrets"),
        ("empty segment", "/api/agents//me"),
        ("leading //", "//api/agents/me"),
    ]
    .into_iter()
    .map(|(w, t)| (w, t.to_owned()))
    .collect();
    assert_all_refused(&cases);
}

#[test]
fn path_parameters_never_change_which_route_matches() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    // In a parameter position `;` is just part of the id: forwarded byte for byte.
    for target in ["/api/agents/me;x=1", "/api/issues/ISS-1;v=2/comments"] {
        let before = upstream.request_count();
        let resp = get(&bridge, target);
        assert_eq!(resp.status, 200, "{target}: {:?}", resp.text());
        let got = upstream.wait_for_requests(before + 1);
        assert_well_formed_forward(&got[before], &upstream, "GET", target);
    }
    let forwarded = upstream.request_count();
    // In a literal position it never matches the literal.
    for target in [
        "/api;x=1/agents/me",
        "/api/agents;x=1/me",
        "/api/companies/cmp-1/agents;x=1",
        "/api/issues/ISS-1/comments;.json",
    ] {
        let resp = get(&bridge, target);
        resp.assert_bridge_error(403, "route_not_allowed");
    }
    assert_eq!(
        upstream.request_count(),
        forwarded,
        "no denied target was forwarded"
    );
}

#[test]
fn unicode_look_alikes_of_literal_segments_never_match() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    // Percent-encoded look-alikes are valid targets but can only ever fill a parameter: as a
    // literal they are refused by the route table.
    for target in [
        "/api/%D0%B0gents/me",       // Cyrillic а
        "/api/%EF%BD%81gents/me",    // fullwidth ａ
        "/api/agents%E2%88%95me",    // division slash ∕
        "/api/agents%EF%BC%8Fme",    // fullwidth solidus ／
        "/api/agents/me%E2%80%8B/x", // zero-width space
        "/api/a%CC%81gents/me",      // combining accent
        "/API/agents/me",            // case
        "/api/Agents/me",
        "/api/%61gents/me", // plain ASCII, encoded
    ] {
        let resp = get(&bridge, target);
        resp.assert_bridge_error(403, "route_not_allowed");
    }
    assert_upstream_saw_nothing(&upstream, "encoded look-alikes");
    // Raw UTF-8 bytes in the path are refused before any route is looked at.
    for target in [
        "/api/\u{430}gents/me",
        "/api/agents\u{2215}me",
        "/api/agents/\u{ff0e}\u{ff0e}/secrets",
        "/api/\u{ff41}gents/me",
    ] {
        let resp = get(&bridge, target);
        resp.assert_status_maybe_from_parser(400, "invalid_path");
    }
    assert_upstream_saw_nothing(&upstream, "raw look-alikes");
}

#[test]
fn very_long_paths_and_queries_are_refused_and_the_bridge_keeps_serving() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let id = |n: usize| "a".repeat(n);
    let cases: [(&str, String); 6] = [
        (
            "path one byte over 2 KiB",
            format!("/api/agents/{}", id(2048 - 12 + 1)),
        ),
        ("path of 64 KiB", format!("/api/agents/{}", id(64 * 1024))),
        ("path of 1 MiB", format!("/api/agents/{}", id(1024 * 1024))),
        (
            "query one byte over 4 KiB",
            format!("{ME}?q={}", id(4096 - 2 + 1)),
        ),
        ("query of 64 KiB", format!("{ME}?q={}", id(64 * 1024))),
        (
            "many segments",
            format!("/api/agents{}", "/a".repeat(20_000)),
        ),
    ];
    for (what, target) in &cases {
        let mut conn = RawConn::connect(bridge.addr);
        let _ = conn.write(head("GET", target, "connection: close\r\n").as_bytes());
        match conn.read_response(false) {
            Ok(resp) => {
                // The bridge's own 400, or hyper's 414/431/400 for a head too large to buffer.
                assert!(
                    matches!(resp.status, 400 | 414 | 431),
                    "{what}: got {} {:?}",
                    resp.status,
                    resp.text()
                );
                if resp.status == 400 && !resp.body.is_empty() {
                    resp.assert_bridge_error(400, "invalid_path");
                }
            }
            // A head past hyper's buffer may be cut off with a reset instead of an answer.
            Err(e) => assert!(
                target.len() > 400 * 1024,
                "{what}: no response ({e}) for a {}-byte target",
                target.len()
            ),
        }
        assert_upstream_saw_nothing(&upstream, what);
    }
    // Exactly at the limits, the target is forwarded byte for byte.
    for target in [
        format!("/api/agents/{}", id(2048 - 12)),
        format!("{ME}?q={}", id(4096 - 2)),
    ] {
        let before = upstream.request_count();
        assert_eq!(get(&bridge, &target).status, 200);
        let got = upstream.wait_for_requests(before + 1);
        assert_well_formed_forward(&got[before], &upstream, "GET", &target);
    }
}
