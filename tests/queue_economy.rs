//! Queue transport, exec economy (docs/queue-transport.md, "Exec economy"): one command writes
//! the answers and takes the next requests, so a lone agent costs at most one command per
//! request, with the `sh` scripts and with `--sandbox-helper`; stopping the relay while such a
//! command waits leaves nothing claimed and unanswered.

mod support;

use support::*;

fn relay_args(helper: bool, bin: &str) -> Vec<&str> {
    if helper {
        vec!["--sandbox-helper", bin]
    } else {
        Vec::new()
    }
}

#[test]
fn a_lone_agent_costs_at_most_one_command_per_request() {
    const K: usize = 10;
    let bin = bridge_binary_str();
    for helper in [false, true] {
        let up = MockUpstream::app();
        let sb = Sandbox::new();
        let (_gw_proc, gw) = sb.gateway(&[]);
        let prefix = sb.counting_prefix();
        let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
        let _relay = sb.relay(&up.url(), &prefix, &relay_args(helper, &bin));
        assert_eq!(gw.request("GET", "/api/agents/me", &[], b"").status, 200);
        wait_until("the warm-up take in the command log", || {
            sb.command_log().iter().any(|c| c.taken > 0)
        });
        let before = sb.command_log().len();
        for _ in 0..K {
            assert_eq!(gw.request("GET", "/api/agents/me", &[], b"").status, 200);
        }
        // Every request's take is logged once its command ends.
        wait_until("all takes in the command log", || {
            sb.command_log().iter().map(|c| c.taken).sum::<usize>() > K
        });
        let log = sb.command_log();
        let during = &log[before..];
        assert!(
            during.len() <= K + 1,
            "helper {helper}: {} commands for {K} requests: {during:?}",
            during.len()
        );
        // The commands that took a request also wrote the previous answer.
        let combined = during
            .iter()
            .filter(|c| c.taken == 1 && c.written == 1)
            .count();
        assert!(combined >= K - 1, "helper {helper}: {during:?}");
        assert_eq!(up.count_path("/api/agents/me"), K + 1);
    }
}

#[test]
fn stopping_the_relay_while_a_combined_command_waits() {
    let bin = bridge_binary_str();
    for helper in [false, true] {
        let up = MockUpstream::app();
        let sb = Sandbox::new();
        let (_gw_proc, gw) = sb.gateway(&["--response-timeout", "20s"]);
        let prefix = sb.counting_prefix();
        let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
        let mut relay = sb.relay(&up.url(), &prefix, &relay_args(helper, &bin));
        // Its answer is written by a command that then waits for the next request.
        assert_eq!(gw.request("GET", "/api/agents/me", &[], b"").status, 200);
        relay.sigterm();
        wait_until("the relay stopping", || {
            relay.stderr_text().contains("relay stopping")
        });
        // The waiting command takes this one; the stopping relay answers it without
        // forwarding it.
        let r = gw.request("GET", "/api/agents/me", &[], b"");
        assert_eq!(
            (r.status, r.code()),
            (503, "shutting_down"),
            "helper {helper}"
        );
        relay.wait_event("exit");
        assert!(relay.wait_exit().success());
        assert_eq!(
            up.count_path("/api/agents/me"),
            1,
            "nothing forwarded after stop"
        );
        let log = sb.command_log();
        assert!(
            log.iter().any(|c| c.written == 1),
            "helper {helper}: {log:?}"
        );
        assert!(Sandbox::list(&sb.requests()).is_empty(), "no claim left");
        assert!(
            Sandbox::list(&sb.responses()).is_empty(),
            "every answer read"
        );
    }
}
