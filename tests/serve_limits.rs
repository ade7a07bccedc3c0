//! Load and time limits (docs/reference.md §2, §4 step 10): in-flight limit, rate limit, and the header and
//! body read timeouts that stop a stalled client from holding the bridge.

mod support;

use support::*;

#[test]
fn rejects_requests_beyond_max_in_flight_with_503() {
    let upstream = MockUpstream::start_with(Behaviour::Hang);
    let bridge = Bridge::for_upstream(&upstream, &["--max-in-flight", "1"]);
    let first = Req::new("GET", "/api/agents/me").bearer(BRIDGE_TOKEN);
    let _pending = raw_request_in_background(bridge.addr, first.to_bytes(bridge.addr));
    upstream.wait_for_requests(1);
    let resp = bridge.get("/api/issues/ISS-2");
    resp.assert_bridge_error(503, "overloaded");
    assert_eq!(
        upstream.request_count(),
        1,
        "the overloaded request was not forwarded"
    );
}

#[test]
fn rate_limit_answers_429_with_retry_after() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(
        &upstream,
        &["--rate-limit-per-second", "1", "--rate-limit-burst", "1"],
    );
    let first = bridge.get("/api/agents/me");
    assert_eq!(first.status, 200, "{:?}", first.text());
    let second = bridge.get("/api/agents/me");
    second.assert_bridge_error(429, "rate_limited");
    let retry_after = second
        .header("retry-after")
        .expect("429 carries Retry-After");
    let secs: u64 = retry_after
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After is delay-seconds, got {retry_after:?}"));
    assert!(secs >= 1, "Retry-After of at least one second, got {secs}");
    assert_eq!(
        upstream.request_count(),
        1,
        "the limited request was not forwarded"
    );
}

#[test]
fn rate_limit_zero_disables_it() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(
        &upstream,
        &["--rate-limit-per-second", "0", "--rate-limit-burst", "0"],
    );
    for i in 0..30 {
        let resp = bridge.get("/api/agents/me");
        assert_eq!(resp.status, 200, "request {i}: {:?}", resp.text());
    }
    assert_eq!(upstream.request_count(), 30);
}

#[test]
fn stalled_request_head_is_cut_off_while_others_are_served() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &["--header-read-timeout", "500ms"]);
    let mut stalled = RawConn::connect(bridge.addr);
    stalled
        .write(
            format!("GET /api/agents/me HTTP/1.1\r\nhost: b\r\nauthorization: Bearer {BRIDGE_TOKEN}\r\n")
                .as_bytes(),
        )
        .unwrap();
    // Another client is served while the first one stalls.
    let resp = bridge.get("/api/issues/ISS-1");
    assert_eq!(resp.status, 200, "{:?}", resp.text());
    // The stalled connection is closed by the bridge (possibly after a 408), well within WAIT.
    let rest = stalled
        .read_to_close()
        .expect("the bridge must close a connection whose head never completes");
    if !rest.is_empty() {
        let text = String::from_utf8_lossy(&rest);
        assert!(
            text.starts_with("HTTP/1.1 408") || text.starts_with("HTTP/1.1 400"),
            "only a timeout response may precede the close, got {text:?}"
        );
    }
    let got = upstream.requests();
    assert_eq!(got.len(), 1, "only the complete request was forwarded");
    assert_eq!(got[0].target, "/api/issues/ISS-1");
}

#[test]
fn stalled_request_body_is_cut_off_and_not_delivered_upstream() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &["--body-idle-timeout", "500ms"]);
    let mut stalled = RawConn::connect(bridge.addr);
    stalled
        .write(
            format!(
                "POST /api/issues/ISS-1/comments HTTP/1.1\r\nhost: b\r\nauthorization: Bearer {BRIDGE_TOKEN}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"body\":"
            )
            .as_bytes(),
        )
        .unwrap();
    let resp = bridge.get("/api/issues/ISS-2");
    assert_eq!(resp.status, 200, "another client is served meanwhile");
    // The bridge answers or closes; either way the connection ends within WAIT.
    let rest = stalled
        .read_to_close()
        .expect("the bridge must end a connection whose body stalls");
    let text = String::from_utf8_lossy(&rest);
    assert!(
        rest.is_empty() || !text.starts_with("HTTP/1.1 2"),
        "a stalled body must not be answered with success: {text:?}"
    );
    for (i, r) in upstream.requests().iter().enumerate() {
        if r.method == "POST" {
            let r = upstream.wait_for_body_end(i);
            assert!(
                !r.body_complete,
                "the stalled body was delivered as complete upstream"
            );
        }
    }
}

#[test]
fn paperclips_attachment_limit_raises_the_body_limit() {
    // docs/reference.md §6.4: PAPERCLIP_ATTACHMENT_MAX_BYTES + 64 KiB, when nothing else sets
    // max_body_bytes. An 11 MiB upload is over the default limit and within a 12 MiB one.
    let upstream = MockUpstream::start();
    let content = pattern(11 * 1024 * 1024, 9);
    let (content_type, body) = multipart_file("big.bin", &content);
    let upload = |bridge: &Bridge| {
        bridge.send(
            Req::new("POST", "/api/companies/c1/issues/i1/attachments")
                .bearer(BRIDGE_TOKEN)
                .body(&content_type, body.clone()),
        )
    };

    let bridge = Bridge::for_upstream(&upstream, &[]);
    upload(&bridge).assert_bridge_error(413, "body_too_large");
    assert_eq!(
        upstream.request_count(),
        0,
        "the refused upload was forwarded"
    );
    drop(bridge);

    let raised = (12 * 1024 * 1024).to_string();
    let bridge = Bridge::for_upstream_env(
        &upstream,
        &[],
        &[("PAPERCLIP_ATTACHMENT_MAX_BYTES", &raised)],
    );
    let resp = upload(&bridge);
    assert!(resp.status < 300, "{}: {}", resp.status, resp.text());
    let seen = upstream.wait_for_body_end(0);
    assert!(
        seen.body_complete && seen.body == body,
        "upload arrived whole"
    );
}
