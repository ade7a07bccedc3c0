//! What the relays say about the commands they run (docs/reference.md §1.3, §6.3): a failing
//! command is named with its exit status and the end of its stderr, never with its script or
//! the values it sets; a tracing shell (`sh -x -c`) does not dump the relay's script into the
//! log; an ordinary stop (SIGTERM, also to the whole process group) logs no warning; a queue
//! relay says whether a gateway is at its queue directory.

mod support;

use std::os::unix::process::CommandExt;
use std::process::Command;

use serde_json::Value;
use support::*;

/// A value that must never be logged: set by the exec prefix (`env NAME=value`).
const PREFIX_VALUE: &str = "prefix-value-Tq3Xw8Zr";

fn assert_no_secrets(text: &str) {
    for secret in [UPSTREAM_TOKEN, BRIDGE_TOKEN, PREFIX_VALUE] {
        assert!(!text.contains(secret), "{secret} in:\n{text}");
    }
}

/// The `callback-bridge: …` line a failed relay ends with.
fn final_line(stderr: &str) -> &str {
    let line = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(line.starts_with("callback-bridge: "), "{stderr}");
    line
}

fn queue_relay_command(sb: &Sandbox, upstream: &str, prefix: &[&str]) -> Command {
    sb.relay_command(
        upstream,
        prefix,
        &[],
        &[("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN)],
    )
}

fn warnings(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
        .collect()
}

/// SIGTERM to the process group of `proc` (it was spawned as the leader of its own group): what
/// a supervisor, `timeout` or Ctrl-C does, reaching the relay's commands too.
fn sigterm_group(proc: &Proc) {
    let status = Command::new("kill")
        .args(["-TERM", "--", &format!("-{}", proc.pid())])
        .status()
        .expect("run kill");
    assert!(status.success());
}

/// Sends SIGTERM to the relay alone or to its whole process group (as `timeout` and a terminal's
/// Ctrl-C do), then asserts a clean stop that logged no warning.
fn stop_without_warning(relay: &mut Proc, to_group: bool) {
    if to_group {
        sigterm_group(relay);
    } else {
        relay.sigterm();
    }
    assert_clean_stop(relay);
    let stderr = relay.stderr_text();
    assert!(
        warnings(&stderr).is_empty(),
        "group {to_group}: {:?}",
        warnings(&stderr)
    );
}

/// Waits for the exit line and a clean exit: status 0, reason `signal`.
fn assert_clean_stop(proc: &mut Proc) {
    let exit = proc.wait_event("exit");
    assert_eq!(exit["reason"], "signal", "{exit}");
    let status = proc.wait_exit();
    assert_eq!(status.code(), Some(0), "{}", proc.stderr_text());
}

#[test]
fn a_failing_exec_prefix_is_named_with_its_exit_status_and_stderr() {
    let sb = Sandbox::new();
    let prefix = [
        "env",
        &format!("SET_BY_PREFIX={PREFIX_VALUE}"),
        "sh",
        "-c",
        "echo 'first complaint' >&2; echo 'the sandbox is gone' >&2; exit 7",
        "sh",
    ];
    let out = run_command(
        queue_relay_command(&sb, "http://127.0.0.1:9", &prefix),
        WAIT,
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "no ready line: {}", out.stdout);
    let line = final_line(&out.stderr);
    assert!(
        line.contains("the start-up command (env SET_BY_PREFIX=… sh -c ")
            && line.contains("exit status: 7")
            && line.contains("first complaint | the sandbox is gone"),
        "{line}"
    );
    // The script the relay appends is not part of the message, nor is the prefix's value.
    assert!(!line.contains("callback-bridge queue start"), "{line}");
    assert_no_secrets(&out.stderr);

    let out = run_command(
        queue_relay_command(&sb, "http://127.0.0.1:9", &["false"]),
        WAIT,
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        final_line(&out.stderr)
            .ends_with("the start-up command (false) failed (exit status: 1; no stderr)"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_failing_gateway_command_is_named_with_its_exit_status_and_stderr() {
    let cmd_for = |command: &[&str]| {
        let mut cmd = bridge_command(
            &[
                "relay",
                "--transport",
                "stdio",
                "--upstream",
                "http://127.0.0.1:9",
                "--",
            ],
            &[
                ("CALLBACK_BRIDGE_UPSTREAM_TOKEN", UPSTREAM_TOKEN),
                ("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN),
                ("CALLBACK_BRIDGE_LOG_FORMAT", "json"),
            ],
        );
        cmd.args(command);
        cmd
    };
    let value = format!("SET_BY_PREFIX={PREFIX_VALUE}");
    let out = run_command(
        cmd_for(&[
            "env",
            &value,
            "sh",
            "-c",
            "echo 'no gateway here' >&2; exit 5",
        ]),
        WAIT,
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    let line = final_line(&out.stderr);
    assert!(
        line.contains("the gateway command was not accepted (env SET_BY_PREFIX=… sh -c ")
            && line.contains("closed its stdout before READY")
            && line.contains("exit status: 5")
            && line.ends_with("no gateway here"),
        "{line}"
    );
    // The command's stderr still reaches the relay's stderr as it is written.
    assert!(
        out.stderr.lines().any(|l| l == "no gateway here"),
        "{}",
        out.stderr
    );
    assert_no_secrets(&out.stderr);

    let out = run_command(cmd_for(&["false"]), WAIT);
    assert!(
        final_line(&out.stderr).ends_with("it exited (exit status: 1; no stderr)"),
        "{}",
        out.stderr
    );
}

/// A line of the relay's start-up script, as `sh -x` traces it.
const TRACED_SCRIPT_LINE: &str = "export LC_ALL";

#[test]
fn a_tracing_shell_does_not_dump_the_relay_script_into_the_log() {
    let up = MockUpstream::app();
    let sb = Sandbox::new();
    let (_gateway, agent) = sb.gateway(&[]);
    let mut cmd = queue_relay_command(&sb, &up.url(), &["sh", "-x", "-c"]);
    cmd.process_group(0);
    let mut relay = Proc::spawn(cmd, "tracing queue relay");
    relay.wait_event("ready");
    // Scripts ran (start-up, takes, a put), each traced into the relay's pipe.
    assert_eq!(agent.get("/api/agents/me").status, 200);
    // The stop kills the running take (SIGTERM to the group): its trace is what would be logged.
    sigterm_group(&relay);
    assert_clean_stop(&mut relay);
    let stderr = relay.stderr_text();
    assert!(
        stderr.contains("shell trace or script echo not logged"),
        "the take's end is logged, its trace counted: {stderr}"
    );
    assert!(!stderr.contains(TRACED_SCRIPT_LINE), "{stderr}");
    assert!(!stderr.contains("ls -di"), "{stderr}");
    assert!(
        stderr.len() < 4096,
        "{} bytes of log:\n{stderr}",
        stderr.len()
    );
    assert_no_secrets(&stderr);

    // A start-up that fails under the tracing shell: the same.
    let sb = Sandbox::new();
    std::fs::write(sb.queue(), b"a file where the queue directory should be").unwrap();
    let out = run_command(
        queue_relay_command(&sb, &up.url(), &["sh", "-x", "-c"]),
        WAIT,
    );
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(
        final_line(&out.stderr).contains("lines of shell trace or script echo not logged"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(TRACED_SCRIPT_LINE), "{}", out.stderr);
    assert!(out.stderr.len() < 8192, "{}", out.stderr);
}

#[test]
fn sigterm_stops_a_queue_relay_without_a_warning() {
    let up = MockUpstream::app();
    let sb = Sandbox::new();
    let (_gateway, agent) = sb.gateway(&[]);
    for to_group in [true, false] {
        let mut cmd = queue_relay_command(&sb, &up.url(), &["sh", "-c"]);
        cmd.process_group(0);
        let mut relay = Proc::spawn(cmd, "queue relay");
        relay.wait_event("ready");
        assert_eq!(agent.get("/api/agents/me").status, 200);
        // A take is running (waiting in the sandbox for the next request) when the stop comes.
        stop_without_warning(&mut relay, to_group);
    }
}

#[test]
fn sigterm_stops_a_stdio_relay_without_a_warning() {
    let up = MockUpstream::app();
    for to_group in [true, false] {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], closed_port()));
        let listen = addr.to_string();
        let mut cmd = relay_command(&up, &["relay", "--transport", "stdio", "--"]);
        cmd.env("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN)
            .arg(bridge_binary_str())
            .args(["gateway", "--transport", "stdio", "--listen", &listen])
            .process_group(0);
        let mut relay = Proc::spawn(cmd, "stdio relay");
        relay.wait_event("ready");
        let agent = Agent::new(addr);
        assert_eq!(agent.get("/api/agents/me").status, 200);
        stop_without_warning(&mut relay, to_group);
    }
}

#[test]
fn a_queue_relay_says_whether_a_gateway_is_there_and_works_once_one_comes() {
    let up = MockUpstream::app();
    let sb = Sandbox::new();
    let mut relay = Proc::spawn(
        queue_relay_command(&sb, &up.url(), &["sh", "-c"]),
        "queue relay without a gateway",
    );
    let ready: Value = relay.wait_event("ready");
    assert_eq!(ready["gateway_ready"], false, "{ready}");
    relay.wait_stderr_contains("no gateway at the queue directory yet", WAIT);

    // The relay started first (as it may): the gateway comes later and is served.
    let (_gateway, agent) = sb.gateway(&[]);
    relay.wait_stderr_contains("gateway found", WAIT);
    assert_eq!(agent.get("/api/agents/me").status, 200);
    let seen = up.wait_for_requests(1);
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {UPSTREAM_TOKEN}"))
    );
    relay.sigterm();
    assert_clean_stop(&mut relay);

    // With the gateway there, the readiness line says so and nothing more is looked for.
    let mut relay = Proc::spawn(
        queue_relay_command(&sb, &up.url(), &["sh", "-c"]),
        "queue relay with a gateway",
    );
    let ready: Value = relay.wait_event("ready");
    assert_eq!(ready["gateway_ready"], true, "{ready}");
    relay.sigterm();
    assert_clean_stop(&mut relay);
    assert!(
        !relay.stderr_text().contains("no gateway"),
        "{}",
        relay.stderr_text()
    );
}
