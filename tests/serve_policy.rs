//! The request policy as seen from outside (docs/reference.md §4): token, method, request target, framing,
//! content type, size and header limits. Every denial is checked on both sides: what the agent
//! got (status, JSON body, `x-bridge-error`) and that the upstream received nothing.
//!
//! Requests go over raw sockets so that bytes a normal client would fix up arrive as written.
//! Where hyper's HTTP/1 parser itself refuses a request before the bridge sees it (a raw NUL, a
//! space or a control byte in the request line, differing duplicate `Content-Length`, a
//! `Transfer-Encoding` not ending in `chunked`, more than 100 headers), hyper answers 400/431
//! with an empty body; those cases accept the status with either an empty body or the bridge's
//! JSON error, and still require that nothing was forwarded.

mod support;

use support::*;

const COMMENTS: &str = "/api/issues/ISS-1/comments";

fn assert_nothing_forwarded(upstream: &MockUpstream, what: &str) {
    let got = upstream.requests();
    assert!(
        got.is_empty(),
        "{what}: upstream must receive nothing, got {:?}",
        got.iter()
            .map(|r| format!("{} {}", r.method, r.target))
            .collect::<Vec<_>>()
    );
}

fn get_line(target: &str, token: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nhost: bridge\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
    )
    .into_bytes()
}

/// Targets the bridge itself must reject with 400 `invalid_path` (hyper lets all of them
/// through). Several would match an allowed route if the bridge normalised instead of rejecting.
fn bridge_rejected_targets() -> Vec<(&'static str, String)> {
    let mut cases: Vec<(&'static str, String)> = vec![
        ("encoded dot segment %2e", "/api/agents/%2e/me".into()),
        ("encoded dot segment %2E", "/api/agents/%2E/me".into()),
        ("mixed dot-dot .%2e", "/api/agents/me/.%2e/me".into()),
        ("mixed dot-dot %2e.", "/api/agents/me/%2e./me".into()),
        ("encoded dot-dot %2e%2e", "/api/agents/me/%2e%2e/me".into()),
        ("encoded dot-dot %2E%2E", "/api/agents/me/%2E%2E/me".into()),
        ("raw dot-dot", "/api/agents/me/../me".into()),
        ("raw dot-dot escaping", "/api/agents/../secrets".into()),
        ("raw dot", "/api/agents/./me".into()),
        ("trailing dot", "/api/agents/me/.".into()),
        ("trailing dot-dot", "/api/agents/me/..".into()),
        ("encoded slash %2f", "/api/issues/ISS-1%2fcomments".into()),
        ("encoded slash %2F", "/api/issues/ISS-1%2Fcomments".into()),
        (
            "encoded backslash %5c",
            "/api/issues/ISS-1%5ccomments".into(),
        ),
        (
            "encoded backslash %5C",
            "/api/issues/ISS-1%5Ccomments".into(),
        ),
        ("raw backslash", "/api/issues/ISS-1\\comments".into()),
        ("raw backslash dot-dot", "/api/agents/me\\..\\me".into()),
        ("encoded NUL", "/api/issues/ISS%001".into()),
        ("leading double slash", "//api/agents/me".into()),
        ("inner double slash", "/api//agents/me".into()),
        ("trailing double slash", "/api/agents/me//".into()),
        ("bad percent %zz", "/api/issues/%zz".into()),
        ("truncated percent %4", "/api/issues/ISS%4".into()),
        ("truncated percent at end", "/api/issues/ISS-1%".into()),
        ("half-hex percent %g1", "/api/issues/%g1".into()),
        ("absolute-form", "http://evil.example/api/agents/me".into()),
        (
            "absolute-form to itself",
            "http://127.0.0.1:1/api/agents/me".into(),
        ),
        (
            "path longer than 2048",
            format!("/api/issues/{}", "a".repeat(2048)),
        ),
        (
            "query longer than 4096",
            format!("/api/agents/me?q={}", "a".repeat(4100)),
        ),
    ];
    // Exactly one byte over each limit.
    let path_2049 = format!("/api/issues/{}", "p".repeat(2049 - "/api/issues/".len()));
    assert_eq!(path_2049.len(), 2049);
    cases.push(("path of 2049 bytes", path_2049));
    let query_4097 = format!("/api/agents/me?{}", "q".repeat(4097));
    cases.push(("query of 4097 bytes", query_4097));
    cases
}

#[test]
fn rejects_non_canonical_request_targets_with_invalid_path() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let mut failures = Vec::new();
    for (reason, target) in bridge_rejected_targets() {
        let resp = raw_request(bridge.addr, &get_line(&target, BRIDGE_TOKEN));
        let code = serde_json::from_slice::<serde_json::Value>(&resp.body)
            .ok()
            .and_then(|b| b["code"].as_str().map(str::to_string));
        if resp.status != 400
            || code.as_deref() != Some("invalid_path")
            || resp.header("x-bridge-error") != Some("invalid_path")
        {
            failures.push(format!(
                "{reason} ({}): expected 400 invalid_path, got {} {:?}",
                &target[..target.len().min(60)],
                resp.status,
                resp.text()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} targets misbehaved:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_nothing_forwarded(&upstream, "invalid targets");
}

#[test]
fn rejects_asterisk_form_target() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let resp = raw_request(
        bridge.addr,
        format!(
            "OPTIONS * HTTP/1.1\r\nhost: bridge\r\nauthorization: Bearer {BRIDGE_TOKEN}\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
    );
    resp.assert_bridge_error(400, "invalid_path");
    assert_nothing_forwarded(&upstream, "OPTIONS *");
}

#[test]
fn invalid_path_message_gives_the_reason() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let resp = raw_request(
        bridge.addr,
        &get_line("/api/agents/%2e%2e/secrets", BRIDGE_TOKEN),
    );
    resp.assert_bridge_error(400, "invalid_path");
    let message = resp.json()["error"].as_str().unwrap_or("").to_string();
    assert!(
        message.len() > "invalid path".len(),
        "docs/reference.md §4 step 4: the message carries the reason, got {message:?}"
    );
    assert_nothing_forwarded(&upstream, "encoded dot-dot");
}

#[test]
fn rejects_request_lines_the_http_parser_refuses() {
    // hyper refuses these bytes itself (400, empty body); the bridge may never see them.
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("raw NUL", b"/api/issues/ISS\x001".to_vec()),
        ("raw space", b"/api/issues/ISS 1".to_vec()),
        ("raw tab", b"/api/issues/ISS\t1".to_vec()),
        ("raw control byte", b"/api/issues/ISS\x011".to_vec()),
        ("raw DEL", b"/api/issues/ISS\x7f1".to_vec()),
        ("space in query", b"/api/agents/me?a=b c".to_vec()),
        ("backtick", b"/api/issues/ISS`1".to_vec()),
        ("angle brackets", b"/api/issues/<ISS>".to_vec()),
    ];
    for (reason, target) in cases {
        let mut bytes = b"GET ".to_vec();
        bytes.extend_from_slice(&target);
        bytes.extend_from_slice(
            format!(
                " HTTP/1.1\r\nhost: bridge\r\nauthorization: Bearer {BRIDGE_TOKEN}\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        let resp = raw_request(bridge.addr, &bytes);
        assert_eq!(
            resp.status,
            400,
            "{reason}: expected 400, got {} {:?}",
            resp.status,
            resp.text()
        );
        if !resp.body.is_empty() {
            let code = resp.json()["code"].clone();
            assert!(
                code == "invalid_path" || code == "bad_request",
                "{reason}: unexpected code {code}"
            );
        }
    }
    assert_nothing_forwarded(&upstream, "parser-refused request lines");
}

#[test]
fn accepts_path_and_query_exactly_at_their_limits() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let path = format!("/api/issues/{}", "p".repeat(2048 - "/api/issues/".len()));
    assert_eq!(path.len(), 2048);
    let resp = bridge.get(&path);
    assert_eq!(resp.status, 200, "2048-byte path: {:?}", resp.text());
    let target = format!("/api/agents/me?{}", "q".repeat(4096));
    let resp = bridge.get(&target);
    assert_eq!(resp.status, 200, "4096-byte query: {:?}", resp.text());
    let got = upstream.wait_for_requests(2);
    assert_eq!(got[0].target, path);
    assert_eq!(got[1].target, target);
}

#[test]
fn query_is_forwarded_byte_for_byte_without_interpretation() {
    // The path rules do not apply to the query: encoded slashes, dots and odd escapes pass.
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let target =
        "/api/companies/cmp-1/issues?q=..%2F..%2fetc&p=%2e%2E&r=a//b&s=%zz&t=%4&u=\\&v=%00";
    let resp = bridge.get(target);
    assert_eq!(resp.status, 200, "{:?}", resp.text());
    let got = upstream.wait_for_requests(1);
    assert_eq!(got[0].target, target);
}

#[test]
fn fragment_is_never_forwarded() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let resp = raw_request(
        bridge.addr,
        &get_line("/api/agents/me?a=1#frag-secret", BRIDGE_TOKEN),
    );
    match resp.status {
        400 => assert_nothing_forwarded(&upstream, "fragment"),
        200 => {
            let got = upstream.wait_for_requests(1);
            assert_eq!(got[0].target, "/api/agents/me?a=1");
        }
        other => panic!("fragment: expected 400 or a forward without it, got {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Token
// ---------------------------------------------------------------------------------------------

#[test]
fn rejects_missing_or_wrong_token_with_identical_401s() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let t = BRIDGE_TOKEN;
    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing", None),
        ("wrong token", Some("Bearer wrong-token".into())),
        ("empty value", Some(String::new())),
        ("scheme only", Some("Bearer".into())),
        ("scheme and space", Some("Bearer ".into())),
        ("lower-case scheme", Some(format!("bearer {t}"))),
        ("upper-case scheme", Some(format!("BEARER {t}"))),
        ("Basic scheme", Some(format!("Basic {t}"))),
        ("two spaces", Some(format!("Bearer  {t}"))),
        ("tab separator", Some(format!("Bearer\t{t}"))),
        ("no scheme", Some(t.to_string())),
        (
            "token prefix",
            Some(format!("Bearer {}", &t[..t.len() - 1])),
        ),
        ("token plus a byte", Some(format!("Bearer {t}x"))),
        ("token twice", Some(format!("Bearer {t} {t}"))),
        (
            "upstream credential",
            Some(format!("Bearer {UPSTREAM_TOKEN}")),
        ),
    ];
    let mut bodies = Vec::new();
    for (what, auth) in &cases {
        let mut req = String::from("GET /api/agents/me HTTP/1.1\r\nhost: bridge\r\n");
        if let Some(a) = auth {
            req.push_str(&format!("authorization: {a}\r\n"));
        }
        req.push_str("connection: close\r\n\r\n");
        let resp = raw_request(bridge.addr, req.as_bytes());
        assert_eq!(
            resp.status,
            401,
            "{what}: got {} {:?}",
            resp.status,
            resp.text()
        );
        resp.assert_bridge_error(401, "invalid_token");
        bodies.push((what, resp.body));
    }
    for (what, body) in &bodies {
        assert_eq!(
            body, &bodies[0].1,
            "401 bodies must not tell cases apart: {what} differs from missing"
        );
    }
    // The token is not accepted anywhere but the authorization header.
    for (what, req) in [
        (
            "token in query",
            format!("GET /api/agents/me?access_token={t} HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n"),
        ),
        (
            "token in x-api-key",
            format!("GET /api/agents/me HTTP/1.1\r\nhost: b\r\nx-api-key: {t}\r\nconnection: close\r\n\r\n"),
        ),
        (
            "token in proxy-authorization",
            format!("GET /api/agents/me HTTP/1.1\r\nhost: b\r\nproxy-authorization: Bearer {t}\r\nconnection: close\r\n\r\n"),
        ),
    ] {
        let resp = raw_request(bridge.addr, req.as_bytes());
        assert_eq!(resp.status, 401, "{what}: got {} {:?}", resp.status, resp.text());
        resp.assert_bridge_error(401, "invalid_token");
    }
    assert_nothing_forwarded(&upstream, "unauthenticated requests");
}

#[test]
fn checks_token_before_method_path_and_route() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    for (what, req) in [
        ("denied route", "GET /api/secrets HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n".to_string()),
        ("bad path", "GET /api/agents/%2e%2e/secrets HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n".to_string()),
        ("TRACE", "TRACE /api/agents/me HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n".to_string()),
        (
            "oversized body",
            "POST /api/issues/ISS-1/comments HTTP/1.1\r\nhost: b\r\ncontent-type: application/json\r\ncontent-length: 999999999\r\nconnection: close\r\n\r\n".to_string(),
        ),
    ] {
        let resp = raw_request(bridge.addr, req.as_bytes());
        assert_eq!(resp.status, 401, "{what} without token: got {} {:?}", resp.status, resp.text());
        resp.assert_bridge_error(401, "invalid_token");
    }
    assert_nothing_forwarded(&upstream, "unauthenticated requests");
}

#[test]
fn closes_the_connection_after_a_denial() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    for (what, req, status) in [
        ("401", "GET /api/agents/me HTTP/1.1\r\nhost: b\r\n\r\n".to_string(), 401),
        (
            "400",
            format!("GET /api/%2e%2e/x HTTP/1.1\r\nhost: b\r\nauthorization: Bearer {BRIDGE_TOKEN}\r\n\r\n"),
            400,
        ),
        (
            "405",
            format!("TRACE /api/agents/me HTTP/1.1\r\nhost: b\r\nauthorization: Bearer {BRIDGE_TOKEN}\r\n\r\n"),
            405,
        ),
    ] {
        let mut conn = RawConn::connect(bridge.addr);
        conn.write(req.as_bytes()).unwrap();
        let resp = conn.read_response(false).unwrap();
        assert_eq!(resp.status, status, "{what}");
        assert!(
            conn.closed_by_peer(),
            "docs/reference.md §4.1: the connection is closed after a {what} the bridge generated"
        );
    }
    assert_nothing_forwarded(&upstream, "denials");
}

// ---------------------------------------------------------------------------------------------
// Method
// ---------------------------------------------------------------------------------------------

#[test]
fn rejects_trace_track_and_connect_with_405() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    for (method, target) in [
        ("TRACE", "/api/agents/me"),
        ("TRACK", "/api/agents/me"),
        ("CONNECT", "upstream.example:443"),
        ("TRACE", "/api/secrets"),
    ] {
        let resp = raw_request(
            bridge.addr,
            format!(
                "{method} {target} HTTP/1.1\r\nhost: bridge\r\nauthorization: Bearer {BRIDGE_TOKEN}\r\nconnection: close\r\n\r\n"
            )
            .as_bytes(),
        );
        resp.assert_bridge_error(405, "method_not_allowed");
    }
    assert_nothing_forwarded(&upstream, "TRACE/TRACK/CONNECT");
}

#[test]
fn head_on_a_post_only_route_is_denied() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let resp = bridge.send(Req::new("HEAD", "/api/companies/cmp-1/email/send"));
    assert_eq!(resp.status, 403);
    assert_eq!(resp.header("x-bridge-error"), Some("route_not_allowed"));
    assert_nothing_forwarded(&upstream, "HEAD on POST route");
}

// ---------------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------------

fn post_head(extra: &str) -> String {
    format!(
        "POST {COMMENTS} HTTP/1.1\r\nhost: bridge\r\nauthorization: Bearer {BRIDGE_TOKEN}\r\ncontent-type: application/json\r\n{extra}connection: close\r\n\r\n"
    )
}

/// Asserts that whatever reached the upstream was framed by the bridge alone: one request at
/// most, never both `content-length` and `transfer-encoding`, at most one of each, and the body
/// as the agent meant it.
fn assert_reframed(upstream: &MockUpstream, what: &str, status: u16, expected_body: &[u8]) {
    match status {
        400 => assert_nothing_forwarded(upstream, what),
        200 => {
            let got = upstream.wait_for_requests(1);
            assert_eq!(got.len(), 1, "{what}: exactly one upstream request");
            let r = upstream.wait_for_body_end(0);
            let cl = r.header_all("content-length");
            let te = r.header_all("transfer-encoding");
            assert!(
                cl.is_empty() || te.is_empty(),
                "{what}: upstream got both content-length {cl:?} and transfer-encoding {te:?}"
            );
            assert!(
                cl.len() <= 1 && te.len() <= 1,
                "{what}: duplicated framing headers"
            );
            if let Some(te) = te.first() {
                assert_eq!(te, "chunked", "{what}: upstream transfer-encoding");
            }
            assert_eq!(r.body, expected_body, "{what}: upstream body");
        }
        other => panic!("{what}: expected 400 or a correctly re-framed forward, got {other}"),
    }
}

#[test]
fn content_length_with_transfer_encoding_is_never_forwarded_with_both() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let body = b"{\"body\":\"hello\"}";
    let mut req = post_head("content-length: 3\r\ntransfer-encoding: chunked\r\n").into_bytes();
    req.extend_from_slice(&chunked(body, 5));
    let resp = raw_request(bridge.addr, &req);
    if resp.status == 400 && !resp.body.is_empty() {
        resp.assert_bridge_error(400, "bad_request");
    }
    assert_reframed(&upstream, "CL+TE", resp.status, body);
}

#[test]
fn rejects_ambiguous_or_unsupported_framing() {
    let body = b"{\"body\":\"hello\"}";
    let chunked_body = chunked(body, 4);
    let cases: Vec<(&str, String, Vec<u8>)> = vec![
        (
            "differing duplicate content-length",
            "content-length: 16\r\ncontent-length: 17\r\n".into(),
            body.to_vec(),
        ),
        (
            "transfer-encoding gzip, chunked",
            "transfer-encoding: gzip, chunked\r\n".into(),
            chunked_body.clone(),
        ),
        (
            "transfer-encoding chunked, chunked",
            "transfer-encoding: chunked, chunked\r\n".into(),
            chunked_body.clone(),
        ),
        (
            "transfer-encoding gzip",
            "transfer-encoding: gzip\r\n".into(),
            body.to_vec(),
        ),
        (
            "transfer-encoding identity",
            "transfer-encoding: identity\r\n".into(),
            body.to_vec(),
        ),
        (
            "transfer-encoding deflate, chunked",
            "transfer-encoding: deflate, chunked\r\n".into(),
            chunked_body.clone(),
        ),
    ];
    for (what, extra, payload) in cases {
        let upstream = MockUpstream::start();
        let bridge = Bridge::for_upstream(&upstream, &[]);
        let mut req = post_head(&extra).into_bytes();
        req.extend_from_slice(&payload);
        let resp = raw_request(bridge.addr, &req);
        resp.assert_status_maybe_from_parser(400, "bad_request");
        assert_nothing_forwarded(&upstream, what);
    }
}

#[test]
fn odd_but_resolvable_framing_is_rejected_or_reframed() {
    // docs/reference.md §4 step 6 accepts hyper's own resolution of these, provided the bridge re-frames.
    let body = b"{\"body\":\"hello\"}";
    let cases: Vec<(&str, String, Vec<u8>)> = vec![
        (
            "identical duplicate content-length",
            "content-length: 16\r\ncontent-length: 16\r\n".into(),
            body.to_vec(),
        ),
        (
            "two transfer-encoding: chunked headers",
            "transfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n".into(),
            chunked(body, 4),
        ),
    ];
    for (what, extra, payload) in cases {
        let upstream = MockUpstream::start();
        let bridge = Bridge::for_upstream(&upstream, &[]);
        let mut req = post_head(&extra).into_bytes();
        req.extend_from_slice(&payload);
        let resp = raw_request(bridge.addr, &req);
        if resp.status == 400 && !resp.body.is_empty() {
            resp.assert_bridge_error(400, "bad_request");
        }
        assert_reframed(&upstream, what, resp.status, body);
    }
}

#[test]
fn forwards_a_chunked_body_reframed() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let body = b"{\"body\":\"a chunked comment body\"}";
    let mut req = post_head("transfer-encoding: chunked\r\n").into_bytes();
    req.extend_from_slice(&chunked(body, 7));
    let resp = raw_request(bridge.addr, &req);
    assert_eq!(resp.status, 200, "{:?}", resp.text());
    assert_reframed(&upstream, "chunked", 200, body);
}

#[test]
fn rejects_a_body_on_get_and_head() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    for method in ["GET", "HEAD"] {
        let resp = raw_request(
            bridge.addr,
            format!(
                "{method} /api/agents/me HTTP/1.1\r\nhost: b\r\nauthorization: Bearer {BRIDGE_TOKEN}\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
            )
            .as_bytes(),
        );
        assert_eq!(resp.status, 400, "{method} with body: {:?}", resp.text());
        if method == "GET" {
            resp.assert_bridge_error(400, "bad_request");
        } else {
            assert_eq!(resp.header("x-bridge-error"), Some("bad_request"));
        }
    }
    let resp = raw_request(
        bridge.addr,
        format!(
            "GET /api/agents/me HTTP/1.1\r\nhost: b\r\nauthorization: Bearer {BRIDGE_TOKEN}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
        )
        .as_bytes(),
    );
    resp.assert_bridge_error(400, "bad_request");
    assert_nothing_forwarded(&upstream, "GET/HEAD with a body");
}

#[test]
fn get_with_zero_content_length_is_forwarded_without_body() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let resp = bridge.send(Req::new("GET", "/api/agents/me").header("content-length", "0"));
    assert_eq!(resp.status, 200, "{:?}", resp.text());
    let got = upstream.wait_for_requests(1);
    assert!(got[0].body.is_empty());
    assert!(!got[0].has_header("transfer-encoding"));
}

// ---------------------------------------------------------------------------------------------
// Content type
// ---------------------------------------------------------------------------------------------

#[test]
fn rejects_bodies_with_unsupported_content_types() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let (multipart_ct, multipart_body) = multipart_file("a.txt", b"hello");
    let cases: Vec<(&str, Option<&str>, Vec<u8>)> = vec![
        ("text/plain", Some("text/plain"), b"hello".to_vec()),
        (
            "multipart on a JSON route",
            Some(multipart_ct.as_str()),
            multipart_body,
        ),
        (
            "form-urlencoded",
            Some("application/x-www-form-urlencoded"),
            b"a=b".to_vec(),
        ),
        (
            "octet-stream",
            Some("application/octet-stream"),
            b"\x00\x01".to_vec(),
        ),
        ("no content type", None, b"{}".to_vec()),
        (
            "application/jsonx",
            Some("application/jsonx"),
            b"{}".to_vec(),
        ),
        ("text/json", Some("text/json"), b"{}".to_vec()),
        (
            "json as parameter only",
            Some("text/plain; x=application/json"),
            b"{}".to_vec(),
        ),
    ];
    for (what, ct, body) in cases {
        let mut req = format!(
            "POST {COMMENTS} HTTP/1.1\r\nhost: b\r\nauthorization: Bearer {BRIDGE_TOKEN}\r\ncontent-length: {}\r\nconnection: close\r\n",
            body.len()
        );
        if let Some(ct) = ct {
            req.push_str(&format!("content-type: {ct}\r\n"));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(&body);
        let resp = raw_request(bridge.addr, &bytes);
        assert_eq!(
            resp.status,
            415,
            "{what}: got {} {:?}",
            resp.status,
            resp.text()
        );
        resp.assert_bridge_error(415, "unsupported_media_type");
    }
    assert_nothing_forwarded(&upstream, "unsupported content types");
}

#[test]
fn accepts_json_content_types_with_parameters_and_suffix() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let cts = [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON;charset=UTF-8",
        "application/merge-patch+json",
        "application/vnd.paperclip.comment+json; charset=utf-8",
    ];
    for (i, ct) in cts.iter().enumerate() {
        let resp = bridge.send(Req::new("POST", COMMENTS).body(ct, b"{\"body\":\"x\"}".to_vec()));
        assert_eq!(resp.status, 200, "content-type {ct:?}: {:?}", resp.text());
        let got = upstream.wait_for_requests(i + 1);
        assert_eq!(got[i].header("content-type").as_deref(), Some(*ct));
    }
}

#[test]
fn upload_route_accepts_multipart() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let (ct, body) = multipart_file("report.pdf", b"%PDF-1.7 fake");
    let resp = bridge.send(
        Req::new("POST", "/api/companies/cmp-1/issues/ISS-1/attachments").body(&ct, body.clone()),
    );
    assert_eq!(resp.status, 200, "{:?}", resp.text());
    let got = upstream.wait_for_requests(1);
    assert_eq!(got[0].body, body);
    assert_eq!(got[0].header("content-type"), Some(ct));
}

// ---------------------------------------------------------------------------------------------
// Size
// ---------------------------------------------------------------------------------------------

#[test]
fn rejects_declared_oversized_body_before_reading_it() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    // Only the head is sent: the 413 must come without the bridge waiting for the body.
    let head = post_head("content-length: 10551297\r\n");
    let mut conn = RawConn::connect(bridge.addr);
    conn.write(head.as_bytes()).unwrap();
    let resp = conn
        .read_response(false)
        .expect("the 413 must arrive while the body is still unsent");
    resp.assert_bridge_error(413, "body_too_large");
    assert_nothing_forwarded(&upstream, "declared oversized body");
}

#[test]
fn body_limit_is_inclusive() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &["--max-body-bytes", "1000"]);
    let body_of = |n: usize| {
        let mut s = String::from("{\"b\":\"");
        s.push_str(&"x".repeat(n - 8));
        s.push_str("\"}");
        assert_eq!(s.len(), n);
        s
    };
    let resp = bridge.send(Req::new("POST", COMMENTS).json(&body_of(1000)));
    assert_eq!(
        resp.status,
        200,
        "a body of exactly the limit is allowed: {:?}",
        resp.text()
    );
    let resp = bridge.send(Req::new("POST", COMMENTS).json(&body_of(1001)));
    resp.assert_bridge_error(413, "body_too_large");
    let got = upstream.requests();
    assert_eq!(got.len(), 1, "only the body within the limit is forwarded");
    assert_eq!(got[0].body.len(), 1000);
}

#[test]
fn rejects_chunked_body_that_grows_past_the_limit() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &["--max-body-bytes", "1000"]);
    let mut body = b"{\"b\":\"".to_vec();
    body.extend(std::iter::repeat_n(b'y', 5000));
    body.extend_from_slice(b"\"}");
    let mut req = post_head("transfer-encoding: chunked\r\n").into_bytes();
    req.extend_from_slice(&chunked(&body, 256));
    let resp = raw_request(bridge.addr, &req);
    resp.assert_bridge_error(413, "body_too_large");
    for i in 0..upstream.request_count() {
        let r = upstream.wait_for_body_end(i);
        assert!(
            !r.body_complete,
            "an over-limit chunked body must not be delivered complete upstream ({} bytes arrived)",
            r.body.len()
        );
        assert!(
            r.body.len() <= 1000,
            "upstream got {} bytes past the limit",
            r.body.len()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Header limits
// ---------------------------------------------------------------------------------------------

#[test]
fn rejects_more_than_100_headers_with_431() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let mut req = format!(
        "GET /api/agents/me HTTP/1.1\r\nhost: b\r\nauthorization: Bearer {BRIDGE_TOKEN}\r\nconnection: close\r\n"
    );
    for i in 0..101 {
        req.push_str(&format!("x-filler-{i}: v\r\n"));
    }
    req.push_str("\r\n");
    let resp = raw_request(bridge.addr, req.as_bytes());
    resp.assert_status_maybe_from_parser(431, "headers_too_large");
    assert_nothing_forwarded(&upstream, "101 headers");
}

#[test]
fn rejects_more_than_16_kib_of_header_data_with_431() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    for (what, extra) in [
        (
            "one 17 KiB header",
            format!("x-big: {}\r\n", "a".repeat(17 * 1024)),
        ),
        (
            "twenty 1 KiB headers",
            (0..20)
                .map(|i| format!("x-part-{i}: {}\r\n", "b".repeat(1024)))
                .collect::<String>(),
        ),
    ] {
        let req = format!(
            "GET /api/agents/me HTTP/1.1\r\nhost: b\r\nauthorization: Bearer {BRIDGE_TOKEN}\r\n{extra}connection: close\r\n\r\n"
        );
        let resp = raw_request(bridge.addr, req.as_bytes());
        assert_eq!(
            resp.status,
            431,
            "{what}: got {} {:?}",
            resp.status,
            resp.text()
        );
        resp.assert_status_maybe_from_parser(431, "headers_too_large");
    }
    assert_nothing_forwarded(&upstream, "oversized header data");
}
