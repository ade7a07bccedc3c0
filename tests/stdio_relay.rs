//! Black-box tests of the stdio transport through the relay: `relay --transport stdio -- <the
//! gateway>` against a recording mock upstream, checking what the agent saw and what the
//! upstream received (docs/reference.md §6.2, §6.3).

mod support;

use std::time::Instant;

use support::*;

#[test]
fn round_trip_injects_the_credential_and_drops_caller_secrets() {
    let upstream = MockUpstream::app();
    let relay = Relay::start(&upstream, RelayOptions::default());
    assert_eq!(relay.ready["transport"], "stdio");
    assert_eq!(relay.ready["pid"], relay.proc.pid());
    assert_eq!(
        relay.token.len(),
        43,
        "generated token is 32 bytes base64url"
    );
    let auth = relay.auth();

    let got = request(
        relay.addr,
        "GET",
        "/api/agents/me?view=full&x=%2F",
        &[
            ("authorization", &auth),
            ("cookie", "agent=1"),
            ("x-api-key", "agent-key"),
            ("accept", "application/json"),
        ],
        b"",
    );
    assert_eq!(got.status, 200, "{:?}", String::from_utf8_lossy(&got.body));
    assert_eq!(got.json()["target"], "/api/agents/me?view=full&x=%2F");
    assert!(got.header("x-request-id").is_some());
    assert!(got.header("set-cookie").is_none(), "upstream cookie leaked");
    assert!(got.header("x-upstream-private").is_none());

    let seen = upstream.find("/api/agents/me?view=full&x=%2F");
    let expected_auth = format!("Bearer {UPSTREAM_TOKEN}");
    assert_eq!(
        seen.header("authorization").as_deref(),
        Some(expected_auth.as_str())
    );
    assert_eq!(seen.header("accept").as_deref(), Some("application/json"));
    for dropped in ["cookie", "x-api-key"] {
        assert!(!seen.has_header(dropped), "{dropped} forwarded");
    }
    let all_headers = seen.headers_text();
    assert!(
        !all_headers.contains(&relay.token),
        "bridge token went upstream"
    );

    let comment = br#"{"body":"done"}"#.to_vec();
    let got = request(
        relay.addr,
        "POST",
        "/api/issues/ISS-1/comments",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        &comment,
    );
    // The mock upstream answers a POST with 201 and the body echoed.
    assert_eq!(got.status, 201);
    assert_eq!(got.body, comment);
    assert_eq!(upstream.find("/api/issues/ISS-1/comments").body, comment);

    let health = request(relay.addr, "GET", "/__bridge/health", &[], b"");
    assert_eq!(health.status, 200);

    let (exit, status) = relay.stop();
    assert!(status.success(), "relay exit status {status:?}");
    assert_eq!(exit["event"], "exit");
    assert_eq!(exit["reason"], "signal");
    assert_eq!(exit["requests"], 2, "{exit}");
    assert_eq!(exit["forwarded"], 2, "{exit}");
}

#[test]
fn answers_64_concurrent_requests_each_with_its_own_response() {
    let upstream = MockUpstream::app();
    let relay = Relay::start(&upstream, RelayOptions::default());
    let auth = relay.auth();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let auth = auth.clone();
        let agent = relay.addr;
        tasks.push(background(move || {
            let target = format!("/api/issues/ISS-{i}");
            let got = request(agent, "GET", &target, &[("authorization", &auth)], b"");
            (target, got)
        }));
    }
    let mut answered = 0;
    for task in tasks {
        let (target, got) = task.join().unwrap();
        assert_eq!(
            got.status,
            200,
            "{target}: {}",
            String::from_utf8_lossy(&got.body)
        );
        assert_eq!(got.json()["target"], target.as_str());
        answered += 1;
    }
    assert_eq!(answered, 64);
    assert_eq!(upstream.requests().len(), 64);
}

#[test]
fn binary_bodies_are_byte_exact_both_ways() {
    let upstream = MockUpstream::app();
    let relay = Relay::start(&upstream, RelayOptions::default());
    let auth = relay.auth();
    let content_type = "multipart/form-data; boundary=XyZ";
    let target = "/api/companies/c1/issues/i1/attachments";
    // With `content-length`, then chunked in 64 KiB pieces.
    for (i, (expected, chunk)) in [
        (pattern(300 * 1024 + 3, 1), None),
        (pattern(2 * 1024 * 1024 + 5, 2), Some(64 * 1024)),
    ]
    .into_iter()
    .enumerate()
    {
        let req = Req::new("POST", target)
            .header("authorization", &auth)
            .header("content-type", content_type);
        let req = match chunk {
            None => req.raw_body("POST", &expected),
            Some(piece) => req.chunked_body(&expected, piece),
        };
        let got = req.send(relay.addr);
        // The mock upstream answers a POST with 201 and the body echoed.
        assert_eq!(got.status, 201, "upload {i}");
        assert!(got.body == expected, "upload {i}: echoed body differs");
        let seen = &upstream.requests()[i];
        assert!(seen.body == expected, "upload {i}: upstream body differs");
    }
    let got = request(
        relay.addr,
        "GET",
        "/api/attachments/a1/content",
        &[("authorization", &auth)],
        b"",
    );
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-type"), Some("application/octet-stream"));
    assert!(got.body == pattern(ATTACHMENT_BYTES, 7), "download differs");
}

#[test]
fn restarts_a_killed_gateway_and_the_agent_url_keeps_working() {
    let upstream = MockUpstream::app();
    let relay = Relay::start(&upstream, RelayOptions::default());
    let auth = relay.auth();
    let before = request(
        relay.addr,
        "GET",
        "/api/agents/me",
        &[("authorization", &auth)],
        b"",
    );
    assert_eq!(before.status, 200);
    let first = relay.gateway_pid();
    signal(first, "KILL");

    // Poll the same URL (bounded) until the restarted gateway answers.
    let deadline = Instant::now() + WAIT;
    let after = loop {
        match Req::new("GET", "/api/agents/me")
            .header("authorization", &auth)
            .try_send(relay.addr)
        {
            Ok(r) if r.status == 200 => break r,
            // Connection refused while the port is unbound, or 503 from a dying gateway.
            other => {
                assert!(Instant::now() < deadline, "no recovery: last {other:?}");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    };
    assert_eq!(after.json()["target"], "/api/agents/me");
    let second = relay.gateway_pid();
    assert_ne!(first, second, "the gateway was not restarted");

    let (exit, status) = relay.stop();
    assert!(status.success());
    assert_eq!(exit["reason"], "signal");
}

#[test]
fn gives_up_with_exit_1_after_five_failed_restarts() {
    let upstream = MockUpstream::app();
    let marker = tempfile::tempdir().unwrap();
    let flag = marker.path().join("started");
    // Only the first launch starts a gateway; every restart fails before READY.
    let prefix = format!(
        "if [ -e '{0}' ]; then exit 3; fi; : > '{0}'",
        flag.display()
    );
    let relay = Relay::start(
        &upstream,
        RelayOptions {
            shell_prefix: Some(&prefix),
            ..Default::default()
        },
    );
    let mut relay = relay;
    signal(relay.gateway_pid(), "KILL");
    let exit = relay.proc.next_json().expect("exit line");
    let status = relay.proc.wait_exit();
    assert_eq!(status.code(), Some(1), "exit status {status:?}");
    assert_eq!(exit["event"], "exit");
    assert_eq!(exit["reason"], "transport");
    let restarts = relay
        .proc
        .stderr_lines()
        .iter()
        .filter(|l| l.contains("restarting the gateway command\""))
        .count();
    assert_eq!(restarts, 5, "{:#?}", relay.proc.stderr_lines());
}

/// The denial cases of docs/reference.md §4 as raw requests (`{auth}` is replaced by the bridge token).
const DENIALS: &[(&str, &str)] = &[
    ("invalid_token", "GET /api/agents/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n\r\n"),
    ("invalid_token", "GET /api/agents/me HTTP/1.1\r\nHost: x\r\n\r\n"),
    ("method_not_allowed", "TRACE /api/agents/me HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n"),
    ("invalid_path", "GET /api/issues/%2e%2e/comments HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n"),
    ("invalid_path", "GET /api//agents/me HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n"),
    ("route_not_allowed", "GET /api/companies/c1/secrets HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n"),
    ("route_not_allowed", "POST /api/approvals/a1/approve HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"),
    ("bad_request", "GET /api/agents/me HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Length: 2\r\n\r\n{}"),
    ("unsupported_media_type", "POST /api/issues/i1/comments HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"),
    ("body_too_large", "POST /api/issues/i1/comments HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\nContent-Type: application/json\r\nContent-Length: 99999999999\r\n\r\n"),
    ("not_found", "GET /__bridge/nothing HTTP/1.1\r\nHost: x\r\nAuthorization: {auth}\r\n\r\n"),
];

/// `serve` against the same upstream with the same supplied token, for side-by-side answers.
fn start_serve(upstream: &MockUpstream) -> (Proc, std::net::SocketAddr) {
    let mut cmd = relay_command(upstream, &["serve"]);
    cmd.env("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN);
    let mut serve = Proc::spawn(cmd, "serve");
    let ready = serve.next_json().expect("serve readiness line");
    let addr = ready["url"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    (serve, addr)
}

#[test]
fn denials_are_identical_to_serve() {
    let upstream = MockUpstream::app();
    let relay = Relay::start(
        &upstream,
        RelayOptions {
            supplied_token: true,
            ..Default::default()
        },
    );
    let (_serve, serve_addr) = start_serve(&upstream);

    let auth = format!("Bearer {BRIDGE_TOKEN}");
    for (code, raw) in DENIALS {
        let raw = raw.replace("{auth}", &auth);
        let direct = raw_request(serve_addr, raw.as_bytes());
        let via_stdio = raw_request(relay.addr, raw.as_bytes());
        assert_eq!(direct.json_code(), *code, "serve: {raw:?}");
        assert_eq!(via_stdio.status, direct.status, "{raw:?}");
        assert_eq!(via_stdio.body, direct.body, "{raw:?}");
        for h in ["content-type", "x-bridge-error", "connection"] {
            assert_eq!(via_stdio.header(h), direct.header(h), "{h} of {raw:?}");
        }
    }
    assert!(
        upstream.requests().is_empty(),
        "a denied request reached the upstream"
    );
}

#[test]
fn tolerates_output_before_the_ready_line() {
    let upstream = MockUpstream::app();
    let junk = r#"echo 'Welcome to the sandbox'; echo; echo '{"type":"banner"}'; printf '\033[?2004l\r\n'; echo '$ exec callback-bridge gateway --transport stdio'"#;
    let relay = Relay::start(
        &upstream,
        RelayOptions {
            shell_prefix: Some(junk),
            ..Default::default()
        },
    );
    let got = request(
        relay.addr,
        "GET",
        "/api/agents/me",
        &[("authorization", &relay.auth())],
        b"",
    );
    assert_eq!(got.status, 200);
}

#[test]
fn refuses_a_ready_line_with_another_nonce() {
    let upstream = MockUpstream::app();
    let mut cmd = relay_command(
        &upstream,
        &["relay", "--transport", "stdio", "--", "sh", "-c"],
    );
    cmd.arg(r#"echo '{"version":2,"type":"ready","nonce":"not-the-relays"}'; printf 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'; exec sleep 30"#);
    let mut relay = Proc::spawn(cmd, "relay");
    let first = relay.next_json().expect("a stdout line");
    assert_eq!(
        first["event"], "exit",
        "became ready with a foreign nonce: {first}"
    );
    assert_eq!(first["reason"], "transport");
    let status = relay.wait_exit();
    assert_eq!(status.code(), Some(1));
    assert!(
        relay
            .stderr_lines()
            .iter()
            .any(|l| l.contains("different nonce")),
        "{:#?}",
        relay.stderr_lines()
    );
}

#[test]
fn the_credential_never_reaches_the_gateway_environment_or_argv() {
    let upstream = MockUpstream::app();
    let relay = Relay::start(&upstream, RelayOptions::default());
    let gateway = relay.gateway_pid();
    let environ = proc_strings(gateway, "environ");
    let argv = proc_strings(gateway, "cmdline");
    assert!(!environ.is_empty(), "cannot read the gateway's environment");
    for entry in environ.iter().chain(&argv) {
        assert!(!entry.contains(UPSTREAM_TOKEN), "credential in {entry:?}");
    }
    for arg in argv
        .iter()
        .chain(&proc_strings(relay.proc.pid(), "cmdline"))
    {
        assert!(!arg.contains(&relay.token), "bridge token in argv {arg:?}");
    }
    let expected = format!("CALLBACK_BRIDGE_TOKEN={}", relay.token);
    assert!(environ.contains(&expected), "env handshake missing");
    assert!(environ
        .iter()
        .any(|e| e.starts_with("CALLBACK_BRIDGE_NONCE=")));
    // The relay's own configuration is not inherited either.
    assert!(!environ
        .iter()
        .any(|e| e.starts_with("CALLBACK_BRIDGE_UPSTREAM")));
}

#[test]
fn stdin_handshake_keeps_token_and_nonce_out_of_the_environment() {
    let upstream = MockUpstream::app();
    let relay = Relay::start(
        &upstream,
        RelayOptions {
            relay_args: &["--handshake", "stdin"],
            gateway_args: &["--handshake", "stdin"],
            supplied_token: true,
            ..Default::default()
        },
    );
    let got = request(
        relay.addr,
        "GET",
        "/api/agents/me",
        &[("authorization", &relay.auth())],
        b"",
    );
    assert_eq!(got.status, 200);
    let gateway = relay.gateway_pid();
    let environ = proc_strings(gateway, "environ");
    assert!(!environ.is_empty(), "cannot read the gateway's environment");
    for entry in environ.iter().chain(&proc_strings(gateway, "cmdline")) {
        assert!(!entry.contains(BRIDGE_TOKEN), "bridge token in {entry:?}");
        assert!(!entry.contains(UPSTREAM_TOKEN), "credential in {entry:?}");
        assert!(!entry.starts_with("CALLBACK_BRIDGE_NONCE="));
    }
}

#[test]
fn a_missing_command_fails_at_once() {
    let upstream = MockUpstream::app();
    let cmd = relay_command(
        &upstream,
        &[
            "relay",
            "--transport",
            "stdio",
            "--",
            "/nonexistent/callback-bridge",
        ],
    );
    let mut relay = Proc::spawn(cmd, "relay");
    let first = relay.next_json().expect("exit line");
    assert_eq!(first["event"], "exit");
    assert_eq!(relay.wait_exit().code(), Some(1));
}

#[test]
fn the_relay_reapplies_the_policy_when_the_gateway_is_lax() {
    let upstream = MockUpstream::app();
    // A gateway whose own allowlist lets a secrets route through: only the relay stands between
    // the sandbox and the upstream.
    let dir = tempfile::tempdir().unwrap();
    let lax = dir.path().join("lax-routes.toml");
    std::fs::write(
        &lax,
        "[[route]]\nid = \"lax.secrets\"\nmethod = \"GET\"\npath = \"/api/companies/{id}/secrets\"\n",
    )
    .unwrap();
    let relay = Relay::start(
        &upstream,
        RelayOptions {
            gateway_args: &["--routes", lax.to_str().unwrap()],
            supplied_token: true,
            ..Default::default()
        },
    );
    let (_serve, serve_addr) = start_serve(&upstream);
    let raw = format!(
        "GET /api/companies/c1/secrets HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {BRIDGE_TOKEN}\r\n\r\n"
    );
    let direct = raw_request(serve_addr, raw.as_bytes());
    let via_stdio = raw_request(relay.addr, raw.as_bytes());
    assert_eq!(direct.status, 403);
    assert_eq!(direct.json_code(), "route_not_allowed");
    assert_eq!(via_stdio.status, direct.status);
    assert_eq!(via_stdio.body, direct.body);
    assert_eq!(
        via_stdio.header("x-bridge-error"),
        direct.header("x-bridge-error")
    );
    assert!(
        upstream.requests().is_empty(),
        "the secrets route reached the upstream"
    );
}

#[test]
fn the_relay_refuses_streams_with_a_forged_token() {
    let upstream = MockUpstream::app();
    // A hostile sandbox replaces the token it was given with its own.
    let relay = Relay::start(
        &upstream,
        RelayOptions {
            shell_prefix: Some(
                "CALLBACK_BRIDGE_TOKEN=forged-token-0123456789; export CALLBACK_BRIDGE_TOKEN",
            ),
            ..Default::default()
        },
    );
    let (_serve, serve_addr) = start_serve(&upstream);
    let raw =
        "GET /api/agents/me HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer forged-token-0123456789\r\n\r\n";
    let via_stdio = raw_request(relay.addr, raw.as_bytes());
    let direct = raw_request(serve_addr, raw.as_bytes());
    assert_eq!(via_stdio.status, 401);
    assert_eq!(via_stdio.json_code(), "invalid_token");
    assert_eq!(via_stdio.body, direct.body);
    assert_eq!(via_stdio.header("connection"), Some("close"));
    assert!(
        upstream.requests().is_empty(),
        "a forged stream reached the upstream"
    );
}

#[test]
fn serves_a_node_http2_gateway_speaking_paperclip_http2_v1() {
    node_gateway_round_trip(false);
}

#[test]
fn streams_ended_by_an_empty_data_frame_have_no_body() {
    // A bodiless GET whose stream ends with an empty DATA frame must not look like a GET with a
    // body (400); real bodies still arrive byte-exact.
    node_gateway_round_trip(true);
}

fn node_gateway_round_trip(end_with_data: bool) {
    let upstream = MockUpstream::app();
    let end_with_data = if end_with_data { "1" } else { "0" };
    let (relay, agent) =
        node_gateway_relay(&upstream, &[("NODE_GATEWAY_END_WITH_DATA", end_with_data)]);
    let auth = format!("Bearer {BRIDGE_TOKEN}");

    let got = request(
        agent,
        "GET",
        "/api/agents/me?x=1",
        &[("authorization", &auth)],
        b"",
    );
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    assert_eq!(got.json()["target"], "/api/agents/me?x=1");
    let expected_auth = format!("Bearer {UPSTREAM_TOKEN}");
    let seen = upstream.find("/api/agents/me?x=1");
    assert_eq!(
        seen.header("authorization").as_deref(),
        Some(expected_auth.as_str())
    );
    // Paperclip's gateway sends no x-request-id: the relay makes one, forwards it and logs it
    // (docs/reference.md §3.7).
    let ids = seen.header_all("x-request-id");
    assert!(ids.len() == 1 && ids[0].len() == 36, "{ids:?}");
    let logged = |relay: &Proc| {
        relay.stderr_lines().iter().any(|l| {
            serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                v["message"] == "request"
                    && v["request_id"] == ids[0].as_str()
                    && v["role"] == "relay"
            })
        })
    };
    wait_until("the relay's access line with the forwarded id", || {
        logged(&relay)
    });

    let bytes = pattern(200 * 1024 + 1, 3);
    let got = request(
        agent,
        "POST",
        "/api/companies/c1/issues/i1/attachments",
        &[
            ("authorization", &auth),
            ("content-type", "multipart/form-data; boundary=b"),
        ],
        &bytes,
    );
    // The mock upstream answers a POST with 201 and the body echoed.
    assert_eq!(got.status, 201);
    assert!(
        got.body == bytes,
        "binary body differs through the Node gateway"
    );

    // The Node gateway checks no routes: the relay's policy answers.
    let denied = request(
        agent,
        "GET",
        "/api/companies/c1/secrets",
        &[("authorization", &auth)],
        b"",
    );
    assert_eq!(denied.status, 403);
    assert_eq!(denied.json_code(), "route_not_allowed");
    assert_eq!(
        upstream.requests().len(),
        2,
        "the denied request reached the upstream"
    );
}

#[test]
fn paperclips_key_names_and_named_variables_never_reach_the_gateway() {
    let upstream = MockUpstream::app();
    let relay = Relay::start(
        &upstream,
        RelayOptions {
            relay_args: &["--scrub-env", "MY_DEPLOY_SECRET"],
            relay_env: &[
                ("PAPERCLIP_API_KEY", "pcp-key-in-the-adapter-env"),
                ("PAPERCLIP_API_KEY_FILE", "/run/secrets/pcp-key-file"),
                ("MY_DEPLOY_SECRET", "deploy-secret-value"),
                ("MY_HARMLESS_SETTING", "kept"),
            ],
            ..Default::default()
        },
    );
    let environ = proc_strings(relay.gateway_pid(), "environ");
    assert!(
        environ.iter().any(|e| e == "MY_HARMLESS_SETTING=kept"),
        "the test has teeth: the relay's environment is inherited otherwise"
    );
    for secret in [
        "pcp-key-in-the-adapter-env",
        "/run/secrets/pcp-key-file",
        "deploy-secret-value",
    ] {
        assert!(
            !environ.iter().any(|e| e.contains(secret)),
            "{secret} reached the gateway"
        );
    }
}

#[test]
fn a_body_with_a_declared_length_reaches_the_upstream_with_that_length() {
    // Our gateway puts the agent's `content-length` on the stream; the relay forwards it, as
    // Paperclip's host does, instead of re-framing the body as chunked.
    let upstream = MockUpstream::app();
    let relay = Relay::start(&upstream, RelayOptions::default());
    let body = br#"{"body":"hello"}"#;
    let got = Req::new("POST", "/api/issues/i1/comments")
        .header("authorization", &relay.auth())
        .json(std::str::from_utf8(body).unwrap())
        .send(relay.addr);
    assert_eq!(got.status, 201, "{}", got.text());
    let seen = upstream.wait_for_body_end(0);
    assert_eq!(seen.body, body);
    assert_eq!(seen.header("content-length"), Some(body.len().to_string()));
    assert_eq!(seen.header("transfer-encoding"), None);
}

/// The relay behind the Node stand-in for Paperclip's gateway, configured by `env` (the
/// `NODE_GATEWAY_*` switches of node_gateway.mjs); returns the relay and the agent's address.
fn node_gateway_relay(
    upstream: &MockUpstream,
    env: &[(&str, &str)],
) -> (Proc, std::net::SocketAddr) {
    let port = closed_port();
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/support/node_gateway.mjs"
    );
    let launch = format!(
        "PAPERCLIP_BRIDGE_TOKEN=\"$CALLBACK_BRIDGE_TOKEN\" PAPERCLIP_BRIDGE_NONCE=\"$CALLBACK_BRIDGE_NONCE\" \
         PAPERCLIP_BRIDGE_PORT={port} exec node '{script}'"
    );
    let mut cmd = relay_command(
        upstream,
        &["relay", "--transport", "stdio", "--", "sh", "-c", &launch],
    );
    cmd.env("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN)
        .envs(env.iter().copied());
    let mut relay = Proc::spawn(cmd, "relay");
    let ready = relay.next_json().expect("relay readiness line");
    assert_eq!(ready["event"], "ready", "{ready}");
    (relay, format!("127.0.0.1:{port}").parse().unwrap())
}

#[test]
fn a_gateways_content_length_is_forwarded_and_a_false_one_refused() {
    let upstream = MockUpstream::app();
    let auth = format!("Bearer {BRIDGE_TOKEN}");
    let body = pattern(100 * 1024 + 7, 5);
    let upload = |agent| {
        request(
            agent,
            "POST",
            "/api/companies/c1/issues/i1/attachments",
            &[
                ("authorization", &auth),
                ("content-type", "multipart/form-data; boundary=b"),
            ],
            &body,
        )
    };

    // A true length: forwarded as given, no chunked framing.
    let (_relay, agent) =
        node_gateway_relay(&upstream, &[("NODE_GATEWAY_CONTENT_LENGTH", "exact")]);
    let got = upload(agent);
    assert_eq!(got.status, 201, "{}", String::from_utf8_lossy(&got.body));
    let seen = upstream.wait_for_body_end(0);
    assert!(seen.body == body && seen.body_complete);
    assert_eq!(seen.header("content-length"), Some(body.len().to_string()));
    assert_eq!(seen.header("transfer-encoding"), None);

    // No length (Paperclip's own gateway sends none): a body that ends within 64 KiB is read
    // whole and forwarded with its length, as Paperclip's host does; a longer one streams chunked.
    let (_relay, agent) = node_gateway_relay(&upstream, &[("NODE_GATEWAY_CONTENT_LENGTH", "")]);
    assert_eq!(upload(agent).status, 201);
    let seen = upstream.wait_for_body_end(1);
    assert!(seen.body == body && seen.body_complete);
    assert_eq!(seen.header("content-length"), None);
    assert_eq!(seen.header("transfer-encoding").as_deref(), Some("chunked"));
    let comment = br#"{"body":"short"}"#;
    let got = request(
        agent,
        "POST",
        "/api/issues/i1/comments",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        comment,
    );
    assert_eq!(got.status, 201, "{}", String::from_utf8_lossy(&got.body));
    let seen = upstream.wait_for_body_end(2);
    assert_eq!(seen.body, comment);
    assert_eq!(
        seen.header("content-length"),
        Some(comment.len().to_string())
    );
    assert_eq!(seen.header("transfer-encoding"), None);

    // A length the bytes do not match: the relay's HTTP/2 layer resets the stream (the Node
    // gateway answers its agent 502), and no body arrives complete upstream.
    for declare in ["over", "under"] {
        let before = upstream.request_count();
        let (_relay, agent) =
            node_gateway_relay(&upstream, &[("NODE_GATEWAY_CONTENT_LENGTH", declare)]);
        let got = upload(agent);
        assert!(
            got.status >= 400 && got.status != 201,
            "{declare}: a false length must be refused, got {}",
            got.status
        );
        for i in before..upstream.request_count() {
            let r = upstream.wait_for_body_end(i);
            assert!(
                !r.body_complete,
                "{declare}: a body with a false length arrived complete upstream"
            );
        }
    }
}

#[test]
fn the_relay_answers_before_a_gateway_with_a_shorter_wait_gives_up() {
    // The gateway waits 2 s; the relay's own upstream timeout is 30 s. The relay keeps a deadline
    // a margin shorter than the gateway's wait, so the agent gets the relay's precise answer
    // (504 upstream_timeout), not the gateway's 504 bridge_timeout.
    let upstream = MockUpstream::start_with(Behaviour::Hang);
    let relay = Relay::start(
        &upstream,
        RelayOptions {
            gateway_args: &["--response-timeout", "2s"],
            ..Default::default()
        },
    );
    let got = Req::new("GET", "/api/agents/me")
        .header("authorization", &relay.auth())
        .send(relay.addr);
    got.assert_bridge_error(504, "upstream_timeout");
    let seen = upstream.wait_for_requests(1);
    assert_eq!(
        seen[0].header("x-callback-bridge-wait-ms"),
        None,
        "the wait header went upstream"
    );
}
