//! Queue transport, when things go wrong: response timeouts with and without a relay, a full
//! queue, a relay killed mid-request (exactly once), an unreachable sandbox — and the exec
//! economy, counted with a wrapper around `sh -c`.

mod support;

use std::time::{Duration, SystemTime};

use support::*;

const JSON: &[(&str, &str)] = &[("content-type", "application/json")];

fn post(gw: &Agent, target: &'static str) -> std::thread::JoinHandle<Response> {
    let gw = gw.clone();
    background(move || gw.request("POST", target, JSON, b"{\"body\":\"x\"}"))
}

fn get(gw: &Agent, target: &'static str) -> std::thread::JoinHandle<Response> {
    let gw = gw.clone();
    background(move || gw.request("GET", target, &[], b""))
}

#[test]
fn without_a_relay_timeouts_are_504_for_reads_and_409_for_mutations() {
    let sb = Sandbox::new();
    let (_gw_proc, gw) = sb.gateway(&["--response-timeout", "1s"]);
    let (g, p) = (
        get(&gw, "/api/agents/me"),
        post(&gw, "/api/issues/1/comments"),
    );
    let (g, p) = (g.join().unwrap(), p.join().unwrap());
    assert_eq!((g.status, g.code()), (504, "bridge_timeout"));
    assert_eq!((p.status, p.code()), (409, "outcome_indeterminate"));
    assert_eq!(
        p.header("x-paperclip-bridge-outcome"),
        Some("indeterminate")
    );
    assert!(
        Sandbox::list(&sb.requests()).is_empty(),
        "timed-out requests are withdrawn"
    );
}

#[test]
fn a_claims_relay_that_never_took_the_request_means_503_bridge_unavailable() {
    let sb = Sandbox::new();
    let (_gw_proc, gw) = sb.gateway(&["--response-timeout", "1s"]);
    std::fs::write(
        sb.queue().join("relay.json"),
        br#"{"protocol":"claims_v1","pid":1,"startedAt":"2025-01-01T00:00:00.000Z"}"#,
    )
    .unwrap();
    let (g, p) = (
        get(&gw, "/api/agents/me"),
        post(&gw, "/api/issues/1/comments"),
    );
    let (g, p) = (g.join().unwrap(), p.join().unwrap());
    assert_eq!((g.status, g.code()), (503, "bridge_unavailable"));
    assert_eq!((p.status, p.code()), (503, "bridge_unavailable"));
    assert!(Sandbox::list(&sb.requests()).is_empty());
}

#[test]
fn a_claimed_request_that_times_out_is_answered_504_or_409_and_never_later() {
    let up = MockUpstream::app();
    up.set_holding(true);
    let sb = Sandbox::new();
    let (_gw_proc, gw) = sb.gateway(&["--response-timeout", "1s"]);
    let relay = sb.relay(&up.url(), &["sh", "-c"], &[]);
    let (g, p) = (
        get(&gw, "/api/agents/hold"),
        post(&gw, "/api/issues/hold/comments"),
    );
    let (g, p) = (g.join().unwrap(), p.join().unwrap());
    // The relay's deadline comes before the gateway's: the agent gets the relay's answer.
    assert_eq!((g.status, g.code()), (504, "upstream_timeout"));
    assert_eq!((p.status, p.code()), (409, "outcome_indeterminate"));
    assert_eq!(up.count_path("/api/agents/hold"), 1);
    assert_eq!(up.count_path("/api/issues/hold/comments"), 1);
    // The upstream answers late: nothing more is written, nothing is left behind.
    up.set_holding(false);
    wait_until("no queue files left", || {
        Sandbox::list(&sb.responses()).is_empty() && Sandbox::list(&sb.requests()).is_empty()
    });
    assert!(!relay.stderr_text().contains("nobody waits"));
}

#[test]
fn a_full_queue_answers_503_and_stale_files_are_swept() {
    let sb = Sandbox::new();
    let (_gw_proc, gw) = sb.gateway(&["--response-timeout", "2s", "--max-queue-depth", "2"]);
    let waiting = [get(&gw, "/api/agents/me"), get(&gw, "/api/agents/me")];
    wait_until("two waiting requests", || {
        Sandbox::list(&sb.requests()).len() == 2
    });
    let r = gw.request("GET", "/api/agents/me", &[], b"");
    assert_eq!((r.status, r.code()), (503, "queue_full"));
    for w in waiting {
        assert_eq!(w.join().unwrap().status, 504);
    }

    // Files older than the response timeout + 2 s are swept when the queue is full.
    for name in ["stale-1", "stale-2"] {
        let path = sb.requests().join(format!("{name}.json"));
        std::fs::write(&path, b"{}").unwrap();
        let old = SystemTime::now() - Duration::from_secs(60);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(old)
            .unwrap();
    }
    // A fresh planted file is not stale and still counts.
    let r = gw.request("GET", "/api/agents/me", &[], b"");
    assert_eq!(r.code(), "bridge_timeout", "the stale files made room");
    let left = Sandbox::list(&sb.requests());
    assert!(!left.iter().any(|n| n.starts_with("stale")), "{left:?}");
}

#[test]
fn a_relay_killed_mid_mutation_never_sends_it_twice() {
    let up = MockUpstream::app();
    up.set_holding(true);
    let sb = Sandbox::new();
    let (_gw_proc, gw) = sb.gateway(&[]);
    let mut first = sb.relay(&up.url(), &["sh", "-c"], &[]);
    let answer = post(&gw, "/api/issues/hold/comments");
    up.wait_for(
        "the mutation at the upstream",
        1,
        "/api/issues/hold/comments",
    );
    first.signal("KILL");
    first.wait_exit();
    assert_eq!(
        Sandbox::list(&sb.requests()).len(),
        1,
        "the claim is left behind"
    );

    let _second = sb.relay(&up.url(), &["sh", "-c"], &[]);
    let r = answer.join().unwrap();
    assert_eq!((r.status, r.code()), (409, "outcome_indeterminate"));
    assert_eq!(
        r.header("x-paperclip-bridge-outcome"),
        Some("indeterminate")
    );
    assert_eq!(r.json()["outcome"], "indeterminate");
    up.set_holding(false);
    assert_eq!(
        up.count_path("/api/issues/hold/comments"),
        1,
        "sent exactly once"
    );
}

#[test]
fn a_relay_killed_mid_read_forwards_it_again() {
    let up = MockUpstream::app();
    up.set_holding(true);
    let sb = Sandbox::new();
    let (_gw_proc, gw) = sb.gateway(&[]);
    let mut first = sb.relay(&up.url(), &["sh", "-c"], &[]);
    let answer = get(&gw, "/api/agents/hold");
    up.wait_for("the read at the upstream", 1, "/api/agents/hold");
    first.signal("KILL");
    first.wait_exit();
    up.set_holding(false);
    let _second = sb.relay(&up.url(), &["sh", "-c"], &[]);
    let r = answer.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        up.count_path("/api/agents/hold"),
        2,
        "a safe request is forwarded again"
    );
}

#[test]
fn an_unreachable_sandbox_makes_the_relay_exit_1() {
    let sb = Sandbox::new();
    let queue = sb.queue_str();
    let cmd = bridge_command_bare(
        &[
            "relay",
            "--transport",
            "queue",
            "--queue-dir",
            &queue,
            "--",
            "false",
        ],
        &[],
    );
    let out = run_command(cmd, WAIT);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty(), "no ready line");
    assert!(out.stderr.contains("cannot reach the sandbox queue"));
}

#[test]
fn a_burst_is_taken_by_one_command_and_answered_by_one() {
    const BURST: usize = 8;
    let up = MockUpstream::app();
    up.set_holding(true);
    let sb = Sandbox::new();
    let (_gw_proc, gw) = sb.gateway(&[]);
    let waiting: Vec<_> = (0..BURST).map(|_| get(&gw, "/api/agents/hold")).collect();
    wait_until("the burst in the queue", || {
        Sandbox::list(&sb.requests()).len() == BURST
    });
    let prefix = sb.counting_prefix();
    let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
    let _relay = sb.relay(&up.url(), &prefix, &[]);
    up.wait_for("the burst at the upstream", BURST, "/api/agents/hold");
    up.set_holding(false);
    for w in waiting {
        assert_eq!(w.join().unwrap().status, 200);
    }
    // The wrapper logs a command after it ends, which may be just after the agent's answer.
    wait_until("the answers in the command log", || {
        sb.command_log().iter().map(|c| c.written).sum::<usize>() >= BURST
    });
    let commands = sb.command_log();
    let takes: Vec<usize> = commands
        .iter()
        .filter(|c| c.taken > 0)
        .map(|c| c.taken)
        .collect();
    let answers: Vec<usize> = commands
        .iter()
        .filter(|c| c.written > 0)
        .map(|c| c.written)
        .collect();
    assert_eq!(
        takes,
        vec![BURST],
        "one command took the burst: {commands:?}"
    );
    assert_eq!(
        answers,
        vec![BURST],
        "one command answered the burst: {commands:?}"
    );
}

#[test]
fn an_idle_relay_runs_at_most_one_command_per_four_seconds() {
    let sb = Sandbox::new();
    let prefix = sb.counting_prefix();
    let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
    let _relay = sb.relay("http://127.0.0.1:9", &prefix, &[]);
    // Observing idleness takes time; the bound is on the count, not on any latency.
    let watched = Duration::from_secs(9);
    std::thread::sleep(watched);
    let takes = sb.commands().iter().filter(|(op, _)| op == "take").count();
    assert!(
        takes as u64 <= watched.as_secs() / 4,
        "{takes} idle commands in {watched:?}"
    );
}
