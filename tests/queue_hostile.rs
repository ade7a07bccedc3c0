//! Queue transport, hostile sandbox against the host (docs/SECURITY.md, "Hostile sandbox"): the
//! relay's commands follow no symlink planted in the queue, block on no FIFO, alias no names,
//! and a symlinked queue root or subdirectory is refused. Each case runs with the `sh` scripts
//! and with `--sandbox-helper`, against a "host" directory holding a canary file that must be
//! neither read (nothing of it reaches the upstream) nor written next to.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use support::*;

const CANARY: &str = "CANARY-host-secret-7f3a";

/// The two ways the relay drives the sandbox.
fn modes() -> Vec<Vec<String>> {
    vec![
        vec![],
        vec!["--sandbox-helper".to_owned(), bridge_binary_str()],
    ]
}

fn args(mode: &[String]) -> Vec<&str> {
    mode.iter().map(String::as_str).collect()
}

/// A host directory next to the queue with a canary file that is a valid request (so a relay
/// that read it would forward it).
fn host_dir(sb: &Sandbox) -> PathBuf {
    let host = sb.path("host");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("canary.json"), request("x", CANARY)).unwrap();
    host
}

fn request(id: &str, body: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id, "method": "POST", "path": "/api/issues/i1/comments", "query": "",
        "headers": {"content-type": "application/json"}, "body": body,
        "createdAt": "2025-01-01T00:00:00.000Z"
    }))
    .unwrap()
}

fn plant(sb: &Sandbox, name: &str, bytes: &[u8]) {
    let tmp = sb.requests().join(format!("{}.planting", name.trim()));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, sb.requests().join(name)).unwrap();
}

/// Waits (bounded) until `path` exists (a symlink counts).
fn wait_for(path: &Path, within: Duration) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if path.symlink_metadata().is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// The response file the relay wrote for `id` (waits for it, bounded).
fn response(sb: &Sandbox, id: &str) -> serde_json::Value {
    let path = sb.responses().join(format!("{id}.json"));
    assert!(wait_for(&path, WAIT), "no response for {id}");
    let end = Instant::now() + WAIT;
    loop {
        if let Ok(v) = serde_json::from_slice(&std::fs::read(&path).unwrap_or_default()) {
            return v;
        }
        assert!(Instant::now() < end, "unreadable response for {id}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn assert_host_untouched(host: &Path, up: &MockUpstream) {
    assert_eq!(
        Sandbox::list(host),
        vec!["canary.json"],
        "host directory written"
    );
    for r in up.requests() {
        assert!(
            !String::from_utf8_lossy(&r.body).contains(CANARY),
            "host file forwarded: {}",
            r.target
        );
    }
}

/// Plants requests one after the other and swaps each claim, as soon as it appears, for
/// `swap(claimed_path)`; then checks a normal request is still answered.
fn swap_claims(sb: &Sandbox, tag: &str, rounds: usize, swap: impl Fn(&Path)) {
    for i in 0..rounds {
        let id = format!("{tag}-{i}");
        plant(sb, &format!("{id}.json"), &request(&id, "planted"));
        let claimed = sb.requests().join(format!("{id}.json.claimed"));
        if wait_for(&claimed, WAIT) {
            let aside = sb.path(&format!("aside-{id}"));
            let _ = std::fs::rename(&claimed, aside);
            swap(&claimed);
        }
    }
    let after = format!("{tag}-after");
    plant(sb, &format!("{after}.json"), &request(&after, "after"));
    assert_eq!(response(sb, &after)["status"], 201);
}

#[test]
fn a_claim_swapped_for_a_symlink_to_a_host_file_is_never_read() {
    for mode in modes() {
        let up = MockUpstream::app();
        let sb = Sandbox::new();
        let host = host_dir(&sb);
        let _relay = sb.relay(&up.url(), &["sh", "-c"], &args(&mode));
        let canary = host.join("canary.json");
        swap_claims(&sb, "link", 10, |claimed| {
            std::os::unix::fs::symlink(&canary, claimed).unwrap()
        });
        // A swap that came too late found the request already read: that is the sandbox's own
        // request, forwarded; the host file never is.
        assert_host_untouched(&host, &up);
    }
}

#[test]
fn a_fifo_or_device_swapped_into_a_claim_neither_blocks_nor_is_read() {
    for mode in modes() {
        let up = MockUpstream::app();
        let sb = Sandbox::new();
        let relay = sb.relay(&up.url(), &["sh", "-c"], &args(&mode));
        swap_claims(&sb, "fifo", 2, |claimed| {
            let out = std::process::Command::new("mkfifo")
                .arg(claimed)
                .status()
                .unwrap();
            assert!(out.success());
        });
        swap_claims(&sb, "zero", 2, |claimed| {
            std::os::unix::fs::symlink("/dev/zero", claimed).unwrap()
        });
        let zeros = up.requests().iter().filter(|r| r.body.contains(&0)).count();
        assert_eq!(zeros, 0, "/dev/zero was read and forwarded");
        drop(relay);
    }
}

#[test]
fn a_symlinked_queue_root_or_subdirectory_is_refused() {
    for mode in modes() {
        for link in ["", "requests", "responses"] {
            let up = MockUpstream::app();
            let sb = Sandbox::new();
            let host = host_dir(&sb);
            if link.is_empty() {
                std::os::unix::fs::symlink(&host, sb.queue()).unwrap();
            } else {
                for sub in ["requests", "responses", "logs"] {
                    std::fs::create_dir_all(sb.queue().join(sub)).unwrap();
                }
                std::fs::remove_dir(sb.queue().join(link)).unwrap();
                std::os::unix::fs::symlink(&host, sb.queue().join(link)).unwrap();
            }
            let queue = sb.queue_str();
            let mut full = vec![
                "relay",
                "--transport",
                "queue",
                "--upstream",
                "http://127.0.0.1:9",
                "--queue-dir",
                queue.as_str(),
            ];
            full.extend(args(&mode));
            full.extend(["--", "sh", "-c"]);
            let out = run_bridge(
                &full,
                &[("CALLBACK_BRIDGE_UPSTREAM_TOKEN", UPSTREAM_TOKEN)],
                WAIT,
            );
            assert_eq!(out.status.code(), Some(1), "link {link:?}: {}", out.stderr);
            assert!(
                out.stderr.contains("symbolic link or not a directory"),
                "link {link:?}: {}",
                out.stderr
            );
            assert_host_untouched(&host, &up);
        }
    }
}

#[test]
fn responses_swapped_for_a_symlink_while_running_are_not_written_through() {
    for mode in modes() {
        let up = MockUpstream::app();
        let sb = Sandbox::new();
        let host = host_dir(&sb);
        let relay = sb.relay(&up.url(), &["sh", "-c"], &args(&mode));
        std::fs::remove_dir_all(sb.responses()).unwrap();
        std::os::unix::fs::symlink(&host, sb.responses()).unwrap();
        plant(&sb, "victim.json", &request("victim", "x"));
        relay.wait_stderr_contains("symbolic link or not a directory", WAIT);
        assert_eq!(Sandbox::list(&host), vec!["canary.json"], "written through");
    }
}

#[test]
fn names_that_are_not_ids_alias_nothing_and_delay_nothing() {
    for mode in modes() {
        let up = MockUpstream::app();
        let sb = Sandbox::new();
        let mut a = args(&mode);
        a.extend(["--max-body-bytes", "1024"]);
        let _relay = sb.relay(&up.url(), &["sh", "-c"], &a);
        // `" a.json"` is small; `a.json` is beyond the envelope (6 × 1024 + 64 KiB).
        plant(&sb, "a.json", &request("a", &"y".repeat(200_000)));
        plant(&sb, " a.json", &request("a", "small"));
        plant(&sb, "a .json", &request("a", "small"));
        let long = "l".repeat(129);
        plant(&sb, &format!("{long}.json"), &request(&long, "long"));
        let big = response(&sb, "a");
        assert_eq!(big["status"], 413, "{big}");
        plant(&sb, "next.json", &request("next", "next"));
        assert_eq!(response(&sb, "next")["status"], 201);
        let left = Sandbox::list(&sb.requests());
        for name in [" a.json", "a .json", &format!("{long}.json")] {
            assert!(
                left.contains(&name.to_owned()),
                "{name:?} touched: {left:?}"
            );
        }
        let bodies: Vec<Vec<u8>> = up.requests().into_iter().map(|r| r.body).collect();
        assert_eq!(bodies, vec![b"next".to_vec()]);
    }
}

#[test]
fn a_fifo_as_relay_json_does_not_wedge_the_gateway() {
    let sb = Sandbox::new();
    let (mut gateway, agent) = sb.gateway(&["--response-timeout", "1s"]);
    let fifo = sb.queue().join("relay.json");
    let _ = std::fs::remove_file(&fifo);
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // A request times out (nobody relays), and the gateway then reads `relay.json`.
    let r = agent.get("/api/agents/me");
    assert!(r.status == 503 || r.status == 504, "{}", r.status);
    let r = agent.get("/__bridge/health");
    assert_eq!(r.status, 200);
    gateway.sigterm();
    assert!(gateway.wait_exit_status(WAIT).success());
}
