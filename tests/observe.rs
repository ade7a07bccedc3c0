//! Observability (docs/reference.md §3.4, §3.6–§3.8): one request id from the agent's hop to the
//! upstream, `run_id` and `role` on every log line, the exit line's denied/failed split, and the
//! admin listener (health and metrics without the token, nothing else, nothing forwarded).

mod support;

use serde_json::Value;
use support::*;

const ME: &str = "/api/agents/me";

/// Stderr lines of `proc` parsed as JSON; panics on a line that is not a JSON object.
fn json_stderr(proc: &Proc) -> Vec<Value> {
    proc.stderr_lines()
        .iter()
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(Value::is_object)
                .unwrap_or_else(|| panic!("stderr line is not a JSON object: {l:?}"))
        })
        .collect()
}

/// Waits for the access-log line of `request_id` on `proc`'s stderr and returns it.
fn access_line(proc: &Proc, request_id: &str) -> Value {
    let find = || {
        proc.stderr_lines().iter().find_map(|l| {
            serde_json::from_str::<Value>(l)
                .ok()
                .filter(|v| v["message"] == "request" && v["request_id"] == request_id)
        })
    };
    wait_until(&format!("the access line of {request_id}"), || {
        find().is_some()
    });
    find().unwrap()
}

fn is_uuid_v7(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 36
        && b[14] == b'7'
        && s.bytes().enumerate().all(|(i, c)| {
            matches!(i, 8 | 13 | 18 | 23) == (c == b'-') && (c == b'-' || c.is_ascii_hexdigit())
        })
}

// ---------------------------------------------------------------------------------------------
// Request ids
// ---------------------------------------------------------------------------------------------

#[test]
fn serve_forwards_its_request_id_and_ignores_the_agents() {
    let upstream = MockUpstream::start();
    let bridge =
        Bridge::for_upstream_env(&upstream, &[], &[("CALLBACK_BRIDGE_LOG_FORMAT", "json")]);
    let resp = bridge.send(Req::new("GET", ME).header("x-request-id", "agent-chosen-id"));
    assert_eq!(resp.status, 200);
    let id = resp
        .header("x-request-id")
        .expect("x-request-id")
        .to_owned();
    assert!(is_uuid_v7(&id), "{id}");
    let got = upstream.find(ME);
    assert_eq!(
        got.header_all("x-request-id"),
        std::slice::from_ref(&id),
        "the upstream gets the bridge's id, not the agent's"
    );
    let line = access_line(&bridge, &id);
    assert_eq!(line["role"], "serve", "{line}");
    assert_eq!(line["run_id"], RUN_ID, "{line}");
}

#[test]
fn queue_relay_replaces_an_invalid_request_id_from_the_sandbox() {
    let up = MockUpstream::app();
    let sb = Sandbox::new();
    let relay = sb.relay(&up.url(), &["sh", "-c"], &[]);
    let cases = [
        ("0d8c7b6a-5f4e-4d3c-b2a1-0f9e8d7c6b51", Some("gw-id-1")),
        (
            "0d8c7b6a-5f4e-4d3c-b2a1-0f9e8d7c6b52",
            Some("bad id with spaces"),
        ),
        (
            "0d8c7b6a-5f4e-4d3c-b2a1-0f9e8d7c6b53",
            Some(&"x".repeat(65)[..]),
        ),
        ("0d8c7b6a-5f4e-4d3c-b2a1-0f9e8d7c6b54", None),
    ];
    for (file_id, rid) in &cases {
        let headers = match rid {
            Some(rid) => serde_json::json!({"accept": "application/json", "x-request-id": rid}),
            None => serde_json::json!({"accept": "application/json"}),
        };
        let text = serde_json::json!({
            "id": file_id, "method": "GET", "path": ME, "query": format!("?case={file_id}"),
            "headers": headers, "body": "", "createdAt": "2025-01-01T00:00:00.000Z",
        });
        let tmp = sb.requests().join(format!("{file_id}.json.tmp"));
        std::fs::write(&tmp, format!("{text}\n")).unwrap();
        std::fs::rename(&tmp, sb.requests().join(format!("{file_id}.json"))).unwrap();
    }
    for (file_id, rid) in &cases {
        let path = sb.responses().join(format!("{file_id}.json"));
        wait_until("the relay's answer", || path.exists());
        let got = up.find(&format!("{ME}?case={file_id}"));
        let sent = got.header_all("x-request-id");
        assert_eq!(sent.len(), 1, "{sent:?}");
        let line = access_line(&relay, &sent[0]);
        assert_eq!(line["role"], "relay", "{line}");
        match rid {
            Some("gw-id-1") => assert_eq!(sent[0], "gw-id-1", "a valid id is kept"),
            _ => assert!(is_uuid_v7(&sent[0]), "replaced by a new id: {sent:?}"),
        }
    }
    let text = relay.stderr_text();
    assert_eq!(
        text.matches("not a valid request id; replaced").count(),
        2,
        "one warning per invalid id: {text}"
    );
    assert!(
        !text.contains("bad id with spaces") && !text.contains(&"x".repeat(65)),
        "the rejected bytes are not logged"
    );
}

// ---------------------------------------------------------------------------------------------
// run_id and role on every line
// ---------------------------------------------------------------------------------------------

#[test]
fn every_json_line_of_serve_carries_run_id_and_role() {
    let upstream = MockUpstream::start();
    // No upstream credential: start-up logs a warning as well.
    let mut bridge = Bridge::spawn(
        &["--upstream", &upstream.url(), "--log-level", "debug"],
        &[
            ("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN),
            ("PAPERCLIP_RUN_ID", RUN_ID),
            ("CALLBACK_BRIDGE_LOG_FORMAT", "json"),
        ],
    );
    assert_eq!(bridge.get(ME).status, 200);
    assert_eq!(bridge.get("/api/secrets").status, 403);
    assert_eq!(upstream.find(ME).header_all("x-paperclip-run-id"), [RUN_ID]);
    bridge.sigterm();
    let exit = bridge.wait_exit_line(WAIT);
    assert_eq!(bridge.wait_exit_status(WAIT).code(), Some(0));
    assert_eq!(
        (&exit["run_id"], &exit["role"]),
        (&Value::from(RUN_ID), &Value::from("serve"))
    );
    assert_eq!(bridge.ready["run_id"], RUN_ID);
    let lines = json_stderr(&bridge);
    for v in &lines {
        assert_eq!(v["run_id"], RUN_ID, "{v}");
        assert_eq!(v["role"], "serve", "{v}");
        assert!(v["timestamp"].is_string() && v["level"].is_string(), "{v}");
    }
    let messages: Vec<&str> = lines.iter().filter_map(|v| v["message"].as_str()).collect();
    for wanted in ["ready", "request", "shutting down"] {
        assert!(messages.contains(&wanted), "{wanted:?} in {messages:?}");
    }
    assert!(
        lines.iter().any(|v| v["level"] == "WARN"),
        "the missing-credential warning: {messages:?}"
    );
}

#[test]
fn a_generated_run_id_is_logged_but_not_sent_upstream() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::spawn(
        &["--upstream", &upstream.url()],
        &[
            ("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN),
            ("CALLBACK_BRIDGE_LOG_FORMAT", "json"),
        ],
    );
    let run_id = bridge.ready["run_id"].as_str().expect("run_id").to_owned();
    assert!(is_uuid_v7(&run_id), "{run_id}");
    let resp = bridge.get(ME);
    assert!(!upstream.find(ME).has_header("x-paperclip-run-id"));
    let id = resp.header("x-request-id").unwrap();
    assert_eq!(access_line(&bridge, id)["run_id"], run_id);
}

#[test]
fn pretty_lines_end_with_run_id_and_role() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::spawn(
        &["--upstream", &upstream.url(), "--run-id", "run-7"],
        &[
            ("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN),
            ("CALLBACK_BRIDGE_LOG_FORMAT", "pretty"),
        ],
    );
    assert_eq!(bridge.get(ME).status, 200);
    bridge.wait_stderr_contains("request_id=", WAIT);
    for line in bridge.stderr_lines() {
        assert!(line.ends_with(" run_id=run-7 role=serve"), "{line:?}");
    }
}

#[test]
fn a_run_id_that_is_malformed_or_a_secret_is_refused() {
    for (value, what) in [
        ("run 7", "a space"),
        (&*"r".repeat(129), "too long"),
        (BRIDGE_TOKEN, "the bridge token"),
        (UPSTREAM_TOKEN, "the upstream credential"),
    ] {
        let out = run_bridge(
            &["serve", "--run-id", value],
            &[
                ("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN),
                ("CALLBACK_BRIDGE_UPSTREAM_TOKEN", UPSTREAM_TOKEN),
            ],
            WAIT,
        );
        assert_eq!(out.status.code(), Some(2), "{what}: {}", out.stderr);
        assert!(out.stderr.contains("run_id"), "{what}: {}", out.stderr);
        assert!(
            !out.stderr.contains(value),
            "{what}: value echoed: {}",
            out.stderr
        );
    }
}

#[test]
fn gateway_lines_carry_role_gateway() {
    let sb = Sandbox::new();
    let (mut gateway, _agent) = sb.gateway_env(&["--run-id", "run-g"], &[]);
    gateway.sigterm();
    let exit = gateway.wait_exit_line(WAIT);
    assert_eq!(
        (&exit["run_id"], &exit["role"]),
        (&Value::from("run-g"), &Value::from("gateway"))
    );
    for v in json_stderr(&gateway) {
        assert_eq!(
            (&v["run_id"], &v["role"]),
            (&Value::from("run-g"), &Value::from("gateway")),
            "{v}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Admin listener
// ---------------------------------------------------------------------------------------------

/// The admin listener's address from a readiness line.
fn admin_of(ready: &Value) -> Endpoint {
    endpoint_of_url(
        ready["admin"]
            .as_str()
            .unwrap_or_else(|| panic!("no admin url: {ready}")),
    )
}

#[test]
fn admin_listener_serves_health_and_metrics_without_the_token_and_nothing_else() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &["--admin-listen", "127.0.0.1:0"]);
    let admin = admin_of(&bridge.ready);
    assert_eq!(bridge.get(ME).status, 200);
    let before = upstream.request_count();

    for path in ["/livez", "/__bridge/health"] {
        let r = request(admin, "GET", path, &[], b"");
        assert_eq!(
            (r.status, r.json()),
            (200, serde_json::json!({"status": "ok"})),
            "{path}"
        );
    }
    let r = request(admin, "GET", "/readyz", &[], b"");
    assert_eq!(
        (r.status, r.json()),
        (200, serde_json::json!({"status": "ready"}))
    );
    for path in ["/metrics", "/__bridge/metrics"] {
        let r = request(admin, "GET", path, &[], b"");
        assert_eq!(r.status, 200, "{path}");
        let samples = prometheus_samples(&r.text());
        assert!(
            samples
                .keys()
                .any(|k| k.starts_with("callback_bridge_build_info{version=")),
            "{samples:#?}"
        );
        let ok =
            "callback_bridge_requests_total{route=\"agents.me.get\",status=\"200\",deny_code=\"\"}";
        assert_eq!(samples.get(ok), Some(&1.0), "{samples:#?}");
    }
    assert_eq!(request(admin, "HEAD", "/livez", &[], b"").status, 200);

    // Everything else: 404 JSON, with or without a token; nothing forwarded.
    let auth = format!("Bearer {BRIDGE_TOKEN}");
    for (method, path) in [
        ("GET", ME),
        ("GET", "/"),
        ("GET", "/__bridge/other"),
        ("POST", "/api/issues/ISS-1/comments"),
        ("GET", "/livez/x"),
    ] {
        request(admin, method, path, &[("authorization", &auth)], b"")
            .assert_bridge_error(404, "not_found");
    }
    request(admin, "POST", "/metrics", &[], b"{}").assert_bridge_error(405, "method_not_allowed");
    assert_eq!(
        upstream.request_count(),
        before,
        "the admin listener forwards nothing"
    );

    // The agent listener still wants the token for metrics.
    request(bridge.addr, "GET", "/__bridge/metrics", &[], b"")
        .assert_bridge_error(401, "invalid_token");
    // Admin requests are not counted as agent requests.
    let samples = prometheus_samples(&request(admin, "GET", "/metrics", &[], b"").text());
    let total: f64 = samples
        .iter()
        .filter(|(k, _)| k.starts_with("callback_bridge_requests_total{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(
        total, 2.0,
        "the agent's GET and its unauthenticated metrics request: {samples:#?}"
    );
}

#[test]
fn readyz_reports_an_unreachable_upstream_until_a_request_gets_through() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let bridge = Bridge::spawn(
        &["--upstream", &url, "--admin-listen", "localhost:0"],
        &[("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN)],
    );
    let admin = admin_of(&bridge.ready);
    assert_eq!(request(admin, "GET", "/readyz", &[], b"").status, 200);
    assert_eq!(bridge.get(ME).status, 502);
    let r = request(admin, "GET", "/readyz", &[], b"");
    assert_eq!(
        (r.status, r.json()),
        (
            503,
            serde_json::json!({"status": "not_ready", "reason": "next_hop_unreachable"})
        )
    );
    assert_eq!(request(admin, "GET", "/livez", &[], b"").status, 200);
}

#[test]
fn admin_listen_is_loopback_only_unless_allowed() {
    let out = run_bridge(
        &["serve", "--admin-listen", "0.0.0.0:0"],
        &[("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN)],
        WAIT,
    );
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(out.stderr.contains("admin_listen"), "{}", out.stderr);
    let out = run_bridge(
        &["serve", "--admin-listen", "unix:/tmp/x.sock"],
        &[("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN)],
        WAIT,
    );
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);

    let bridge = Bridge::spawn(
        &["--admin-listen", "0.0.0.0:0", "--allow-non-loopback"],
        &[("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN)],
    );
    let url = bridge.ready["admin"]
        .as_str()
        .unwrap()
        .replace("0.0.0.0", "127.0.0.1");
    assert_eq!(
        request(endpoint_of_url(&url), "GET", "/livez", &[], b"").status,
        200
    );
}

#[test]
fn queue_relay_has_an_admin_listener_too() {
    let up = MockUpstream::app();
    let sb = Sandbox::new();
    let relay = sb.relay(&up.url(), &["sh", "-c"], &["--admin-listen", "127.0.0.1:0"]);
    let ready: Value = serde_json::from_str(&relay.stdout_lines()[0]).unwrap();
    assert_eq!(ready["role"], "relay", "{ready}");
    assert_eq!(ready["run_id"], RUN_ID, "{ready}");
    let admin = admin_of(&ready);
    assert_eq!(request(admin, "GET", "/readyz", &[], b"").status, 200);
    let samples = prometheus_samples(&request(admin, "GET", "/metrics", &[], b"").text());
    assert_eq!(samples.get("callback_bridge_forwarded_total"), Some(&0.0));
    request(admin, "GET", ME, &[], b"").assert_bridge_error(404, "not_found");
}

#[test]
fn readyz_turns_503_stopping_while_draining_and_livez_stays_200() {
    let upstream = MockUpstream::start();
    let mut bridge = Bridge::for_upstream(
        &upstream,
        &["--admin-listen", "127.0.0.1:0", "--drain-timeout", "30s"],
    );
    let admin = admin_of(&bridge.ready);
    upstream.set_holding(true);
    let pending = bridge
        .agent()
        .send_in_background(Req::new("GET", "/api/issues/hold"));
    upstream.wait_for("the held request", 1, "/api/issues/hold");
    bridge.sigterm();
    bridge.wait_stderr_contains("shutting down", WAIT);
    let r = request(admin, "GET", "/readyz", &[], b"");
    assert_eq!(
        (r.status, r.json()),
        (
            503,
            serde_json::json!({"status": "not_ready", "reason": "stopping"})
        )
    );
    assert_eq!(request(admin, "GET", "/livez", &[], b"").status, 200);
    upstream.set_holding(false);
    let resp = pending.recv_timeout(WAIT).expect("thread").expect("answer");
    assert_eq!(resp.status, 200);
    bridge.wait_exit_line(WAIT);
    assert_eq!(bridge.wait_exit_status(WAIT).code(), Some(0));
}

#[test]
fn gateways_and_the_stdio_relay_have_admin_listeners() {
    let upstream = MockUpstream::app();
    let relay = Relay::start(
        &upstream,
        RelayOptions {
            relay_args: &["--admin-listen", "127.0.0.1:0"],
            gateway_args: &["--admin-listen", "127.0.0.1:0"],
            supplied_token: true,
            ..Default::default()
        },
    );
    assert_eq!(relay.agent().get(ME).status, 200);
    // The readiness line carries run_id and role like every log line.
    assert_eq!(relay.ready["role"], "relay", "{}", relay.ready);
    assert!(relay.ready["run_id"]
        .as_str()
        .is_some_and(|id| !id.is_empty()));
    let relay_admin = admin_of(&relay.ready);
    let r = request(relay_admin, "GET", "/readyz", &[], b"");
    assert_eq!(r.status, 200, "{:?}", r.text());
    let samples = prometheus_samples(&request(relay_admin, "GET", "/metrics", &[], b"").text());
    assert_eq!(
        samples.get("callback_bridge_forwarded_total"),
        Some(&1.0),
        "the relay forwarded the agent's request upstream"
    );
    // The stdio gateway prints its readiness line on stderr, which reaches the relay's stderr.
    let gateway_ready = relay
        .proc
        .stderr_lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["event"] == "ready" && v["role"] == "gateway")
        .expect("the gateway's readiness line");
    let gateway_admin = admin_of(&gateway_ready);
    assert_eq!(
        request(gateway_admin, "GET", "/readyz", &[], b"").status,
        200
    );
    let samples = prometheus_samples(&request(gateway_admin, "GET", "/metrics", &[], b"").text());
    assert_eq!(samples.get("callback_bridge_forwarded_total"), Some(&1.0));
    request(gateway_admin, "GET", ME, &[], b"").assert_bridge_error(404, "not_found");
    assert_eq!(
        upstream.request_count(),
        1,
        "admin requests forward nothing"
    );
}
