//! The stdio relay against a sandbox that freezes or attacks the channel (docs/reference.md §6.2,
//! docs/SECURITY.md): a frozen gateway or a stalled pipe between relay and gateway is declared
//! lost within the stall timeout and the command restarted, requests in flight get their
//! specified answers, and a command flooding HTTP/2 control frames is closed as hostile and
//! counted against the restart budget.
//!
//! The relays here run with the hidden, test-only `CALLBACK_BRIDGE_STDIO_STALL_TIMEOUT` (2 s
//! instead of 20 s); every wait is bounded by [`WAIT`], and nothing asserts how long anything took.

mod support;

use std::path::Path;
use std::time::Instant;

use support::*;

/// The relay's test-only stall deadline (the default is 20 s).
const STALL_ENV: (&str, &str) = ("CALLBACK_BRIDGE_STDIO_STALL_TIMEOUT", "2s");
/// The relay's log line when it ends a session on its own.
const LOST: &str = "the stdio channel to the gateway was lost; killing the command";

/// Sends `GET /api/agents/me` until it answers 200 (bounded by [`WAIT`]): the gateway was
/// restarted and the agent's URL works again.
fn wait_until_served(agent: &Agent) -> Response {
    let deadline = Instant::now() + WAIT;
    loop {
        match Req::new("GET", "/api/agents/me")
            .header("authorization", &format!("Bearer {}", agent.token))
            .try_send(agent.addr)
        {
            Ok(r) if r.status == 200 => return r,
            other => {
                assert!(Instant::now() < deadline, "no recovery: last {other:?}");
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

/// The relay's `LOST` log lines so far.
fn lost_lines(relay: &Proc) -> Vec<serde_json::Value> {
    relay
        .stderr_lines()
        .iter()
        .filter(|l| l.contains(LOST))
        .map(|l| serde_json::from_str(l).expect("JSON log line"))
        .collect()
}

fn is_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
}

#[test]
fn a_frozen_gateway_is_declared_lost_killed_and_restarted() {
    let upstream = MockUpstream::app();
    let relay = Relay::start(
        &upstream,
        RelayOptions {
            relay_env: &[STALL_ENV],
            ..Default::default()
        },
    );
    let agent = relay.agent();
    assert_eq!(agent.get("/api/agents/me").status, 200);
    let frozen = relay.gateway_pid();

    // `docker pause` as seen from the host: the gateway neither reads nor writes any more.
    signal(frozen, "STOP");
    relay.proc.wait_stderr_contains(LOST, WAIT);
    let lost = lost_lines(&relay.proc);
    let reason = lost[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("nothing was read") || reason.contains("has not read"),
        "{reason}"
    );
    assert_eq!(lost[0]["hostile"], false);

    let after = wait_until_served(&agent);
    assert_eq!(after.json()["target"], "/api/agents/me");
    let restarted = relay.gateway_pid();
    assert_ne!(frozen, restarted, "the gateway was not restarted");
    assert!(!is_alive(frozen), "the frozen gateway was not killed");
    assert_eq!(upstream.count_path("/api/agents/me"), 2);

    let (exit, status) = relay.stop();
    assert!(status.success(), "{status:?}");
    assert_eq!(exit["reason"], "signal");
}

#[test]
fn an_idle_session_is_never_taken_for_a_stalled_one() {
    let upstream = MockUpstream::app();
    let relay = Relay::start(
        &upstream,
        RelayOptions {
            relay_env: &[("CALLBACK_BRIDGE_STDIO_STALL_TIMEOUT", "1s")],
            ..Default::default()
        },
    );
    let gateway = relay.gateway_pid();
    // Idle for four stall timeouts: the relay's PINGs (after a quarter of it) keep bytes coming.
    std::thread::sleep(std::time::Duration::from_secs(4));
    assert_eq!(relay.agent().get("/api/agents/me").status, 200);
    assert_eq!(relay.gateway_pid(), gateway, "the gateway was restarted");
    assert!(
        lost_lines(&relay.proc).is_empty(),
        "{:#?}",
        relay.proc.stderr_lines()
    );
    let (_, status) = relay.stop();
    assert!(status.success(), "{status:?}");
}

/// A relay whose command is `sh -c 'cat | gateway | cat'`: the two `cat`s stand for the exec
/// channel (`ssh`, `kubectl exec`), which the test can freeze while the gateway stays alive.
fn relay_through_a_channel(upstream: &MockUpstream, stall_timeout: &str) -> (Proc, Agent) {
    let listen = format!("127.0.0.1:{}", closed_port());
    let mut cmd = relay_command(upstream, &["relay", "--transport", "stdio"]);
    cmd.env(STALL_ENV.0, stall_timeout)
        .args(["--", "sh", "-c", r#"cat | "$0" "$@" | cat"#])
        .arg(bridge_binary_str())
        .args(["gateway", "--transport", "stdio", "--listen", &listen]);
    let mut proc = Proc::spawn(cmd, "stdio relay");
    let ready = proc.next_json().expect("relay readiness line");
    assert_eq!(ready["event"], "ready", "{ready}");
    let agent = Agent {
        addr: Endpoint::Tcp(listen.parse().unwrap()),
        token: ready["token"].as_str().unwrap().to_owned(),
    };
    (proc, agent)
}

/// The `cat` processes under the relay's `sh`: the one carrying the relay's writes to the
/// gateway first.
fn channel_pids(relay: &Proc) -> Vec<u32> {
    let shells = children_of(relay.pid());
    assert_eq!(shells.len(), 1, "relay children: {shells:?}");
    let cats: Vec<u32> = children_of(shells[0])
        .into_iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "cat")
        })
        .collect();
    assert_eq!(cats.len(), 2, "channel processes: {cats:?}");
    // The first is the one whose stdin is a pipe the relay holds.
    let relay_pipes: Vec<_> = std::fs::read_dir(format!("/proc/{}/fd", relay.pid()))
        .unwrap()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .collect();
    let reads_relay = |pid: &u32| {
        std::fs::read_link(format!("/proc/{pid}/fd/0")).is_ok_and(|p| relay_pipes.contains(&p))
    };
    let (to_gateway, from_gateway): (Vec<u32>, Vec<u32>) = cats.into_iter().partition(reads_relay);
    assert_eq!(to_gateway.len(), 1, "no single cat reads the relay's pipe");
    vec![to_gateway[0], from_gateway[0]]
}

#[test]
fn requests_in_flight_when_the_channel_stalls_get_503_or_409_and_are_never_resent() {
    let upstream = MockUpstream::app();
    let (mut relay, agent) = relay_through_a_channel(&upstream, STALL_ENV.1);
    assert_eq!(agent.get("/api/agents/me").status, 200);

    // Two requests reach the upstream, which holds them.
    upstream.set_holding(true);
    let read = agent.send_in_background(Req::new("GET", "/api/issues/hold"));
    let write = agent.send_in_background(
        Req::new("POST", "/api/issues/hold/comments").json(r#"{"body":"once"}"#),
    );
    upstream.wait_for("held requests", 1, "/api/issues/hold");
    upstream.wait_for("held requests", 1, "/api/issues/hold/comments");

    // The exec channel freezes; the gateway itself keeps running.
    let channel = channel_pids(&relay);
    for pid in &channel {
        signal(*pid, "STOP");
    }
    relay.wait_stderr_contains(LOST, WAIT);
    // The channel resumes only to find the relay gone: the gateway's session ends.
    for pid in &channel {
        if is_alive(*pid) {
            signal(*pid, "CONT");
        }
    }

    let read = read
        .recv_timeout(WAIT)
        .expect("GET answered")
        .expect("GET response");
    assert_eq!(
        read.status,
        503,
        "{:?}",
        String::from_utf8_lossy(&read.body)
    );
    assert_eq!(read.json_code(), "bridge_unavailable");
    let write = write
        .recv_timeout(WAIT)
        .expect("POST answered")
        .expect("POST response");
    assert_eq!(
        write.status,
        409,
        "{:?}",
        String::from_utf8_lossy(&write.body)
    );
    assert_eq!(write.json_code(), "outcome_indeterminate");
    assert_eq!(
        write.header("x-bridge-error"),
        Some("outcome_indeterminate")
    );

    // The relay restarted the command; the mutation was sent once, never again.
    upstream.set_holding(false);
    wait_until_served(&agent);
    assert_eq!(upstream.count_path("/api/issues/hold/comments"), 1);
    assert_eq!(upstream.count_path("/api/issues/hold"), 1);
    relay.sigterm();
    relay.wait_exit_line(WAIT);
}

#[test]
fn a_channel_that_stops_reading_is_lost_while_a_response_fills_the_pipe() {
    let upstream = MockUpstream::app();
    upstream.set_download(pattern(8 * 1024 * 1024, 3));
    let (mut relay, agent) = relay_through_a_channel(&upstream, STALL_ENV.1);
    assert_eq!(agent.get("/api/agents/me").status, 200);

    // The relay-to-gateway direction freezes while an 8 MiB download is on its way: the pipe
    // fills and the relay's write waits (the case where the HTTP/2 library alone never gave up:
    // its GOAWAY cannot be written). The library also stops reading while it cannot write, so
    // either deadline may be the first to see it.
    let to_gateway = channel_pids(&relay)[0];
    signal(to_gateway, "STOP");
    let download = agent.send_in_background(Req::new("GET", "/api/attachments/att-1/content"));
    relay.wait_stderr_contains(LOST, WAIT);
    let lost = lost_lines(&relay);
    let reason = lost[0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("nothing was read") || reason.contains("has not read"),
        "{reason}"
    );

    if is_alive(to_gateway) {
        signal(to_gateway, "CONT");
    }
    // The agent never gets a short body that looks complete: an error status or a cut-off body.
    if let Ok(r) = download.recv_timeout(WAIT).expect("download ended") {
        assert!(
            r.status != 200,
            "a complete-looking download of {} bytes",
            r.body.len()
        );
    }
    wait_until_served(&agent);
    relay.sigterm();
    relay.wait_exit_line(WAIT);
}

/// Writes the hostile command's files into `dir`: the HTTP/2 preface with an empty SETTINGS
/// frame, and 4096 PRIORITY frames.
fn flood_files(dir: &Path) -> (String, String) {
    let preface = dir.join("preface");
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
    std::fs::write(&preface, bytes).unwrap();
    let flood = dir.join("flood");
    let priority = [0, 0, 5, 0x2, 0, 0, 0, 0, 1, 0, 0, 0, 0, 16];
    std::fs::write(&flood, priority.repeat(4096)).unwrap();
    (
        preface.to_str().unwrap().to_owned(),
        flood.to_str().unwrap().to_owned(),
    )
}

#[test]
fn a_control_frame_flood_is_closed_as_hostile_and_spends_the_restart_budget() {
    let upstream = MockUpstream::app();
    let dir = tempfile::tempdir().unwrap();
    let (preface, flood) = flood_files(dir.path());
    // A valid READY line and preface, then PRIORITY frames as fast as `cat` can write them.
    let script = r#"printf '{"version":2,"type":"ready","nonce":"%s"}\n' "$CALLBACK_BRIDGE_NONCE"
cat "$0"
while cat "$1"; do :; done"#;
    let mut cmd = relay_command(&upstream, &["relay", "--transport", "stdio"]);
    cmd.args(["--", "sh", "-c", script, &preface, &flood]);
    let mut relay = Proc::spawn(cmd, "stdio relay");
    let ready = relay.next_json().expect("relay readiness line");
    assert_eq!(ready["event"], "ready", "{ready}");

    let status = relay.wait_exit_status(WAIT);
    assert_eq!(status.code(), Some(1), "{status:?}");
    let exit = relay
        .stdout_lines()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "exit")
        .expect("exit line");
    assert_eq!(exit["reason"], "transport");
    // The first session and five restarts, each closed as hostile.
    let lost = lost_lines(&relay);
    assert_eq!(lost.len(), 6, "{:#?}", relay.stderr_lines());
    for line in &lost {
        assert_eq!(line["hostile"], true, "{line}");
        assert!(
            line["reason"].as_str().unwrap().starts_with("hostile"),
            "{line}"
        );
    }
    assert_eq!(upstream.request_count(), 0);
}
