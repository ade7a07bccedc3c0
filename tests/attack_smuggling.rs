//! Attacks on message framing and parsing: request smuggling (CL.TE, TE.CL, duplicate and
//! conflicting `Content-Length`, `Transfer-Encoding` variants), obs-fold, bare LF, NUL and CR
//! in header values, pipelining, HTTP/1.0 and `Expect: 100-continue`.
//!
//! The bridge parses with hyper and re-frames every forwarded request itself, so a desync can only
//! happen if bytes the bridge took for a body reach the upstream as a request, or a framing the
//! bridge misread reaches the upstream as written. Each case therefore asserts what the agent got
//! (a 400 — from the bridge or hyper's parser — or a normal answer) *and* what the upstream saw:
//! nothing, or exactly the one request the agent meant, framed by the bridge, never the smuggled
//! one. Where docs/reference.md §4 step 6 lets hyper resolve a case safely, both outcomes are accepted.

mod support;

use support::attack::*;
use support::*;

/// The JSON body of the comment requests below.
const BODY: &[u8] = br#"{"body":"hello"}"#;

/// A complete request for a route that is never allowed, carried as "body" by the desync cases.
fn smuggled() -> String {
    format!(
        "POST {FORBIDDEN} HTTP/1.1\r\nhost: x\r\n{}content-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}",
        auth_line()
    )
}

/// What a framing case may lead to.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    /// 400, from the bridge (`bad_request`) or hyper's parser; the connection is closed; the
    /// upstream sees nothing.
    Rejected,
    /// Either [`Outcome::Rejected`], or one forwarded request whose body is exactly this (hyper
    /// resolved the framing and the bridge re-framed it).
    RejectedOrForwarded(&'static [u8]),
    /// Forwarded once with exactly this body.
    Forwarded(&'static [u8]),
}

/// Sends `bytes` on a fresh connection to a fresh bridge and checks both sides per `outcome`:
/// the agent gets exactly one response and then the connection is closed (every request here
/// carries `connection: close` or is refused), and the smuggled request never reaches the
/// upstream.
fn check_framing_case(what: &str, bytes: &[u8], outcome: Outcome) {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let mut conn = RawConn::connect(bridge.addr);
    let _ = conn.write(bytes);
    let responses = responses_until_close(&mut conn);
    assert_eq!(
        responses.len(),
        1,
        "{what}: exactly one response, then the connection is closed; got {:?}",
        responses.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let resp = &responses[0];
    let rejected = resp.status == 400;
    match outcome {
        Outcome::Rejected => {
            resp.assert_status_maybe_from_parser(400, "bad_request");
        }
        Outcome::RejectedOrForwarded(_) if rejected => {
            resp.assert_status_maybe_from_parser(400, "bad_request");
        }
        Outcome::RejectedOrForwarded(_) | Outcome::Forwarded(_) => {
            assert_eq!(resp.status, 200, "{what}: {:?}", resp.text());
        }
    }
    match outcome {
        Outcome::Rejected => assert_upstream_saw_nothing(&upstream, what),
        Outcome::RejectedOrForwarded(_) if rejected => assert_upstream_saw_nothing(&upstream, what),
        Outcome::RejectedOrForwarded(body) | Outcome::Forwarded(body) => {
            assert_forwarded_once(&upstream, "POST", COMMENTS, body);
        }
    }
    // Nothing else arrives later either: a fresh request is the only other one the upstream sees.
    assert_eq!(
        bridge.get(ME).status,
        200,
        "{what}: the bridge still serves"
    );
    let all = upstream.requests();
    assert!(
        all.iter().all(|r| r.target != FORBIDDEN),
        "{what}: the smuggled request reached the upstream"
    );
    assert_eq!(all.last().map(|r| r.target.as_str()), Some(ME), "{what}");
}

/// A `POST` of the comments route with JSON content type, then `extra` header lines.
fn post(extra: &str) -> String {
    head(
        "POST",
        COMMENTS,
        &format!("content-type: application/json\r\n{extra}connection: close\r\n"),
    )
}

#[test]
fn cl_te_desync_never_delivers_the_smuggled_request() {
    // Classic CL.TE: Content-Length covers the whole payload, chunked ends after "0\r\n\r\n".
    let payload = format!("0\r\n\r\n{}", smuggled());
    for (what, framing) in [
        (
            "CL then TE",
            format!(
                "content-length: {}\r\ntransfer-encoding: chunked\r\n",
                payload.len()
            ),
        ),
        (
            "TE then CL",
            format!(
                "transfer-encoding: chunked\r\ncontent-length: {}\r\n",
                payload.len()
            ),
        ),
    ] {
        let bytes = format!("{}{payload}", post(&framing));
        // hyper lets Transfer-Encoding win, drops Content-Length and closes after the response
        // (docs/reference.md §4 step 6): the upstream gets the empty chunked body, never the smuggled request.
        check_framing_case(what, bytes.as_bytes(), Outcome::RejectedOrForwarded(b""));
    }
}

#[test]
fn te_cl_desync_never_delivers_the_smuggled_request() {
    // Classic TE.CL: Content-Length stops inside the chunk, whose data is a whole request.
    let inner = smuggled();
    let payload = format!("{:x}\r\n{inner}\r\n0\r\n\r\n", inner.len());
    let bytes = format!(
        "{}{payload}",
        post("transfer-encoding: chunked\r\ncontent-length: 4\r\n")
    );
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let mut conn = RawConn::connect(bridge.addr);
    let _ = conn.write(bytes.as_bytes());
    let responses = responses_until_close(&mut conn);
    assert_eq!(responses.len(), 1, "one response, then close");
    if responses[0].status == 400 {
        responses[0].assert_status_maybe_from_parser(400, "bad_request");
        assert_upstream_saw_nothing(&upstream, "TE.CL");
    } else {
        assert_eq!(responses[0].status, 200);
        // The chunk's bytes are body data of one request, framed by the bridge: the upstream's
        // parser never sees them as a request line.
        assert_forwarded_once(&upstream, "POST", COMMENTS, inner.as_bytes());
    }
    assert!(upstream.requests().iter().all(|r| r.target != FORBIDDEN));
}

#[test]
fn duplicate_and_conflicting_content_length_are_refused_or_resolved() {
    let cases: [(&str, &str, Outcome); 11] = [
        (
            "identical duplicates",
            "content-length: 16\r\ncontent-length: 16\r\n",
            Outcome::RejectedOrForwarded(BODY),
        ),
        (
            "conflicting duplicates",
            "content-length: 16\r\ncontent-length: 2\r\n",
            Outcome::Rejected,
        ),
        (
            "conflicting, larger second",
            "content-length: 2\r\ncontent-length: 16\r\n",
            Outcome::Rejected,
        ),
        (
            "identical list",
            "content-length: 16, 16\r\n",
            Outcome::Rejected,
        ),
        (
            "conflicting list",
            "content-length: 16, 2\r\n",
            Outcome::Rejected,
        ),
        ("plus sign", "content-length: +16\r\n", Outcome::Rejected),
        ("hex", "content-length: 0x10\r\n", Outcome::Rejected),
        ("negative", "content-length: -1\r\n", Outcome::Rejected),
        (
            "overflowing u64",
            "content-length: 18446744073709551632\r\n",
            Outcome::Rejected,
        ),
        ("empty", "content-length: \r\n", Outcome::Rejected),
        (
            "underscore alias is not framing",
            "content_length: 2\r\ncontent-length: 16\r\n",
            Outcome::Forwarded(BODY),
        ),
    ];
    for (what, framing, outcome) in cases {
        let mut bytes = post(framing).into_bytes();
        bytes.extend_from_slice(BODY);
        check_framing_case(what, &bytes, outcome);
    }
}

#[test]
fn transfer_encoding_variants_are_refused_or_reframed() {
    let chunked_body = chunked(BODY, 5);
    let cases: [(&str, &str, Outcome); 15] = [
        (
            "chunked, identity",
            "transfer-encoding: chunked, identity\r\n",
            Outcome::Rejected,
        ),
        (
            "identity, chunked",
            "transfer-encoding: identity, chunked\r\n",
            Outcome::Rejected,
        ),
        (
            "xchunked",
            "transfer-encoding: xchunked\r\n",
            Outcome::Rejected,
        ),
        (
            "chunkedx",
            "transfer-encoding: chunkedx\r\n",
            Outcome::Rejected,
        ),
        (
            "quoted",
            "transfer-encoding: \"chunked\"\r\n",
            Outcome::Rejected,
        ),
        (
            "parameter",
            "transfer-encoding: chunked;q=1\r\n",
            Outcome::Rejected,
        ),
        (
            "two lines, identity last",
            "transfer-encoding: chunked\r\ntransfer-encoding: identity\r\n",
            Outcome::Rejected,
        ),
        (
            "two lines, chunked last",
            "transfer-encoding: identity\r\ntransfer-encoding: chunked\r\n",
            Outcome::Rejected,
        ),
        (
            "vertical tab",
            "transfer-encoding:\x0bchunked\r\n",
            Outcome::Rejected,
        ),
        (
            "space before the colon",
            "transfer-encoding : chunked\r\n",
            Outcome::Rejected,
        ),
        (
            "upper case",
            "TRANSFER-ENCODING: CHUNKED\r\n",
            Outcome::RejectedOrForwarded(BODY),
        ),
        (
            "mixed case",
            "Transfer-Encoding: Chunked\r\n",
            Outcome::RejectedOrForwarded(BODY),
        ),
        (
            "leading space",
            "transfer-encoding:    chunked\r\n",
            Outcome::RejectedOrForwarded(BODY),
        ),
        (
            "leading tab",
            "transfer-encoding:\tchunked\r\n",
            Outcome::RejectedOrForwarded(BODY),
        ),
        (
            "trailing whitespace",
            "transfer-encoding: chunked \t\r\n",
            Outcome::RejectedOrForwarded(BODY),
        ),
    ];
    for (what, framing, outcome) in cases {
        let mut bytes = post(framing).into_bytes();
        bytes.extend_from_slice(&chunked_body);
        check_framing_case(what, &bytes, outcome);
    }
}

#[test]
fn underscore_transfer_encoding_is_an_ordinary_dropped_header() {
    // Servers that alias `_` to `-` would see chunked framing here; the bridge frames by
    // Content-Length and never forwards the alias.
    let mut bytes = post("transfer_encoding: chunked\r\ncontent-length: 16\r\n").into_bytes();
    bytes.extend_from_slice(BODY);
    check_framing_case("transfer_encoding alias", &bytes, Outcome::Forwarded(BODY));
}

#[test]
fn obs_fold_continuation_lines_are_refused() {
    let token = BRIDGE_TOKEN;
    let cases = [
        (
            "folded allowlisted header hides a forwarding header",
            format!("GET {ME} HTTP/1.1\r\nhost: b\r\nauthorization: Bearer {token}\r\naccept: application/json\r\n x-forwarded-host: evil\r\nconnection: close\r\n\r\n"),
        ),
        (
            "folded token",
            format!("GET {ME} HTTP/1.1\r\nhost: b\r\nauthorization: Bearer\r\n {token}\r\nconnection: close\r\n\r\n"),
        ),
        (
            "folded transfer-encoding",
            format!("POST {COMMENTS} HTTP/1.1\r\nhost: b\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ntransfer-encoding: identity\r\n\tchunked\r\nconnection: close\r\n\r\n0\r\n\r\n"),
        ),
    ];
    for (what, bytes) in cases {
        let upstream = MockUpstream::start();
        let bridge = Bridge::for_upstream(&upstream, &[]);
        let resp = raw_request(bridge.addr, bytes.as_bytes());
        assert!(
            matches!(resp.status, 400 | 401),
            "{what}: expected 400 (parser) or 401, got {} {:?}",
            resp.status,
            resp.text()
        );
        if resp.status == 401 {
            resp.assert_bridge_error(401, "invalid_token");
        } else {
            resp.assert_status_maybe_from_parser(400, "bad_request");
        }
        assert_upstream_saw_nothing(&upstream, what);
    }
}

#[test]
fn bare_lf_line_endings_never_smuggle_headers_upstream() {
    let token = BRIDGE_TOKEN;
    let cases = [
        (
            "bare LF everywhere",
            format!("GET {ME} HTTP/1.1\nhost: b\nauthorization: Bearer {token}\nconnection: close\n\n"),
        ),
        (
            "bare LF splits a header line into host + forwarding headers",
            format!("GET {ME} HTTP/1.1\r\nhost: b\r\nauthorization: Bearer {token}\r\naccept: application/json\nhost: evil.example\nx-forwarded-host: evil.example\r\nconnection: close\r\n\r\n"),
        ),
        (
            "bare LF in the request line",
            format!("GET {ME} HTTP/1.1\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"),
        ),
    ];
    for (what, bytes) in cases {
        let upstream = MockUpstream::start();
        let bridge = Bridge::for_upstream(&upstream, &[]);
        let resp = raw_request(bridge.addr, bytes.as_bytes());
        if resp.status == 400 {
            resp.assert_status_maybe_from_parser(400, "bad_request");
            assert_upstream_saw_nothing(&upstream, what);
        } else {
            // Read leniently as separate lines: still exactly one request, re-serialised by the
            // bridge with CRLF, the configured host and no forwarding header.
            assert_eq!(resp.status, 200, "{what}: {:?}", resp.text());
            assert_forwarded_once(&upstream, "GET", ME, b"");
        }
    }
}

#[test]
fn nul_and_cr_inside_header_values_are_refused() {
    let token = BRIDGE_TOKEN;
    let cases = [
        (
            "NUL in an allowlisted value",
            format!("accept: application/json\0x\r\nauthorization: Bearer {token}\r\n"),
        ),
        (
            "NUL after the token",
            format!("authorization: Bearer {token}\0\r\n"),
        ),
        (
            "NUL in a dropped header",
            format!("authorization: Bearer {token}\r\nx-custom: a\0b\r\n"),
        ),
        (
            "bare CR in a value",
            format!("authorization: Bearer {token}\r\naccept: a\rhost: evil.example\r\n"),
        ),
        (
            "bare CR after the token",
            format!("authorization: Bearer {token}\r\r\n"),
        ),
        (
            "CR in the header name",
            format!("authorization: Bearer {token}\r\nx-a\rb: 1\r\n"),
        ),
    ];
    for (what, headers) in cases {
        let upstream = MockUpstream::start();
        let bridge = Bridge::for_upstream(&upstream, &[]);
        let bytes = format!("GET {ME} HTTP/1.1\r\nhost: b\r\n{headers}connection: close\r\n\r\n");
        let resp = raw_request(bridge.addr, bytes.as_bytes());
        assert!(
            matches!(resp.status, 400 | 401),
            "{what}: expected 400 (parser) or 401, got {} {:?}",
            resp.status,
            resp.text()
        );
        if resp.status == 401 {
            resp.assert_bridge_error(401, "invalid_token");
        } else {
            resp.assert_status_maybe_from_parser(400, "bad_request");
        }
        assert_upstream_saw_nothing(&upstream, what);
    }
}

#[test]
fn pipelined_forbidden_request_is_answered_alone_and_never_forwarded() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    // Three requests in one write on a keep-alive connection: allowed, forbidden, allowed.
    let mut bytes = head("GET", ME, "");
    bytes.push_str(&head(
        "POST",
        FORBIDDEN,
        "content-type: application/json\r\ncontent-length: 2\r\n",
    ));
    bytes.push_str("{}");
    bytes.push_str(&head("GET", "/api/issues/ISS-2", "connection: close\r\n"));
    let mut conn = RawConn::connect(bridge.addr);
    conn.write(bytes.as_bytes()).unwrap();
    let responses = responses_until_close(&mut conn);
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [200, 403, 200],
        "one response per request, in order"
    );
    responses[1].assert_bridge_error(403, "route_not_allowed");
    let got = upstream.wait_for_requests(2);
    let lines: Vec<(&str, &str)> = got
        .iter()
        .map(|r| (r.method.as_str(), r.target.as_str()))
        .collect();
    assert_eq!(lines, [("GET", ME), ("GET", "/api/issues/ISS-2")]);
    for r in &got {
        assert_well_formed_forward(r, &upstream, "GET", &r.target);
    }
}

#[test]
fn pipelined_request_after_a_401_is_never_read() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    // The second request has no token: 401 closes the connection, so the third is never parsed.
    let mut bytes = head("GET", ME, "");
    bytes.push_str(&format!("GET {ME} HTTP/1.1\r\nhost: b\r\n\r\n"));
    bytes.push_str(&head("GET", "/api/issues/ISS-2", ""));
    let mut conn = RawConn::connect(bridge.addr);
    conn.write(bytes.as_bytes()).unwrap();
    let responses = responses_until_close(&mut conn);
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 401]);
    responses[1].assert_bridge_error(401, "invalid_token");
    let got = upstream.requests();
    assert_eq!(got.len(), 1, "only the first request was forwarded");
    assert_well_formed_forward(&got[0], &upstream, "GET", ME);
}

#[test]
fn http_1_0_requests_are_served_and_reframed() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    // No Host header (optional in HTTP/1.0): the upstream still gets the configured one.
    let bytes = format!("GET {ME} HTTP/1.0\r\n{}\r\n", auth_line());
    let mut conn = RawConn::connect(bridge.addr);
    conn.write(bytes.as_bytes()).unwrap();
    let responses = responses_until_close(&mut conn);
    assert_eq!(
        responses.len(),
        1,
        "HTTP/1.0 without keep-alive: one response, then close"
    );
    assert_eq!(responses[0].status, 200, "{:?}", responses[0].text());
    assert_forwarded_once(&upstream, "GET", ME, b"");

    // A body with Content-Length is forwarded as is.
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let mut bytes = format!(
        "POST {COMMENTS} HTTP/1.0\r\n{}content-type: application/json\r\ncontent-length: 16\r\n\r\n",
        auth_line()
    )
    .into_bytes();
    bytes.extend_from_slice(BODY);
    assert_eq!(raw_request(bridge.addr, &bytes).status, 200);
    assert_forwarded_once(&upstream, "POST", COMMENTS, BODY);
}

#[test]
fn http_1_0_with_chunked_framing_is_refused() {
    // Transfer-Encoding does not exist in HTTP/1.0; a 1.0 peer would read the body differently.
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let mut bytes = format!(
        "POST {COMMENTS} HTTP/1.0\r\n{}content-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        auth_line()
    )
    .into_bytes();
    bytes.extend_from_slice(&chunked(BODY, 5));
    let mut conn = RawConn::connect(bridge.addr);
    let _ = conn.write(&bytes);
    let responses = responses_until_close(&mut conn);
    assert_eq!(responses.len(), 1);
    responses[0].assert_status_maybe_from_parser(400, "bad_request");
    assert_upstream_saw_nothing(&upstream, "HTTP/1.0 chunked");
}

#[test]
fn request_lines_without_a_usable_version_are_refused() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    for (what, line) in [
        ("HTTP/0.9 style", format!("GET {ME}\r\n")),
        ("HTTP/2.0 over HTTP/1", format!("GET {ME} HTTP/2.0\r\n")),
        ("HTTP/1.2", format!("GET {ME} HTTP/1.2\r\n")),
        ("lower-case version", format!("GET {ME} http/1.1\r\n")),
        ("two spaces", format!("GET  {ME} HTTP/1.1\r\n")),
    ] {
        let bytes = format!("{line}host: b\r\n{}connection: close\r\n\r\n", auth_line());
        let mut conn = RawConn::connect(bridge.addr);
        let _ = conn.write(bytes.as_bytes());
        let responses = responses_until_close(&mut conn);
        assert!(
            responses.iter().all(|r| r.status >= 400),
            "{what}: got {:?}",
            responses.iter().map(|r| r.status).collect::<Vec<_>>()
        );
    }
    assert_upstream_saw_nothing(&upstream, "request lines without a usable version");
}

/// Reads one response head (up to the empty line) byte by byte, so that nothing after it is
/// consumed; returns it as text.
fn read_head_raw(stream: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!("connection ended inside a response head ({other:?}): {head:?}"),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[test]
fn expect_100_continue_is_answered_before_the_body_and_not_forwarded() {
    use std::io::Write;
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let mut stream = std::net::TcpStream::connect(bridge.addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let h = post("expect: 100-continue\r\ncontent-length: 16\r\n");
    stream.write_all(h.as_bytes()).unwrap();
    // The client waits for the interim response before sending its body.
    let interim = read_head_raw(&mut stream);
    assert!(
        interim.starts_with("HTTP/1.1 100"),
        "expected 100 Continue, got {interim:?}"
    );
    stream.write_all(BODY).unwrap();
    let last = read_head_raw(&mut stream);
    assert!(last.starts_with("HTTP/1.1 200"), "{last:?}");
    // `expect` is not on the allowlist: the upstream gets a plain, complete request.
    assert_forwarded_once(&upstream, "POST", COMMENTS, BODY);
}

#[test]
fn expect_100_continue_on_a_denied_request_gets_the_denial_and_no_continue() {
    use std::io::Write;
    let cases = [
        (
            "forbidden route",
            head("POST", FORBIDDEN, "content-type: application/json\r\nexpect: 100-continue\r\ncontent-length: 16\r\n"),
            "403",
        ),
        (
            "declared body over the limit",
            post("expect: 100-continue\r\ncontent-length: 99999999999\r\n"),
            "413",
        ),
        (
            "no token",
            format!("POST {COMMENTS} HTTP/1.1\r\nhost: b\r\ncontent-type: application/json\r\nexpect: 100-continue\r\ncontent-length: 16\r\n\r\n"),
            "401",
        ),
    ];
    for (what, h, status) in cases {
        let upstream = MockUpstream::start();
        let bridge = Bridge::for_upstream(&upstream, &[]);
        let mut stream = std::net::TcpStream::connect(bridge.addr).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.write_all(h.as_bytes()).unwrap();
        // The denial comes without the body ever being sent.
        let first = read_head_raw(&mut stream);
        assert!(
            first.starts_with(&format!("HTTP/1.1 {status}")),
            "{what}: expected {status} before any body, got {first:?}"
        );
        assert_upstream_saw_nothing(&upstream, what);
    }
}
