//! Attacks through request headers: `_` aliases of dangerous names, case and spacing variants
//! of `authorization`, `Host` and `X-Forwarded-*` spoofing, hop-by-hop nomination.
//!
//! The bridge compares header names case-insensitively, accepts only `Authorization: Bearer
//! <token>` exactly once, forwards only the allowlist and sets `host` and the credential itself.
//! Each case asserts the agent's status and, on the upstream side, that nothing arrived or that
//! exactly one request arrived with the configured host, the injected credential and no
//! caller-supplied identity or routing header.

mod support;

use support::attack::*;
use support::*;

/// `GET /api/agents/me` with exactly these header lines (no token added) on a fresh connection.
fn get_with(bridge: &Bridge, headers: &str) -> Response {
    raw_request(
        bridge.addr,
        format!("GET {ME} HTTP/1.1\r\nhost: bridge.test\r\n{headers}connection: close\r\n\r\n")
            .as_bytes(),
    )
}

#[test]
fn underscore_aliases_of_dangerous_headers_are_dropped() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let resp = get_with(
        &bridge,
        &format!(
            "{}x_api_key: stolen\r\nx_forwarded_for: 10.0.0.1\r\nx_forwarded_host: evil.example\r\n\
             content_type: text/html\r\nidempotency_key: k\r\nproxy_authorization: Basic eA==\r\n\
             x_paperclip_run_id: other-run\r\nx_paperclip_github_capability: cap\r\n",
            auth_line()
        ),
    );
    assert_eq!(resp.status, 200, "{:?}", resp.text());
    let r = assert_forwarded_once(&upstream, "GET", ME, b"");
    assert!(
        r.header_names().iter().all(|n| !n.contains('_')),
        "a name with '_' was forwarded: {:?}",
        r.header_names()
    );
}

#[test]
fn authorization_header_name_is_case_insensitive_but_the_value_is_exact() {
    let token = BRIDGE_TOKEN;
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    // Any case of the name carries the token; the caller's value is never forwarded.
    for name in ["AUTHORIZATION", "Authorization", "aUtHoRiZaTiOn"] {
        let before = upstream.request_count();
        let resp = get_with(&bridge, &format!("{name}: Bearer {token}\r\n"));
        assert_eq!(resp.status, 200, "{name}: {:?}", resp.text());
        let got = upstream.wait_for_requests(before + 1);
        assert_well_formed_forward(&got[before], &upstream, "GET", ME);
    }
    let forwarded = upstream.request_count();
    // Everything else is one identical 401: scheme case, spacing, duplicates, other names.
    for (what, headers) in [
        (
            "lower-case scheme",
            format!("authorization: bearer {token}\r\n"),
        ),
        (
            "upper-case scheme",
            format!("authorization: BEARER {token}\r\n"),
        ),
        ("two spaces", format!("authorization: Bearer  {token}\r\n")),
        (
            "tab separator",
            format!("authorization: Bearer\t{token}\r\n"),
        ),
        ("no scheme", format!("authorization: {token}\r\n")),
        ("Basic scheme", format!("authorization: Basic {token}\r\n")),
        (
            "token prefix",
            format!("authorization: Bearer {}\r\n", &token[..token.len() - 1]),
        ),
        (
            "token suffix",
            format!("authorization: Bearer {token}x\r\n"),
        ),
        (
            "right token twice",
            format!("authorization: Bearer {token}\r\nAuthorization: Bearer {token}\r\n"),
        ),
        (
            "right and wrong",
            format!("authorization: Bearer {token}\r\nauthorization: Bearer wrong\r\n"),
        ),
        (
            "wrong and right",
            format!("Authorization: Bearer wrong\r\nauthorization: Bearer {token}\r\n"),
        ),
        (
            "comma-joined list",
            format!("authorization: Bearer {token}, Bearer {token}\r\n"),
        ),
        (
            "underscore name",
            format!("authorization_: Bearer {token}\r\n"),
        ),
        (
            "proxy-authorization",
            format!("proxy-authorization: Bearer {token}\r\n"),
        ),
        (
            "x-authorization",
            format!("x-authorization: Bearer {token}\r\n"),
        ),
        ("cookie", format!("cookie: token={token}\r\n")),
    ] {
        let resp = get_with(&bridge, &headers);
        resp.assert_bridge_error(401, "invalid_token");
        assert_eq!(
            resp.json()["error"],
            "Missing or invalid bridge token",
            "{what}: the 401 never says why"
        );
    }
    assert_eq!(upstream.request_count(), forwarded, "no 401 was forwarded");
}

#[test]
fn host_and_forwarding_headers_never_reach_the_upstream() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let spoofs = [
        "x-forwarded-host: evil.example\r\n",
        "x-forwarded-for: 10.0.0.1\r\nx-forwarded-proto: https\r\nx-forwarded-port: 443\r\n",
        "forwarded: for=10.0.0.1;host=evil.example;proto=https\r\n",
        "x-real-ip: 10.0.0.1\r\nx-client-ip: 10.0.0.1\r\ntrue-client-ip: 10.0.0.1\r\n",
        "x-original-url: /api/secrets\r\nx-rewrite-url: /api/secrets\r\n",
        "x-http-method-override: DELETE\r\nx-method-override: DELETE\r\n",
        "X-Forwarded-Host: evil.example\r\nX-FORWARDED-FOR: 10.0.0.1\r\n",
    ];
    for (i, extra) in spoofs.iter().enumerate() {
        let resp = get_with(&bridge, &format!("{}{extra}", auth_line()));
        assert_eq!(resp.status, 200, "{extra:?}: {:?}", resp.text());
        let got = upstream.wait_for_requests(i + 1);
        assert_well_formed_forward(&got[i], &upstream, "GET", ME);
    }
}

#[test]
fn spoofed_host_values_are_replaced_by_the_configured_upstream() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let heads = [
        format!("GET {ME} HTTP/1.1\r\nhost: evil.example\r\n{}connection: close\r\n\r\n", auth_line()),
        format!(
            "GET {ME} HTTP/1.1\r\nhost: evil.example\r\nhost: other.example\r\n{}connection: close\r\n\r\n",
            auth_line()
        ),
        format!("GET {ME} HTTP/1.1\r\nhost: {}\r\n{}connection: close\r\n\r\n", bridge.addr, auth_line()),
        format!("GET {ME} HTTP/1.1\r\nhost: evil.example:80@{}\r\n{}connection: close\r\n\r\n", upstream.authority(), auth_line()),
        format!("GET {ME} HTTP/1.1\r\nHOST: evil.example\r\n{}connection: close\r\n\r\n", auth_line()),
        format!("GET {ME} HTTP/1.1\r\n{}connection: close\r\n\r\n", auth_line()),
    ];
    let mut forwarded = 0;
    for bytes in &heads {
        let resp = raw_request(bridge.addr, bytes.as_bytes());
        if resp.status == 400 {
            // hyper may refuse a malformed or repeated Host outright.
            resp.assert_status_maybe_from_parser(400, "bad_request");
            assert_eq!(upstream.request_count(), forwarded, "{bytes:?}");
            continue;
        }
        assert_eq!(resp.status, 200, "{bytes:?}: {:?}", resp.text());
        forwarded += 1;
        let got = upstream.wait_for_requests(forwarded);
        assert_well_formed_forward(&got[forwarded - 1], &upstream, "GET", ME);
    }
    assert!(
        forwarded >= 3,
        "ordinary Host values are served, only their value is replaced"
    );
}

#[test]
fn connection_header_cannot_strip_or_smuggle_headers() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    // Nominating the token or host as hop-by-hop does not skip the token check or the host
    // rewrite; a nominated allowlisted header is dropped (it was meant for the bridge only).
    let resp = get_with(
        &bridge,
        &format!(
            "{}accept: application/json\r\nidempotency-key: k1\r\nconnection: authorization, host, idempotency-key\r\n",
            auth_line()
        ),
    );
    assert_eq!(resp.status, 200, "{:?}", resp.text());
    let r = assert_forwarded_once(&upstream, "GET", ME, b"");
    assert_eq!(r.header("accept").as_deref(), Some("application/json"));
    assert!(
        !r.has_header("idempotency-key"),
        "a nominated header was forwarded"
    );
    assert!(!r.has_header("connection"), "connection is hop-by-hop");

    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    // An upgrade request is not tunnelled: it is an ordinary request with the headers dropped.
    let resp = get_with(
        &bridge,
        &format!(
            "{}connection: upgrade\r\nupgrade: websocket\r\nte: trailers\r\n",
            auth_line()
        ),
    );
    assert_eq!(resp.status, 200, "{:?}", resp.text());
    let r = assert_forwarded_once(&upstream, "GET", ME, b"");
    assert!(!r.has_header("upgrade") && !r.has_header("te"));
}
