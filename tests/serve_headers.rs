//! Header handling (docs/reference.md §4 step 9, §4.4): only allowlisted request headers reach the upstream,
//! the caller's credentials never do, the bridge sets credential, run id and host itself; only
//! allowlisted response headers come back, plus the bridge's `x-request-id`.

mod support;

use std::time::Duration;

use support::*;

/// Request headers the upstream may legitimately see: the allowlist of docs/reference.md §4.4, what the
/// bridge sets itself, body framing, and `x-request-id` (a bridge may propagate its request id).
const PERMITTED_UPSTREAM: &[&str] = &[
    "accept",
    "content-type",
    "if-match",
    "if-none-match",
    "idempotency-key",
    "x-paperclip-github-capability",
    "authorization",
    "x-paperclip-run-id",
    "host",
    "content-length",
    "transfer-encoding",
    "x-request-id",
];

#[test]
fn never_forwards_caller_credentials_or_unlisted_headers() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let req = Req::new("POST", "/api/issues/ISS-1/comments?x=1")
        .bearer(BRIDGE_TOKEN)
        .header("host", "evil.example:8080")
        .header("cookie", "sid=caller-cookie")
        .header("x-api-key", "caller-api-key")
        .header("proxy-authorization", "Basic Y2FsbGVyOnB3")
        .header("x-forwarded-for", "10.9.8.7")
        .header("x-forwarded-host", "evil.example")
        .header("x-forwarded-proto", "https")
        .header("forwarded", "for=10.9.8.7;host=evil.example")
        .header("x-real-ip", "10.9.8.7")
        .header("x_custom", "underscore-name")
        .header("x-paperclip-run-id", "spoofed-run-id")
        .header("x-custom-header", "custom")
        .header("user-agent", "agent-tool/1.0")
        .header("origin", "http://evil.example")
        .header("referer", "http://evil.example/")
        .header("te", "trailers")
        .header("upgrade", "websocket")
        .header("keep-alive", "timeout=5")
        .header("accept", "application/json")
        .header("if-match", "\"etag-1\"")
        .header("if-none-match", "\"etag-0\"")
        .header("idempotency-key", "idem-123")
        .header("x-paperclip-github-capability", "cap-abc")
        .json("{\"body\":\"hello\"}");
    let resp = bridge.send(req);
    assert_eq!(resp.status, 200, "{:?}", resp.text());
    let got = upstream.wait_for_requests(1).remove(0);

    assert_eq!(
        got.header_all("authorization"),
        [format!("Bearer {UPSTREAM_TOKEN}")],
        "the caller's bridge token is replaced by the upstream credential"
    );
    assert_eq!(
        got.header_all("host"),
        [upstream.authority()],
        "host is the upstream's"
    );
    assert_eq!(
        got.header_all("x-paperclip-run-id"),
        [RUN_ID],
        "the run id is set by the bridge, overwriting the caller's"
    );
    for name in [
        "cookie",
        "x-api-key",
        "proxy-authorization",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "forwarded",
        "x-real-ip",
        "x_custom",
        "x-custom-header",
        "user-agent",
        "origin",
        "referer",
        "te",
        "upgrade",
        "keep-alive",
        "connection",
    ] {
        assert!(
            !got.has_header(name),
            "{name} must not be forwarded, upstream got {:?}",
            got.header_all(name)
        );
    }
    for (name, value) in [
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("if-match", "\"etag-1\""),
        ("if-none-match", "\"etag-0\""),
        ("idempotency-key", "idem-123"),
        ("x-paperclip-github-capability", "cap-abc"),
    ] {
        assert_eq!(
            got.header_all(name),
            [value],
            "allowlisted {name} forwarded as sent"
        );
    }
    for name in got.header_names() {
        assert!(
            PERMITTED_UPSTREAM.contains(&name.as_str()),
            "upstream received a header outside the allowlist: {name}"
        );
    }
    let raw = String::from_utf8_lossy(
        &got.headers
            .iter()
            .flat_map(|(_, v)| v.clone())
            .collect::<Vec<u8>>(),
    )
    .into_owned();
    assert!(
        !raw.contains(BRIDGE_TOKEN),
        "the bridge token reached the upstream"
    );
}

#[test]
fn header_names_are_matched_case_insensitively() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let resp = bridge.send(
        Req::new("GET", "/api/agents/me")
            .header("AUTHORIZATION", &format!("Bearer {BRIDGE_TOKEN}"))
            .header("Accept", "application/json")
            .header("IDEMPOTENCY-KEY", "k-1")
            .header("Cookie", "a=b")
            .header("X-Api-Key", "k"),
    );
    assert_eq!(resp.status, 200, "{:?}", resp.text());
    let got = upstream.wait_for_requests(1).remove(0);
    assert_eq!(got.header("accept").as_deref(), Some("application/json"));
    assert_eq!(got.header("idempotency-key").as_deref(), Some("k-1"));
    assert!(!got.has_header("cookie"));
    assert!(!got.has_header("x-api-key"));
    assert_eq!(
        got.header_all("authorization"),
        [format!("Bearer {UPSTREAM_TOKEN}")]
    );
}

#[test]
fn never_forwards_caller_authorization_without_upstream_credential() {
    // docs/reference.md §1.1: with no upstream credential the bridge forwards without `authorization`.
    let upstream = MockUpstream::start();
    let url = upstream.url();
    let bridge = Bridge::spawn(
        &["--upstream", &url],
        &[("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN)],
    );
    let resp = bridge.get("/api/agents/me");
    assert_eq!(resp.status, 200, "{:?}", resp.text());
    let got = upstream.wait_for_requests(1).remove(0);
    assert!(
        !got.has_header("authorization"),
        "caller authorization leaked upstream: {:?}",
        got.header_all("authorization")
    );
    assert!(
        !got.has_header("x-paperclip-run-id"),
        "no run id configured, none injected"
    );
}

#[test]
fn reads_upstream_credential_from_a_file_and_custom_header() {
    let upstream = MockUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("upstream-token");
    std::fs::write(&file, format!("{UPSTREAM_TOKEN}\n")).unwrap();
    let url = upstream.url();
    let bridge = Bridge::spawn(
        &[
            "--upstream",
            &url,
            "--upstream-token-file",
            file.to_str().unwrap(),
            "--upstream-auth-header",
            "x-paperclip-key",
            "--upstream-auth-scheme",
            "Token",
        ],
        &[("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN)],
    );
    let resp = bridge.get("/api/agents/me");
    assert_eq!(resp.status, 200, "{:?}", resp.text());
    let got = upstream.wait_for_requests(1).remove(0);
    assert_eq!(
        got.header_all("x-paperclip-key"),
        [format!("Token {UPSTREAM_TOKEN}")],
        "credential from the file, trailing newline stripped, under the configured header"
    );
    assert!(
        !got.has_header("authorization"),
        "caller authorization leaked"
    );
}

#[test]
fn drops_unlisted_response_headers_and_keeps_listed_ones() {
    let upstream = MockUpstream::start_with(Behaviour::respond(
        201,
        &[
            ("content-type", "application/json; charset=utf-8"),
            ("etag", "\"v42\""),
            ("last-modified", "Tue, 15 Nov 1994 08:12:31 GMT"),
            ("cache-control", "no-store"),
            ("location", "/api/issues/ISS-1/comments/cmt-9"),
            ("retry-after", "7"),
            ("set-cookie", "session=upstream-session; HttpOnly"),
            ("set-cookie", "other=2"),
            ("x-internal", "internal-upstream-detail"),
            ("server", "paperclip/9.9"),
            ("x-powered-by", "Express"),
            ("access-control-allow-origin", "*"),
            ("www-authenticate", "Bearer realm=\"paperclip\""),
            ("strict-transport-security", "max-age=1"),
        ],
        &b"{\"id\":\"cmt-9\"}"[..],
    ));
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let resp = bridge.send(Req::new("POST", "/api/issues/ISS-1/comments").json("{\"body\":\"x\"}"));
    assert_eq!(resp.status, 201, "upstream status passes through");
    assert_eq!(resp.body, b"{\"id\":\"cmt-9\"}");
    for (name, value) in [
        ("content-type", "application/json; charset=utf-8"),
        ("etag", "\"v42\""),
        ("last-modified", "Tue, 15 Nov 1994 08:12:31 GMT"),
        ("cache-control", "no-store"),
        ("location", "/api/issues/ISS-1/comments/cmt-9"),
        ("retry-after", "7"),
    ] {
        assert_eq!(
            resp.header(name),
            Some(value),
            "response header {name} kept"
        );
    }
    for name in [
        "set-cookie",
        "x-internal",
        "server",
        "x-powered-by",
        "access-control-allow-origin",
        "www-authenticate",
        "strict-transport-security",
    ] {
        assert!(
            !resp.has_header(name),
            "response header {name} must be dropped, got {:?}",
            resp.header(name)
        );
    }
}

#[test]
fn default_upstream_response_loses_set_cookie() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let resp = bridge.get("/api/agents/me");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"{\"ok\":true}");
    assert!(resp
        .header("content-type")
        .unwrap_or("")
        .starts_with("application/json"));
    assert!(!resp.has_header("set-cookie"));
    assert!(!resp.has_header("x-internal"));
}

#[test]
fn returns_request_id_and_logs_it_in_the_access_log() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let ok = bridge.get("/api/agents/me");
    let denied = bridge.get("/api/secrets");
    let mut ids = Vec::new();
    for (what, resp) in [("forwarded", &ok), ("denied", &denied)] {
        let id = resp
            .header("x-request-id")
            .unwrap_or_else(|| panic!("{what} response without x-request-id: {:?}", resp.headers))
            .to_string();
        assert!(!id.is_empty(), "{what}: empty x-request-id");
        bridge.wait_stderr_contains(&id, Duration::from_secs(10));
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "request ids are unique");
}

#[test]
fn upstream_request_id_does_not_replace_the_bridges() {
    let upstream = MockUpstream::start_with(Behaviour::respond(
        200,
        &[
            ("content-type", "application/json"),
            ("x-request-id", "upstream-chosen-id"),
        ],
        &b"{}"[..],
    ));
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let resp = bridge.get("/api/agents/me");
    assert_eq!(resp.status, 200);
    let ids: Vec<_> = resp
        .headers
        .iter()
        .filter(|(k, _)| k == "x-request-id")
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(ids.len(), 1, "exactly one x-request-id, got {ids:?}");
    bridge.wait_stderr_contains(&ids[0], Duration::from_secs(10));
}
