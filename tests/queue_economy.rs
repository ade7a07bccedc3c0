//! Queue transport, exec economy (docs/queue-transport.md, "Exec economy"): one command writes
//! the answers and takes the next requests, so a lone agent costs at most one command per
//! request, with the `sh` scripts and with `--sandbox-helper`; that command is a spare, started
//! before the request existed; stopping the relay while such a command (and a spare) waits leaves
//! nothing claimed and unanswered; a spare whose exec channel dies loses no answer.

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
        assert!(
            running(&sb.command_order()).is_empty(),
            "helper {helper}: the spare ended too: {:?}",
            sb.command_order()
        );
        assert!(Sandbox::list(&sb.requests()).is_empty(), "no claim left");
        assert!(
            Sandbox::list(&sb.responses()).is_empty(),
            "every answer read"
        );
    }
}

/// Pids of the commands started and not yet ended, in the counting prefix's order log.
fn running(order: &[(bool, u32, usize)]) -> Vec<u32> {
    let mut running = Vec::new();
    for &(started, pid, _) in order {
        if started {
            running.push(pid);
        } else {
            running.retain(|&p| p != pid);
        }
    }
    running
}

#[test]
fn an_answer_is_published_by_a_command_started_before_its_request() {
    let bin = bridge_binary_str();
    for helper in [false, true] {
        let up = MockUpstream::app();
        let sb = Sandbox::new();
        let (_gw_proc, gw) = sb.gateway(&[]);
        let prefix = sb.counting_prefix();
        let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
        let _relay = sb.relay(&up.url(), &prefix, &relay_args(helper, &bin));
        assert_eq!(gw.request("GET", "/api/agents/me", &[], b"").status, 200);
        // The take waiting for the next request and the spare behind it.
        wait_until("two commands running", || {
            running(&sb.command_order()).len() >= 2
        });
        let order = sb.command_order();
        let before = running(&order);
        assert_eq!(gw.request("GET", "/api/agents/me", &[], b"").status, 200);
        // The first command to write an answer after this point wrote this request's.
        let writer = || {
            sb.command_order()[order.len()..]
                .iter()
                .find(|&&(started, _, written)| !started && written > 0)
                .map(|&(_, pid, _)| pid)
        };
        wait_until("the answering command's end in the log", || {
            writer().is_some()
        });
        let pid = writer().unwrap();
        assert!(
            before.contains(&pid),
            "helper {helper}: command {pid} wrote the answer; running before: {before:?}, log: {:?}",
            sb.command_order()
        );
        assert_eq!(up.count_path("/api/agents/me"), 2);
    }
}

#[test]
fn a_spare_whose_exec_channel_dies_loses_no_answer() {
    let bin = bridge_binary_str();
    for helper in [false, true] {
        let up = MockUpstream::app();
        let sb = Sandbox::new();
        let (_gw_proc, gw) = sb.gateway(&[]);
        // An exec prefix whose channel dies under one spare, once it has read its work.
        let flag = sb.path("kill-next-spare");
        let script = format!(
            r#"#!/bin/sh
[ "$1" = -c ] && shift
case $1 in '# callback-bridge queue spare'*)
  if mv '{flag}' '{flag}.used' 2>/dev/null; then cat > '{flag}.work'; echo 'exec channel lost' >&2; exit 255; fi ;;
esac
exec sh -c "$1"
"#,
            flag = flag.display()
        );
        let path = sb.path("dying.sh");
        std::fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = path.display().to_string();
        let prefix = [path.as_str(), "-c"];
        let relay = sb.relay(&up.url(), &prefix, &relay_args(helper, &bin));
        assert_eq!(gw.request("GET", "/api/agents/me", &[], b"").status, 200);
        std::fs::write(&flag, "").unwrap();
        // A spare picks the flag up when it starts: it is then waiting for its work.
        wait_until("a doomed spare", || {
            sb.path("kill-next-spare.used").exists()
        });
        for _ in 0..3 {
            let r = gw.request("GET", "/api/agents/me", &[], b"");
            assert_eq!(r.status, 200, "helper {helper}: {}", relay.stderr_text());
        }
        wait_until("the doomed spare's end", || {
            relay.stderr_text().contains("exec channel lost")
        });
        // Each GET reached the upstream; one whose answer the dead spare was carrying may be
        // forwarded once more by the recovery that follows a failed command (safe methods only,
        // docs/queue-transport.md "The hand-off"), never more.
        let forwarded = up.count_path("/api/agents/me");
        assert!(
            (4..=5).contains(&forwarded),
            "helper {helper}: forwarded {forwarded} times for 4 requests"
        );
        wait_until("no claim or answer left", || {
            Sandbox::list(&sb.requests()).is_empty() && Sandbox::list(&sb.responses()).is_empty()
        });
    }
}

#[test]
fn an_exec_prefix_without_stdin_runs_without_spares() {
    // `sh` scripts only: the helper's put reads every response from stdin, so it needs one anyway.
    {
        let up = MockUpstream::app();
        let sb = Sandbox::new();
        let (_gw_proc, gw) = sb.gateway(&[]);
        // Like `docker exec` without `-i`: every command reads end of file at once.
        let path = sb.path("no-stdin.sh");
        std::fs::write(
            &path,
            "#!/bin/sh\n[ \"$1\" = -c ] && shift\nexec sh -c \"$1\" < /dev/null\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = path.display().to_string();
        let relay = sb.relay(&up.url(), &[path.as_str(), "-c"], &[]);
        wait_until("the warning", || {
            relay.stderr_text().contains("running without spares")
        });
        for _ in 0..3 {
            let r = gw.request("GET", "/api/agents/me", &[], b"");
            assert_eq!(r.status, 200, "{}", relay.stderr_text());
        }
        assert_eq!(up.count_path("/api/agents/me"), 3);
    }
}
