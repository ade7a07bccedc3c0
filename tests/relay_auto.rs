//! `relay --transport auto` (docs/reference.md §6.5): stdio when the gateway command starts,
//! else the queue, with the reason on the readiness line and in a log line.

mod support;

use support::*;

/// `relay --transport auto --queue-dir Q --gateway-script SCRIPT -- sh -c`, with the upstream,
/// its credential and the bridge token; returns once the readiness line is read.
fn auto_relay(
    upstream: &MockUpstream,
    sandbox: &Sandbox,
    script: &str,
) -> (Proc, serde_json::Value) {
    let queue = sandbox.queue_str();
    let mut cmd = relay_command(
        upstream,
        &[
            "relay",
            "--transport",
            "auto",
            "--queue-dir",
            &queue,
            "--handshake",
            "stdin",
            "--gateway-script",
            script,
            "--",
            "sh",
            "-c",
        ],
    );
    cmd.env("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN);
    let mut relay = Proc::spawn(cmd, "auto relay");
    let ready = relay.next_json().expect("relay readiness line");
    assert_eq!(ready["event"], "ready", "{ready}");
    (relay, ready)
}

#[test]
fn auto_uses_stdio_when_the_gateway_command_starts() {
    let upstream = MockUpstream::start();
    let sandbox = Sandbox::new();
    let port = closed_port();
    let script = format!(
        "exec '{}' gateway --transport stdio --handshake stdin --listen 127.0.0.1:{port}",
        bridge_binary_str()
    );
    let (_relay, ready) = auto_relay(&upstream, &sandbox, &script);
    assert_eq!(ready["transport"], "stdio", "{ready}");
    assert!(ready.get("fallback_reason").is_none(), "{ready}");
    let agent = Agent {
        addr: Endpoint::Tcp(([127, 0, 0, 1], port).into()),
        token: BRIDGE_TOKEN.to_owned(),
    };
    let resp = agent.get("/api/agents/me");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let got = upstream.wait_for_requests(1);
    assert_eq!(
        got[0].header("authorization"),
        Some(format!("Bearer {UPSTREAM_TOKEN}"))
    );
    assert!(
        !sandbox.queue().join("relay.json").exists(),
        "a stdio relay touched the queue"
    );
}

#[test]
fn auto_falls_back_to_the_queue_when_the_gateway_command_cannot_start() {
    let upstream = MockUpstream::start();
    let sandbox = Sandbox::new();
    // The command exits before READY (e.g. a sandbox without the binary, or with stdio off).
    let (relay, ready) = auto_relay(&upstream, &sandbox, "echo 'no stdio here' >&2; exit 3");
    assert_eq!(ready["transport"], "queue", "{ready}");
    assert_eq!(ready["fallback_reason"], "exited_before_ready", "{ready}");
    assert_eq!(ready["queue_dir"], sandbox.queue_str(), "{ready}");
    relay.wait_stderr_contains("using the queue transport", WAIT);
    assert!(relay.stderr_text().contains("exited_before_ready"));

    // The adapter, told `"transport":"queue"`, starts the queue gateway; requests then flow.
    let (_gateway, agent) = sandbox.gateway(&[]);
    let resp = agent.get("/api/agents/me");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let got = upstream.wait_for_requests(1);
    assert_eq!(got[0].target, "/api/agents/me");
    assert_eq!(
        got[0].header("authorization"),
        Some(format!("Bearer {UPSTREAM_TOKEN}"))
    );
    let denied = agent.get("/api/companies/c1/secrets");
    denied.assert_bridge_error(403, "route_not_allowed");
    assert_eq!(
        upstream.request_count(),
        1,
        "the denied request was forwarded"
    );
}

#[test]
fn auto_needs_a_queue_dir_and_a_gateway_script_and_gateways_refuse_it() {
    for (args, needle) in [
        (
            &[
                "relay",
                "--transport",
                "auto",
                "--gateway-script",
                "x",
                "--",
                "sh",
                "-c",
            ][..],
            "queue_dir",
        ),
        (
            &[
                "relay",
                "--transport",
                "auto",
                "--queue-dir",
                "/tmp/q",
                "--",
                "sh",
                "-c",
            ][..],
            "gateway_script",
        ),
        (
            &["gateway", "--transport", "auto", "--listen", "127.0.0.1:0"][..],
            "for the relay",
        ),
    ] {
        let out = run_bridge(args, &[("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN)], WAIT);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out.stderr);
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.stderr);
    }
}

#[test]
fn a_signal_during_the_stdio_attempt_stops_the_relay_cleanly() {
    let upstream = MockUpstream::start();
    let sandbox = Sandbox::new();
    let queue = sandbox.queue_str();
    // A command that never prints READY: the relay is still trying when the signal arrives.
    let mut cmd = relay_command(
        &upstream,
        &[
            "relay",
            "--transport",
            "auto",
            "--queue-dir",
            &queue,
            "--gateway-script",
            "exec sleep 60",
            "--",
            "sh",
            "-c",
        ],
    );
    cmd.env("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN);
    let mut relay = Proc::spawn(cmd, "auto relay");
    relay.wait_stderr_contains("trying the stdio transport", WAIT);
    relay.sigterm();
    let exit = relay.wait_exit_line(WAIT);
    assert_eq!(exit["reason"], "signal", "{exit}");
    assert!(relay.wait_exit().success());
    assert_eq!(upstream.request_count(), 0);
}
