//! Secrets stay secret (docs/reference.md §3 "Logs", §4.1): whatever the log level or format, stderr never
//! contains the bridge token, the upstream credential, a presented wrong token, request or
//! response bodies, or query string values; error bodies never contain a secret.

mod support;

use support::*;

const REQUEST_BODY_CANARY: &str = "reqbody-canary-5Yt8Qw2Ez";
const RESPONSE_BODY_CANARY: &str = "respbody-canary-9Lm3Vb7Xc";
const QUERY_VALUE_CANARY: &str = "queryvalue-canary-4Hn6Rj1Ks";
const DENIED_QUERY_CANARY: &str = "deniedquery-canary-8Pw2Zf5Gd";
const WRONG_TOKEN_CANARY: &str = "wrongtoken-canary-3Df7Tg9Mb";
const COOKIE_CANARY: &str = "cookie-canary-6Sx1Nq4Wy";
const UPSTREAM_COOKIE_CANARY: &str = "upcookie-canary-2Jk8Cv5Ha";

fn secrets_run(log_format: &str, supply_token: bool) {
    let upstream = MockUpstream::start_with(Behaviour::respond(
        200,
        &[
            ("content-type", "application/json"),
            ("set-cookie", &format!("sid={UPSTREAM_COOKIE_CANARY}")),
        ],
        format!("{{\"data\":\"{RESPONSE_BODY_CANARY}\"}}"),
    ));
    let url = upstream.url();
    let mut env = vec![
        ("CALLBACK_BRIDGE_UPSTREAM_TOKEN", UPSTREAM_TOKEN),
        ("PAPERCLIP_RUN_ID", RUN_ID),
        ("RUST_LOG", "trace"),
    ];
    if supply_token {
        env.push(("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN));
    }
    let mut bridge = Bridge::spawn(
        &[
            "--upstream",
            &url,
            "--log-level",
            "debug",
            "--log-format",
            log_format,
        ],
        &env,
    );
    let token = bridge.token.clone();
    assert!(!token.is_empty());

    let mut responses = Vec::new();
    responses.push(bridge.get(&format!(
        "/api/issues/ISS-1?secret_query_key={QUERY_VALUE_CANARY}&other=1"
    )));
    responses.push(
        bridge.send(
            Req::new(
                "POST",
                &format!("/api/issues/ISS-1/comments?k={QUERY_VALUE_CANARY}"),
            )
            .header("cookie", &format!("sid={COOKIE_CANARY}"))
            .json(&format!("{{\"body\":\"{REQUEST_BODY_CANARY}\"}}")),
        ),
    );
    responses.push(bridge.send(
        Req::new("POST", "/api/companies/c/issues/ISS-1/attachments").body(
            "multipart/form-data; boundary=b",
            format!("--b\r\n\r\n{REQUEST_BODY_CANARY}\r\n--b--\r\n"),
        ),
    ));
    responses.push(bridge.get(&format!("/api/secrets?apikey={DENIED_QUERY_CANARY}")));
    responses.push(bridge.get(&format!("/api/agents/%2e%2e/x?v={DENIED_QUERY_CANARY}")));
    responses.push(
        Req::new("GET", &format!("/api/agents/me?t={DENIED_QUERY_CANARY}"))
            .bearer(WRONG_TOKEN_CANARY)
            .send(bridge.addr),
    );
    responses.push(bridge.send(
        Req::new("POST", "/api/issues/ISS-1/comments").body("text/plain", REQUEST_BODY_CANARY),
    ));

    for r in &responses {
        let text = r.text();
        let headers = format!("{:?}", r.headers);
        for secret in [
            BRIDGE_TOKEN,
            token.as_str(),
            UPSTREAM_TOKEN,
            UPSTREAM_COOKIE_CANARY,
        ] {
            assert!(
                !text.contains(secret) && !headers.contains(secret),
                "a response to the agent contains a secret: {} {text:?} {headers}",
                r.status
            );
        }
        if r.status >= 400 {
            for canary in [WRONG_TOKEN_CANARY, REQUEST_BODY_CANARY] {
                assert!(
                    !text.contains(canary),
                    "error body echoes {canary}: {text:?}"
                );
            }
        }
    }

    bridge.sigterm();
    bridge.wait_exit_line(WAIT);
    bridge.wait_exit_status(WAIT);
    let stderr = bridge.stderr_text();
    let lines = stderr.lines().filter(|l| !l.trim().is_empty()).count();
    assert!(
        lines >= responses.len(),
        "expected at least one access-log line per request ({}), got {lines}:\n{stderr}",
        responses.len()
    );
    for (what, secret) in [
        ("bridge token", token.as_str()),
        ("supplied bridge token", BRIDGE_TOKEN),
        ("upstream credential", UPSTREAM_TOKEN),
        ("presented wrong token", WRONG_TOKEN_CANARY),
        ("request body", REQUEST_BODY_CANARY),
        ("response body", RESPONSE_BODY_CANARY),
        ("query value", QUERY_VALUE_CANARY),
        ("query value of a denied request", DENIED_QUERY_CANARY),
        ("caller cookie", COOKIE_CANARY),
        ("upstream set-cookie", UPSTREAM_COOKIE_CANARY),
    ] {
        if what == "supplied bridge token" && !supply_token {
            continue;
        }
        assert!(
            !stderr.contains(secret),
            "log format {log_format}: stderr contains the {what}:\n{}",
            stderr
                .lines()
                .filter(|l| l.contains(secret))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // Checked last so that a policy regression does not hide a leak: the requests above must
    // have exercised forwarding, route denial, path denial, token denial and media-type denial.
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [200, 200, 200, 403, 400, 401, 415],
        "request outcomes"
    );
}

#[test]
fn json_debug_logs_contain_no_secrets_bodies_or_query_values() {
    secrets_run("json", true);
}

#[test]
fn pretty_debug_logs_contain_no_secrets_bodies_or_query_values() {
    secrets_run("pretty", false);
}

#[test]
fn upstream_failure_errors_do_not_reveal_the_credential() {
    let url = format!("http://127.0.0.1:{}", closed_port());
    let mut bridge = Bridge::spawn(
        &["--upstream", &url, "--log-level", "debug"],
        &[
            ("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN),
            ("CALLBACK_BRIDGE_UPSTREAM_TOKEN", UPSTREAM_TOKEN),
        ],
    );
    let resp = bridge.send(
        Req::new("POST", "/api/issues/ISS-1/comments")
            .json(&format!("{{\"b\":\"{REQUEST_BODY_CANARY}\"}}")),
    );
    resp.assert_bridge_error(502, "upstream_unavailable");
    let text = resp.text();
    assert!(!text.contains(UPSTREAM_TOKEN) && !text.contains(BRIDGE_TOKEN));
    bridge.sigterm();
    bridge.wait_exit_status(WAIT);
    let stderr = bridge.stderr_text();
    for secret in [UPSTREAM_TOKEN, BRIDGE_TOKEN, REQUEST_BODY_CANARY] {
        assert!(!stderr.contains(secret), "stderr leaks {secret}:\n{stderr}");
    }
}
