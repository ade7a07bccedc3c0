//! The process contract (docs/reference.md §1, §2, §3): readiness line, exit summary, shutdown and drain,
//! lifeline and time limits, ready file, bridge-local endpoints, configuration precedence and
//! refusal of bad configuration, and the `check` / `explain` / `health` commands.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;
use support::*;

fn is_url_safe_base64(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Non-zero entries of the exit line's `denied` map.
fn denied_counts(exit: &Value) -> BTreeMap<String, u64> {
    exit["denied"]
        .as_object()
        .unwrap_or_else(|| panic!("exit line without a denied map: {exit}"))
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().expect("denied counts are numbers")))
        .filter(|(_, v)| *v > 0)
        .collect()
}

fn write_file(dir: &tempfile::TempDir, name: &str, text: &str) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

fn one_line(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| !l.trim().is_empty()).collect()
}

// ---------------------------------------------------------------------------------------------
// Readiness
// ---------------------------------------------------------------------------------------------

#[test]
fn ready_line_carries_url_pid_and_a_generated_token() {
    let upstream = MockUpstream::start();
    let url = upstream.url();
    let bridge = Bridge::spawn(
        &["--upstream", &url],
        &[("CALLBACK_BRIDGE_UPSTREAM_TOKEN", UPSTREAM_TOKEN)],
    );
    let ready = &bridge.ready;
    let obj = ready.as_object().unwrap();
    let keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    for k in &keys {
        assert!(
            ["event", "url", "pid", "token", "run_id", "role"].contains(k),
            "unexpected key {k} in the readiness line {ready}"
        );
    }
    assert_eq!(ready["event"], "ready");
    let u = ready["url"].as_str().unwrap();
    let port: u16 = u
        .strip_prefix("http://127.0.0.1:")
        .unwrap_or_else(|| panic!("url must be http://127.0.0.1:PORT, got {u}"))
        .parse()
        .unwrap_or_else(|_| panic!("url must end in a port, got {u}"));
    assert_ne!(port, 0);
    assert_eq!(ready["pid"].as_u64(), Some(bridge.pid() as u64), "pid");
    let token = ready["token"]
        .as_str()
        .expect("a generated token is printed");
    assert_eq!(
        token.len(),
        43,
        "32 bytes base64url without padding: {token}"
    );
    assert!(is_url_safe_base64(token), "token is base64url: {token}");

    // The printed token is the one the bridge accepts.
    let resp = bridge.get("/api/agents/me");
    assert_eq!(resp.status, 200, "{:?}", resp.text());
    let resp = Req::new("GET", "/api/agents/me")
        .bearer("not-the-token")
        .send(bridge.addr);
    resp.assert_bridge_error(401, "invalid_token");
    assert_eq!(upstream.request_count(), 1);
}

#[test]
fn ready_line_omits_a_supplied_token() {
    let bridge = Bridge::spawn(&[], &[("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN)]);
    assert!(
        bridge.ready.get("token").is_none(),
        "a supplied token must not be printed: {}",
        bridge.ready
    );
    let resp = bridge.send(Req::new("GET", "/__bridge/metrics"));
    assert_eq!(
        resp.status,
        200,
        "the supplied token is accepted: {:?}",
        resp.text()
    );
}

#[test]
fn token_file_supplies_the_bridge_token() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_file(&dir, "bridge-token", &format!("{BRIDGE_TOKEN}\n"));
    let mut bridge = Bridge::spawn(&["--token-file", &file], &[]);
    assert!(bridge.ready.get("token").is_none(), "{}", bridge.ready);
    bridge.token = BRIDGE_TOKEN.to_string();
    let resp = bridge.send(Req::new("GET", "/__bridge/metrics"));
    assert_eq!(resp.status, 200, "{:?}", resp.text());
}

#[test]
fn serve_without_arguments_listens_on_loopback_with_fresh_tokens() {
    let a = Bridge::spawn(&[], &[]);
    let b = Bridge::spawn(&[], &[]);
    for bridge in [&a, &b] {
        assert!(
            bridge.url.starts_with("http://127.0.0.1:"),
            "default listen is 127.0.0.1:0, got {}",
            bridge.url
        );
        assert_eq!(bridge.stdout_lines().len(), 1);
        let resp = Req::new("GET", "/__bridge/health").send(bridge.addr);
        assert_eq!(resp.status, 200);
    }
    assert_ne!(a.addr.port(), b.addr.port(), "ephemeral ports");
    assert_ne!(a.token, b.token, "each run generates its own token");
}

#[test]
fn missing_upstream_credential_warns_once() {
    let bridge = Bridge::spawn(&[], &[("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN)]);
    // The warning is logged at start; wait for something on stderr, then look for exactly one.
    let resp = Req::new("GET", "/__bridge/health").send(bridge.addr);
    assert_eq!(resp.status, 200);
    let mut bridge = bridge;
    bridge.sigterm();
    bridge.wait_exit_status(WAIT);
    let stderr = bridge.stderr_text();
    let warnings = stderr
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("warn") && (l.contains("credential") || l.contains("token"))
        })
        .count();
    assert_eq!(
        warnings, 1,
        "one warning about the missing credential; stderr:\n{stderr}"
    );
}

// ---------------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------------

#[test]
fn sigterm_while_idle_exits_0_with_counted_summary() {
    let upstream = MockUpstream::start();
    let mut bridge = Bridge::for_upstream(&upstream, &[]);
    assert_eq!(bridge.get("/api/agents/me").status, 200);
    assert_eq!(bridge.get("/api/issues/ISS-1").status, 200);
    assert_eq!(
        Req::new("GET", "/api/agents/me").send(bridge.addr).status,
        401
    );
    assert_eq!(bridge.get("/api/secrets").status, 403);
    assert_eq!(bridge.get("/api/companies/c/secrets").status, 403);
    assert_eq!(bridge.get("/api/agents/%2e%2e/x").status, 400);

    bridge.sigterm();
    let exit = bridge.wait_exit_line(WAIT);
    let status = bridge.wait_exit_status(WAIT);
    assert_eq!(
        status.code(),
        Some(0),
        "exit code; stderr:\n{}",
        bridge.stderr_text()
    );
    assert_eq!(exit["reason"], "signal", "{exit}");
    assert_eq!(exit["requests"], 6, "{exit}");
    assert_eq!(exit["forwarded"], 2, "{exit}");
    assert_eq!(exit["upstream_errors"], 0, "{exit}");
    let expected: BTreeMap<String, u64> = [
        ("invalid_token".to_string(), 1),
        ("route_not_allowed".to_string(), 2),
        ("invalid_path".to_string(), 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(denied_counts(&exit), expected, "{exit}");
    assert_eq!(
        bridge.stdout_lines().len(),
        2,
        "stdout holds the readiness line and the exit line only: {:?}",
        bridge.stdout_lines()
    );
}

#[test]
fn sigterm_right_after_readiness_exits_cleanly() {
    // A spawner may stop the bridge as soon as it has read the readiness line: the signal must
    // already be handled then (drain, exit line, exit 0), not kill the process.
    let mut bridge = Bridge::spawn(&[], &[]);
    bridge.sigterm();
    let exit = bridge.wait_exit_line(WAIT);
    assert_eq!(exit["reason"], "signal", "{exit}");
    assert_eq!(bridge.wait_exit_status(WAIT).code(), Some(0));
}

#[test]
fn sigint_exits_0_with_reason_signal() {
    let mut bridge = Bridge::spawn(&[], &[]);
    bridge.signal("INT");
    let exit = bridge.wait_exit_line(WAIT);
    assert_eq!(exit["reason"], "signal");
    assert_eq!(exit["requests"], 0);
    assert_eq!(bridge.wait_exit_status(WAIT).code(), Some(0));
}

#[test]
fn exit_summary_counts_upstream_errors() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let mut bridge = Bridge::spawn(
        &["--upstream", &url],
        &[("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN)],
    );
    assert_eq!(bridge.get("/api/agents/me").status, 502);
    bridge.sigterm();
    let exit = bridge.wait_exit_line(WAIT);
    assert_eq!(exit["upstream_errors"], 1, "{exit}");
    assert_eq!(exit["requests"], 1, "{exit}");
    // A forwarding failure is not a denial (docs/reference.md §3.4).
    assert_eq!(exit["denied"], serde_json::json!({}), "{exit}");
    assert_eq!(
        exit["failed"],
        serde_json::json!({"upstream_unavailable": 1}),
        "{exit}"
    );
}

#[test]
fn sigterm_lets_an_in_flight_request_finish() {
    let upstream = MockUpstream::start_with(Behaviour::Delay(Duration::from_millis(1000)));
    let mut bridge = Bridge::for_upstream(&upstream, &["--drain-timeout", "15s"]);
    let req = Req::new("GET", "/api/agents/me").bearer(BRIDGE_TOKEN);
    let pending = raw_request_in_background(bridge.addr, req.to_bytes(bridge.addr));
    upstream.wait_for_requests(1);
    bridge.sigterm();
    let resp = pending
        .recv_timeout(WAIT)
        .expect("client thread")
        .expect("the in-flight request gets its response during the drain");
    assert_eq!(resp.status, 200, "{:?}", resp.text());
    assert_eq!(resp.body, b"{\"ok\":true}");
    let exit = bridge.wait_exit_line(WAIT);
    assert_eq!(exit["reason"], "signal");
    assert_eq!(exit["forwarded"], 1, "{exit}");
    assert_eq!(bridge.wait_exit_status(WAIT).code(), Some(0));
}

#[test]
fn drain_deadline_answers_503_for_get_and_409_for_forwarded_post() {
    let upstream = MockUpstream::start_with(Behaviour::Hang);
    let mut bridge = Bridge::for_upstream(&upstream, &["--drain-timeout", "300ms"]);
    let get = Req::new("GET", "/api/agents/me").bearer(BRIDGE_TOKEN);
    let post = Req::new("POST", "/api/issues/ISS-1/comments")
        .bearer(BRIDGE_TOKEN)
        .json("{\"body\":\"x\"}");
    let pending_get = raw_request_in_background(bridge.addr, get.to_bytes(bridge.addr));
    let pending_post = raw_request_in_background(bridge.addr, post.to_bytes(bridge.addr));
    upstream.wait_for_requests(2);
    bridge.sigterm();
    let get_resp = pending_get
        .recv_timeout(WAIT)
        .unwrap()
        .expect("GET answered");
    let post_resp = pending_post
        .recv_timeout(WAIT)
        .unwrap()
        .expect("POST answered");
    get_resp.assert_bridge_error(503, "shutting_down");
    post_resp.assert_bridge_error(409, "outcome_indeterminate");
    assert_eq!(
        post_resp.header("x-paperclip-bridge-outcome"),
        Some("indeterminate")
    );
    let exit = bridge.wait_exit_line(WAIT);
    assert_eq!(exit["reason"], "signal");
    assert_eq!(bridge.wait_exit_status(WAIT).code(), Some(0));
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
fn lifeline_stdin_eof_exits_0() {
    let mut bridge = Bridge::spawn(&["--lifeline", "stdin"], &[]);
    bridge.close_stdin();
    let exit = bridge.wait_exit_line(WAIT);
    assert_eq!(exit["reason"], "lifeline", "{exit}");
    assert_eq!(bridge.wait_exit_status(WAIT).code(), Some(0));
}

#[test]
fn stdin_eof_is_ignored_without_lifeline() {
    let mut bridge = Bridge::spawn(&[], &[]);
    bridge.close_stdin();
    // Still serving after stdin closed (this request is answered after the EOF was delivered)…
    let resp = Req::new("GET", "/__bridge/health").send(bridge.addr);
    assert_eq!(resp.status, 200);
    // …and when it does stop, it is for the signal, not for stdin.
    bridge.sigterm();
    let exit = bridge.wait_exit_line(WAIT);
    assert_eq!(exit["reason"], "signal", "{exit}");
}

#[test]
fn max_lifetime_exits_0_with_reason_lifetime() {
    let mut bridge = Bridge::spawn(&["--max-lifetime", "500ms"], &[]);
    let exit = bridge.wait_exit_line(WAIT);
    assert_eq!(exit["reason"], "lifetime", "{exit}");
    assert_eq!(bridge.wait_exit_status(WAIT).code(), Some(0));
}

#[test]
fn idle_exit_exits_0_with_reason_idle() {
    let mut bridge = Bridge::spawn(&["--idle-exit", "500ms"], &[]);
    let exit = bridge.wait_exit_line(WAIT);
    assert_eq!(exit["reason"], "idle", "{exit}");
    assert_eq!(bridge.wait_exit_status(WAIT).code(), Some(0));
}

#[test]
fn time_limits_are_read_from_the_environment_too() {
    let mut bridge = Bridge::spawn(&[], &[("CALLBACK_BRIDGE_MAX_LIFETIME", "300ms")]);
    let exit = bridge.wait_exit_line(WAIT);
    assert_eq!(exit["reason"], "lifetime", "{exit}");
}

// ---------------------------------------------------------------------------------------------
// Ready file
// ---------------------------------------------------------------------------------------------

#[test]
fn ready_file_has_mode_0600_and_the_readiness_json() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ready.json");
    let bridge = Bridge::spawn(&["--ready-file", path.to_str().unwrap()], &[]);
    // The file is published with the readiness line; allow a bounded wait for the rename.
    let deadline = std::time::Instant::now() + WAIT;
    while !path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "ready file never appeared"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "ready file mode {mode:o}");
    let text = std::fs::read_to_string(&path).unwrap();
    let json: Value = serde_json::from_str(text.trim()).expect("ready file holds JSON");
    assert_eq!(json, bridge.ready, "ready file equals the readiness line");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "no temp files left next to it: {leftovers:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Bridge-local endpoints
// ---------------------------------------------------------------------------------------------

#[test]
fn health_answers_without_token_and_is_never_forwarded() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let resp = Req::new("GET", "/__bridge/health").send(bridge.addr);
    assert_eq!(resp.status, 200);
    assert!(resp
        .header("content-type")
        .unwrap_or("")
        .starts_with("application/json"));
    assert_eq!(resp.json(), serde_json::json!({"status": "ok"}));
    let resp = bridge.get("/__bridge/health");
    assert_eq!(resp.status, 200, "with a token too");
    assert_eq!(upstream.request_count(), 0);
}

#[test]
fn metrics_need_the_token_and_speak_prometheus() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    assert_eq!(bridge.get("/api/agents/me").status, 200);
    assert_eq!(bridge.get("/api/secrets").status, 403);

    let resp = Req::new("GET", "/__bridge/metrics").send(bridge.addr);
    resp.assert_bridge_error(401, "invalid_token");
    let resp = Req::new("GET", "/__bridge/metrics")
        .bearer("wrong")
        .send(bridge.addr);
    resp.assert_bridge_error(401, "invalid_token");

    let resp = bridge.get("/__bridge/metrics");
    assert_eq!(resp.status, 200, "{:?}", resp.text());
    assert!(
        resp.header("content-type")
            .unwrap_or("")
            .starts_with("text/plain"),
        "Prometheus text format, got {:?}",
        resp.header("content-type")
    );
    let text = resp.text();
    assert!(text.contains("# TYPE "), "Prometheus exposition:\n{text}");
    assert!(
        text.contains("route_not_allowed"),
        "deny codes are counted:\n{text}"
    );
    assert!(!text.contains(BRIDGE_TOKEN) && !text.contains(UPSTREAM_TOKEN));
    assert_eq!(upstream.request_count(), 1, "metrics are never forwarded");
}

#[test]
fn other_bridge_paths_are_never_forwarded() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    for target in [
        "/__bridge/",
        "/__bridge/unknown",
        "/__bridge/health/x",
        "/__bridge",
    ] {
        let resp = bridge.get(target);
        assert!(
            (400..500).contains(&resp.status),
            "{target}: expected a 4xx from the bridge, got {}",
            resp.status
        );
    }
    let resp = bridge.send(Req::new("POST", "/__bridge/health").json("{}"));
    assert!(
        (400..500).contains(&resp.status),
        "POST health: {}",
        resp.status
    );
    assert_eq!(upstream.request_count(), 0);
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

/// Posts JSON bodies of 150 and 250 bytes and reports which were forwarded.
fn accepted_sizes(bridge: &Bridge) -> (u16, u16) {
    let body = |n: usize| format!("{{\"b\":\"{}\"}}", "x".repeat(n - 8));
    let small = bridge.send(Req::new("POST", "/api/issues/ISS-1/comments").json(&body(150)));
    let large = bridge.send(Req::new("POST", "/api/issues/ISS-1/comments").json(&body(250)));
    (small.status, large.status)
}

#[test]
fn configuration_precedence_is_flag_then_env_then_file() {
    let upstream = MockUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(&dir, "bridge.toml", "max_body_bytes = 100\n");
    let url = upstream.url();
    let base = ["--config", config.as_str(), "--upstream", url.as_str()];
    let token = ("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN);

    let file_only = Bridge::spawn(&base, &[token]);
    assert_eq!(accepted_sizes(&file_only), (413, 413), "file: limit 100");

    let env = ("CALLBACK_BRIDGE_MAX_BODY_BYTES", "200");
    let file_env = Bridge::spawn(&base, &[token, env]);
    assert_eq!(
        accepted_sizes(&file_env),
        (200, 413),
        "env 200 beats file 100"
    );

    let mut args = base.to_vec();
    args.extend_from_slice(&["--max-body-bytes", "300"]);
    let all = Bridge::spawn(&args, &[token, env]);
    assert_eq!(accepted_sizes(&all), (200, 200), "flag 300 beats env 200");

    let env_only = Bridge::spawn(&["--upstream", &url], &[token, env]);
    assert_eq!(accepted_sizes(&env_only), (200, 413), "env without file");
}

#[test]
fn unknown_config_key_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_file(
        &dir,
        "bridge.toml",
        "max_body_bytes = 100\nfrobnicate_level = 3\n",
    );
    for cmd in ["serve", "check"] {
        let out = run_bridge(&[cmd, "--config", &config], &[], WAIT);
        assert_eq!(out.status.code(), Some(2), "{cmd}: stderr {:?}", out.stderr);
        assert!(
            out.stderr.contains("frobnicate_level"),
            "{cmd}: stderr names the key: {:?}",
            out.stderr
        );
        assert_eq!(
            one_line(&out.stderr).len(),
            1,
            "{cmd}: one-line reason: {:?}",
            out.stderr
        );
        if cmd == "serve" {
            assert!(
                !out.stdout.contains("\"ready\""),
                "no readiness line: {:?}",
                out.stdout
            );
        }
    }
}

#[test]
fn non_loopback_listen_is_refused_unless_allowed() {
    for addr in ["0.0.0.0:0", "[::]:0"] {
        let out = run_bridge(&["serve", "--listen", addr], &[], WAIT);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{addr}: stderr {:?}",
            out.stderr
        );
        assert_eq!(one_line(&out.stderr).len(), 1, "{addr}: {:?}", out.stderr);
        assert!(!out.stdout.contains("\"ready\""));
    }
    let out = run_bridge(&["serve"], &[("CALLBACK_BRIDGE_LISTEN", "0.0.0.0:0")], WAIT);
    assert_eq!(out.status.code(), Some(2), "from env: {:?}", out.stderr);

    let bridge = Bridge::spawn(&["--listen", "0.0.0.0:0", "--allow-non-loopback"], &[]);
    let resp = Req::new("GET", "/__bridge/health").send(bridge.addr);
    assert_eq!(resp.status, 200);
}

#[test]
fn other_loopback_addresses_are_accepted() {
    let bridge = Bridge::spawn(&["--listen", "127.0.0.2:0"], &[]);
    assert!(
        bridge.url.starts_with("http://127.0.0.2:"),
        "{}",
        bridge.url
    );
}

#[test]
fn invalid_upstream_url_exits_2() {
    for url in [
        "ftp://127.0.0.1:3100",
        "http://user:pass@127.0.0.1:3100",
        "http://127.0.0.1:3100/?x=1",
        "http://127.0.0.1:3100/#frag",
        "not a url",
        "127.0.0.1:3100",
        "",
    ] {
        let out = run_bridge(&["serve", "--upstream", url], &[], WAIT);
        assert_eq!(
            out.status.code(),
            Some(2),
            "upstream {url:?}: stderr {:?}",
            out.stderr
        );
        assert_eq!(one_line(&out.stderr).len(), 1, "{url:?}: {:?}", out.stderr);
        assert!(
            !out.stdout.contains("\"ready\""),
            "{url:?}: {:?}",
            out.stdout
        );
    }
}

#[test]
fn secrets_are_not_accepted_as_command_line_values() {
    for flag in ["--token", "--upstream-token", "--bridge-token"] {
        let out = run_bridge(&["serve", flag, "s3cret-on-argv"], &[], WAIT);
        assert_eq!(out.status.code(), Some(2), "{flag}: {:?}", out.stderr);
    }
}

#[test]
fn port_in_use_exits_1() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap().to_string();
    let out = run_bridge(&["serve", "--listen", &addr], &[], WAIT);
    assert_eq!(out.status.code(), Some(1), "stderr {:?}", out.stderr);
    assert!(!out.stdout.contains("\"ready\""));
}

#[test]
fn check_prints_the_compiled_routes() {
    let out = run_bridge(&["check"], &[], WAIT);
    assert_eq!(out.status.code(), Some(0), "stderr {:?}", out.stderr);
    for path in [
        "/api/agents/me",
        "/api/issues/",
        "/api/routine-triggers/",
        "/llms/agent-icons.txt",
        "/runtime-tools/github/credentials",
    ] {
        assert!(
            out.stdout.contains(path),
            "check output lists {path}:\n{}",
            out.stdout
        );
    }
    assert!(!out.stdout.contains("/api/secrets"));
}

fn explain(args: &[&str]) -> Value {
    let mut full = vec!["explain"];
    full.extend_from_slice(args);
    let out = run_bridge(&full, &[], WAIT);
    serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "explain {args:?} must print JSON ({e}); status {:?} stdout {:?} stderr {:?}",
            out.status, out.stdout, out.stderr
        )
    })
}

#[test]
fn explain_reports_allow_with_the_route() {
    let out = run_bridge(&["explain", "GET", "/api/agents/me"], &[], WAIT);
    assert_eq!(out.status.code(), Some(0), "stderr {:?}", out.stderr);
    let v: Value = serde_json::from_str(out.stdout.trim()).expect("JSON");
    assert_eq!(v["allow"], true, "{v}");
    assert!(
        v["route"].as_str().is_some_and(|r| !r.is_empty()),
        "the matching route id: {v}"
    );
    // A literal segment beats a parameter: /api/agents/me is not the {id} route.
    let by_id = explain(&["GET", "/api/agents/agt-1"]);
    assert_eq!(by_id["allow"], true);
    assert_ne!(by_id["route"], v["route"], "me vs {{id}}: {v} / {by_id}");
}

#[test]
fn explain_reports_denials_with_code_and_status() {
    let cases: Vec<(Vec<&str>, &str, u64)> = vec![
        (vec!["GET", "/api/secrets"], "route_not_allowed", 403),
        (
            vec!["GET", "/api/agents/%2e%2e/secrets"],
            "invalid_path",
            400,
        ),
        (vec!["TRACE", "/api/agents/me"], "method_not_allowed", 405),
        (
            vec![
                "POST",
                "/api/issues/ISS-1/comments",
                "-H",
                "content-type: text/plain",
                "--body-bytes",
                "5",
            ],
            "unsupported_media_type",
            415,
        ),
        (
            vec![
                "POST",
                "/api/issues/ISS-1/comments",
                "-H",
                "content-type: application/json",
                "--body-bytes",
                "20000000",
            ],
            "body_too_large",
            413,
        ),
    ];
    for (args, code, status) in cases {
        let v = explain(&args);
        assert_eq!(v["allow"], false, "{args:?}: {v}");
        assert_eq!(v["code"], code, "{args:?}: {v}");
        assert_eq!(v["status"], status, "{args:?}: {v}");
    }
    let ok = explain(&[
        "POST",
        "/api/issues/ISS-1/comments",
        "-H",
        "content-type: application/json",
        "--body-bytes",
        "20",
    ]);
    assert_eq!(ok["allow"], true, "{ok}");
}

#[test]
fn health_command_probes_a_running_bridge() {
    let bridge = Bridge::spawn(&[], &[]);
    let out = run_bridge(&["health", "--url", &bridge.url], &[], WAIT);
    assert_eq!(out.status.code(), Some(0), "stderr {:?}", out.stderr);
    let down = format!("http://127.0.0.1:{}", closed_port());
    let out = run_bridge(&["health", "--url", &down], &[], WAIT);
    assert_eq!(
        out.status.code(),
        Some(1),
        "nothing listening is a failed check (1); stderr {:?}",
        out.stderr
    );
    // A URL that cannot be probed is a usage error, like every other command's.
    for args in [&["health", "--url", "ftp://x"][..], &["health"][..]] {
        let out = run_bridge(args, &[], WAIT);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: stderr {:?}",
            out.stderr
        );
    }
}

#[test]
fn health_probes_are_counted_but_not_access_logged() {
    let upstream = MockUpstream::start();
    let mut bridge =
        Bridge::for_upstream_env(&upstream, &[], &[("CALLBACK_BRIDGE_LOG_FORMAT", "json")]);
    for _ in 0..3 {
        assert_eq!(bridge.get("/__bridge/health").status, 200);
    }
    assert_eq!(bridge.get("/api/companies/c/secrets").status, 403);
    bridge.sigterm();
    let exit = bridge.wait_exit_line(WAIT);
    assert_eq!(exit["requests"], 4, "{exit}");
    let access: Vec<String> = bridge
        .stderr_lines()
        .into_iter()
        .filter(|l| l.contains("\"message\":\"request\""))
        .collect();
    assert_eq!(access.len(), 1, "{access:?}");
    assert!(access[0].contains("\"status\":403"), "{access:?}");
}
