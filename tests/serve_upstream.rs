//! Forwarding and upstream failures (docs/reference.md §5): the failure table for safe and unsafe methods,
//! never retrying a request that may have reached the upstream, byte-exact bodies both ways, and
//! upstream statuses passed through.

mod support;

use std::time::Duration;

use support::*;

const GET_TARGET: &str = "/api/issues/ISS-1";
const POST_TARGET: &str = "/api/issues/ISS-1/comments";

fn post() -> Req {
    Req::new("POST", POST_TARGET).json("{\"body\":\"a comment that must not be duplicated\"}")
}

fn assert_indeterminate(resp: &Response) {
    resp.assert_bridge_error(409, "outcome_indeterminate");
    assert_eq!(
        resp.header("x-paperclip-bridge-outcome"),
        Some("indeterminate"),
        "409 carries x-paperclip-bridge-outcome"
    );
    let body = resp.json();
    assert_eq!(body["outcome"], "indeterminate", "body {body}");
    assert_eq!(body["retryable"], false, "body {body}");
}

#[test]
fn upstream_down_is_502_upstream_unavailable() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let bridge = Bridge::spawn(
        &["--upstream", &url],
        &[
            ("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN),
            ("CALLBACK_BRIDGE_UPSTREAM_TOKEN", UPSTREAM_TOKEN),
        ],
    );
    bridge
        .get(GET_TARGET)
        .assert_bridge_error(502, "upstream_unavailable");
    bridge
        .send(post())
        .assert_bridge_error(502, "upstream_unavailable");
}

#[test]
fn https_upstream_is_never_spoken_to_in_plain_text() {
    // An https upstream URL pointing at a plain-HTTP server: the TLS handshake fails (the server
    // answers a ClientHello with an HTTP 400 or closes), so the agent gets 502 and the server never
    // sees an HTTP request from the bridge (no fall-back to plain text, credential never sent).
    let upstream = MockUpstream::start();
    let url = upstream.url().replacen("http://", "https://", 1);
    let bridge = Bridge::spawn(
        &["--upstream", &url],
        &[
            ("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN),
            ("CALLBACK_BRIDGE_UPSTREAM_TOKEN", UPSTREAM_TOKEN),
        ],
    );
    bridge
        .get(GET_TARGET)
        .assert_bridge_error(502, "upstream_unavailable");
    bridge
        .send(post())
        .assert_bridge_error(502, "upstream_unavailable");
    assert_eq!(upstream.request_count(), 0, "no plain-text request");
    assert!(!bridge.stderr_text().contains(UPSTREAM_TOKEN));
}

#[test]
fn slow_upstream_get_is_504_upstream_timeout() {
    let upstream = MockUpstream::start_with(Behaviour::Hang);
    let bridge = Bridge::for_upstream(&upstream, &["--upstream-timeout", "300ms"]);
    bridge
        .get(GET_TARGET)
        .assert_bridge_error(504, "upstream_timeout");
    assert_eq!(upstream.request_count(), 1, "a GET is not retried either");
}

#[test]
fn slow_upstream_post_is_409_indeterminate_and_sent_once() {
    let upstream = MockUpstream::start_with(Behaviour::Hang);
    let bridge = Bridge::for_upstream(&upstream, &["--upstream-timeout", "300ms"]);
    let resp = bridge.send(post().header("idempotency-key", "idem-once"));
    assert_indeterminate(&resp);
    let got = upstream.wait_for_requests(1);
    assert_eq!(got.len(), 1, "the POST reached the upstream exactly once");
    assert_eq!(got[0].method, "POST");
    // A later request still works and the POST was not replayed on it.
    upstream.set_behaviour(Behaviour::Ok);
    let resp = bridge.get(GET_TARGET);
    assert_eq!(resp.status, 200);
    let got = upstream.requests();
    assert_eq!(
        got.iter().filter(|r| r.method == "POST").count(),
        1,
        "the POST was never retried"
    );
}

#[test]
fn delayed_upstream_within_timeout_is_answered() {
    let upstream = MockUpstream::start_with(Behaviour::Delay(Duration::from_millis(200)));
    let bridge = Bridge::for_upstream(&upstream, &["--upstream-timeout", "10s"]);
    let resp = bridge.get(GET_TARGET);
    assert_eq!(resp.status, 200, "{:?}", resp.text());
    assert_eq!(resp.body, b"{\"ok\":true}");
}

#[test]
fn connection_closed_after_sending_get_is_502_upstream_error() {
    let upstream = MockUpstream::start_with(Behaviour::Close);
    let bridge = Bridge::for_upstream(&upstream, &[]);
    bridge
        .get(GET_TARGET)
        .assert_bridge_error(502, "upstream_error");
}

#[test]
fn connection_closed_after_sending_post_is_409_and_not_retried() {
    let upstream = MockUpstream::start_with(Behaviour::Close);
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let resp = bridge.send(post());
    assert_indeterminate(&resp);
    let posts = upstream
        .requests()
        .iter()
        .filter(|r| r.method == "POST")
        .count();
    assert_eq!(posts, 1, "the POST reached the upstream exactly once");
}

#[test]
fn oversized_upstream_response_is_502_for_get_and_409_for_post() {
    let big = random_bytes(4096);
    let upstream = MockUpstream::start_with(Behaviour::respond(
        200,
        &[("content-type", "application/json")],
        big,
    ));
    let bridge = Bridge::for_upstream(&upstream, &["--max-body-bytes", "1024"]);
    bridge
        .get(GET_TARGET)
        .assert_bridge_error(502, "response_too_large");
    assert_indeterminate(&bridge.send(post()));
    assert_eq!(
        upstream
            .requests()
            .iter()
            .filter(|r| r.method == "POST")
            .count(),
        1
    );
}

#[test]
fn oversized_chunked_upstream_response_is_never_delivered_whole() {
    // Without a content-length the bridge learns the size while streaming; it may already have
    // sent the head. Either it answers 502, or the agent's response is cut short: never complete.
    let big = random_bytes(64 * 1024);
    let upstream = MockUpstream::start_with(Behaviour::respond_chunked(
        200,
        &[("content-type", "application/octet-stream")],
        big.clone(),
    ));
    let bridge = Bridge::for_upstream(&upstream, &["--max-body-bytes", "1024"]);
    let req = Req::new("GET", GET_TARGET).bearer(BRIDGE_TOKEN);
    match try_raw_request(bridge.addr, &req.to_bytes(bridge.addr)) {
        Ok(resp) if resp.status == 502 => resp.assert_bridge_error(502, "response_too_large"),
        Ok(resp) => assert!(
            resp.body.len() <= 1024 && resp.body != big,
            "agent received {} bytes of an over-limit body with status {}",
            resp.body.len(),
            resp.status
        ),
        Err(_) => {} // stream cut: acceptable
    }
}

#[test]
fn response_of_exactly_the_limit_is_delivered() {
    let body = random_bytes(1024);
    let upstream = MockUpstream::start_with(Behaviour::respond(
        200,
        &[("content-type", "application/octet-stream")],
        body.clone(),
    ));
    let bridge = Bridge::for_upstream(&upstream, &["--max-body-bytes", "1024"]);
    let resp = bridge.get(GET_TARGET);
    assert_eq!(resp.status, 200, "{:?}", resp.headers);
    assert_eq!(resp.body, body);
}

#[test]
fn binary_bodies_arrive_byte_identical_in_both_directions() {
    let upstream = MockUpstream::start_with(Behaviour::Echo);
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let payload = random_bytes(1024 * 1024);
    let (ct, body) = multipart_file("blob.bin", &payload);
    let resp = bridge.send(
        Req::new("POST", "/api/companies/cmp-1/issues/ISS-1/attachments").body(&ct, body.clone()),
    );
    assert_eq!(resp.status, 200, "{:?}", resp.headers);
    let got = upstream.wait_for_body_end(0);
    assert!(got.body_complete);
    assert!(
        got.body == body,
        "upstream body differs ({} bytes vs {})",
        got.body.len(),
        body.len()
    );
    assert!(
        resp.body == body,
        "echoed body differs ({} bytes vs {})",
        resp.body.len(),
        body.len()
    );
    // JSON content type with arbitrary bytes: the bridge does not parse bodies.
    let json_ish = random_bytes(256 * 1024);
    let resp =
        bridge.send(Req::new("POST", POST_TARGET).body("application/json", json_ish.clone()));
    assert_eq!(resp.status, 200);
    assert!(resp.body == json_ish, "non-UTF-8 JSON-typed body altered");
    assert!(upstream.wait_for_body_end(1).body == json_ish);
}

#[test]
fn random_upstream_bytes_arrive_byte_identical() {
    for chunked in [false, true] {
        let body = random_bytes(1024 * 1024);
        let behaviour = if chunked {
            Behaviour::respond_chunked(
                200,
                &[("content-type", "application/octet-stream")],
                body.clone(),
            )
        } else {
            Behaviour::respond(
                200,
                &[("content-type", "application/octet-stream")],
                body.clone(),
            )
        };
        let upstream = MockUpstream::start_with(behaviour);
        let bridge = Bridge::for_upstream(&upstream, &[]);
        let resp = bridge.get("/api/attachments/att-1/content");
        assert_eq!(resp.status, 200);
        assert!(
            resp.body == body,
            "chunked={chunked}: body differs ({} bytes vs {})",
            resp.body.len(),
            body.len()
        );
        assert_eq!(
            resp.header("content-type"),
            Some("application/octet-stream")
        );
    }
}

#[test]
fn upstream_error_statuses_pass_through_unchanged() {
    for (status, body) in [
        (500u16, &b"{\"error\":\"upstream exploded\"}"[..]),
        (404, b"{\"error\":\"Not found\"}"),
        (401, b"{\"error\":\"Unauthorized\"}"),
        (422, b"{\"error\":\"validation\",\"details\":[1]}"),
    ] {
        let upstream = MockUpstream::start_with(Behaviour::respond(
            status,
            &[("content-type", "application/json")],
            body,
        ));
        let bridge = Bridge::for_upstream(&upstream, &[]);
        for req in [Req::new("GET", GET_TARGET), post()] {
            let resp = bridge.send(req);
            assert_eq!(resp.status, status);
            assert_eq!(resp.body, body, "upstream {status} body passes through");
            assert!(
                !resp.has_header("x-bridge-error"),
                "an upstream {status} is not a bridge error"
            );
        }
    }
}

#[test]
fn upstream_indeterminate_504_passes_through_in_direct_mode() {
    let upstream = MockUpstream::start_with(Behaviour::respond(
        504,
        &[
            ("content-type", "application/json"),
            ("x-paperclip-bridge-outcome", "indeterminate"),
        ],
        &b"{\"error\":\"relay lost\"}"[..],
    ));
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let resp = bridge.send(post());
    assert_eq!(resp.status, 504);
    assert_eq!(
        resp.header("x-paperclip-bridge-outcome"),
        Some("indeterminate")
    );
    assert_eq!(resp.body, b"{\"error\":\"relay lost\"}");
}

#[test]
fn sequential_requests_are_each_forwarded_exactly_once() {
    // With a pooled upstream client, reused connections must not mix up or replay requests.
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    for i in 0..20 {
        let resp = bridge.get(&format!("/api/issues/ISS-{i}"));
        assert_eq!(resp.status, 200, "request {i}");
    }
    let got = upstream.requests();
    assert_eq!(got.len(), 20);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.target, format!("/api/issues/ISS-{i}"));
    }
}

#[test]
fn the_default_upstream_comes_from_paperclips_listen_variables_ranked_below_ours() {
    // docs/reference.md §2.1: flag > CALLBACK_BRIDGE_UPSTREAM > file > PAPERCLIP_LISTEN_HOST/PORT
    // > HOST/PORT > http://127.0.0.1:3100.
    let upstream = MockUpstream::start();
    let url = upstream.url();
    let port = url.rsplit(':').next().unwrap().to_owned();
    let closed = closed_port().to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bridge.toml");
    std::fs::write(&file, format!("upstream = \"{url}\"\n")).unwrap();
    let file = file.to_str().unwrap();
    let secrets = [
        ("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN),
        ("CALLBACK_BRIDGE_UPSTREAM_TOKEN", UPSTREAM_TOKEN),
    ];
    type Case<'a> = (&'a str, Vec<&'a str>, Vec<(&'a str, &'a str)>);
    let cases: [Case; 6] = [
        (
            "PAPERCLIP_LISTEN_*",
            vec![],
            vec![
                ("PAPERCLIP_LISTEN_HOST", "0.0.0.0"),
                ("PAPERCLIP_LISTEN_PORT", &port),
                ("PORT", &closed),
            ],
        ),
        (
            "HOST/PORT",
            vec![],
            vec![("HOST", "127.0.0.1"), ("PORT", &port)],
        ),
        (
            "file over PAPERCLIP_LISTEN_*",
            vec!["--config", file],
            vec![("PAPERCLIP_LISTEN_PORT", &closed)],
        ),
        (
            "CALLBACK_BRIDGE_UPSTREAM over PAPERCLIP_LISTEN_*",
            vec![],
            vec![
                ("CALLBACK_BRIDGE_UPSTREAM", &url),
                ("PAPERCLIP_LISTEN_PORT", &closed),
            ],
        ),
        (
            "flag over PAPERCLIP_LISTEN_*",
            vec!["--upstream", &url],
            vec![
                ("PAPERCLIP_LISTEN_PORT", &closed),
                ("HOST", "127.0.0.1"),
                ("PORT", &closed),
            ],
        ),
        (
            "flag over CALLBACK_BRIDGE_UPSTREAM",
            vec!["--upstream", &url],
            vec![("CALLBACK_BRIDGE_UPSTREAM", "http://127.0.0.1:1")],
        ),
    ];
    for (i, (what, args, env)) in cases.into_iter().enumerate() {
        let mut env = env;
        env.extend_from_slice(&secrets);
        let bridge = Bridge::spawn(&args, &env);
        let resp = bridge.get("/api/agents/me");
        assert_eq!(resp.status, 200, "{what}: {}", resp.text());
        assert_eq!(
            upstream.request_count(),
            i + 1,
            "{what}: reached the mock upstream"
        );
    }
    // A port that is not one is a configuration error (exit 2), naming the variable.
    let out = run_bridge(
        &["serve"],
        &[
            ("PAPERCLIP_LISTEN_PORT", "http"),
            ("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN),
        ],
        WAIT,
    );
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("PAPERCLIP_LISTEN_PORT"),
        "{}",
        out.stderr
    );
}
