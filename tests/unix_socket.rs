//! The agent-facing Unix socket (docs/reference.md §2.3 `listen`, `listen_mode`,
//! `allow_peer_uid`, `allow_peer_gid`; docs/SECURITY.md "Unix socket"): created 0600 (or 0660 when
//! asked), reported as `unix:PATH`, a stale socket replaced, a live socket and anything that is
//! not a socket refused and left alone, the socket removed on exit, and the peer check closing
//! other identities' connections unread. The agent contract over the socket is `tests/contract.rs`
//! (`case::*_unix`).

mod support;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::*;

/// A private directory for one test's socket; `path` is the socket inside it.
struct SocketDir {
    dir: tempfile::TempDir,
    path: PathBuf,
}

impl SocketDir {
    fn new() -> SocketDir {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        SocketDir { dir, path }
    }

    fn listen(&self) -> String {
        format!("unix:{}", self.path.display())
    }
}

fn serve_on(sock: &SocketDir, upstream: &MockUpstream, extra: &[&str]) -> Bridge {
    let listen = sock.listen();
    let mut args = vec!["--listen", listen.as_str()];
    args.extend_from_slice(extra);
    Bridge::for_upstream_env(upstream, &args, &[("CALLBACK_BRIDGE_LOG_FORMAT", "json")])
}

/// `serve` on `sock` run to completion (it is expected to refuse to start).
fn serve_refused(sock: &SocketDir, extra: &[&str]) -> RunOutput {
    let listen = sock.listen();
    let mut args = vec!["serve", "--listen", listen.as_str()];
    args.extend_from_slice(extra);
    run_bridge(
        &args,
        &[
            ("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN),
            ("CALLBACK_BRIDGE_UPSTREAM_TOKEN", UPSTREAM_TOKEN),
        ],
        WAIT,
    )
}

fn mode_of(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777
}

fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

fn one_reason(out: &RunOutput) -> String {
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "one-line reason expected; stderr:\n{}",
        out.stderr
    );
    lines[0].to_string()
}

// ---------------------------------------------------------------------------------------------
// Creation, readiness, removal
// ---------------------------------------------------------------------------------------------

#[test]
fn socket_is_owner_only_reported_as_unix_url_and_serves_the_agent() {
    let upstream = MockUpstream::start();
    let sock = SocketDir::new();
    let ready_file = sock.dir.path().join("ready.json");
    let ready_arg = ready_file.display().to_string();
    let bridge = serve_on(&sock, &upstream, &["--ready-file", &ready_arg]);

    assert_eq!(bridge.ready["url"], sock.listen(), "{}", bridge.ready);
    assert_eq!(
        read_json(&ready_file),
        bridge.ready,
        "ready_file = readiness line"
    );
    assert!(is_socket(&sock.path));
    assert_eq!(mode_of(&sock.path), 0o600, "owner only by default");
    let meta = std::fs::metadata(&sock.path).unwrap();
    assert_eq!(
        meta.uid(),
        std::fs::metadata(sock.dir.path()).unwrap().uid()
    );

    let resp = bridge.get("/api/agents/me");
    assert_eq!(resp.status, 200, "{}", resp.text());
    let got = upstream.wait_for_requests(1);
    assert_eq!(got[0].target, "/api/agents/me");
    assert_eq!(
        got[0].header("authorization"),
        Some(format!("Bearer {UPSTREAM_TOKEN}"))
    );
    // The token check stays: the socket is not a credential.
    Req::new("GET", "/api/agents/me")
        .send(bridge.endpoint)
        .assert_bridge_error(401, "invalid_token");
    assert_eq!(
        upstream.request_count(),
        1,
        "the unauthenticated request stayed"
    );
}

#[test]
fn group_mode_is_0660_only_when_asked() {
    let upstream = MockUpstream::start();
    let sock = SocketDir::new();
    let _bridge = serve_on(&sock, &upstream, &["--listen-mode", "0660"]);
    assert_eq!(mode_of(&sock.path), 0o660);
}

#[test]
fn socket_is_removed_on_exit() {
    let upstream = MockUpstream::start();
    let sock = SocketDir::new();
    let mut bridge = serve_on(&sock, &upstream, &[]);
    assert!(is_socket(&sock.path));
    bridge.sigterm();
    let exit = bridge.wait_exit_line(WAIT);
    assert_eq!(exit["reason"], "signal");
    assert!(bridge.wait_exit().success());
    assert!(!sock.path.exists(), "socket left behind");
}

#[test]
fn queue_gateway_reports_the_socket_in_ready_json_and_removes_it_on_exit() {
    let sandbox = Sandbox::new();
    let sock = SocketDir::new();
    let listen = sock.listen();
    let (mut gateway, agent) = sandbox.gateway(&["--listen", &listen]);
    assert_eq!(agent.url(), listen);
    let ready = read_json(&sandbox.queue().join("ready.json"));
    assert_eq!(ready["baseUrl"], listen, "{ready}");
    assert_eq!(
        ready["socketPath"],
        sock.path.display().to_string(),
        "{ready}"
    );
    assert!(
        ready.get("host").is_none() && ready.get("port").is_none(),
        "{ready}"
    );
    assert_eq!(ready["pid"], gateway.pid());
    assert_eq!(mode_of(&sock.path), 0o600);
    assert_eq!(agent.get("/__bridge/health").status, 200);

    gateway.sigterm();
    gateway.wait_exit_line(WAIT);
    assert!(gateway.wait_exit().success());
    assert!(!sock.path.exists(), "socket left behind");
}

#[test]
fn stdio_gateway_listens_on_the_socket_and_removes_it_when_the_relay_stops() {
    let upstream = MockUpstream::start();
    let sock = SocketDir::new();
    let relay = Relay::start(
        &upstream,
        RelayOptions {
            supplied_token: true,
            unix_socket: Some(&sock.path),
            ..Default::default()
        },
    );
    assert_eq!(mode_of(&sock.path), 0o600);
    assert_eq!(relay.agent().get("/api/agents/me").status, 200);
    assert_eq!(upstream.request_count(), 1);
    let (exit, status) = relay.stop();
    assert_eq!(exit["event"], "exit", "{exit}");
    assert!(status.success());
    wait_until("the gateway to remove its socket", || !sock.path.exists());
}

// ---------------------------------------------------------------------------------------------
// What is already at the path
// ---------------------------------------------------------------------------------------------

#[test]
fn stale_socket_is_replaced() {
    let upstream = MockUpstream::start();
    let sock = SocketDir::new();
    // A socket whose process is gone: bound, then closed without unlinking (std does not unlink).
    // Its mode marks it (inode numbers are reused at once on tmpfs).
    drop(UnixListener::bind(&sock.path).unwrap());
    std::fs::set_permissions(&sock.path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(is_socket(&sock.path));

    let bridge = serve_on(&sock, &upstream, &[]);
    assert_eq!(mode_of(&sock.path), 0o600, "a new socket, created private");
    assert_eq!(bridge.get("/api/agents/me").status, 200);
    assert_eq!(upstream.request_count(), 1);
}

#[test]
fn live_socket_is_refused_and_left_alone() {
    let sock = SocketDir::new();
    let live = UnixListener::bind(&sock.path).unwrap();
    let out = serve_refused(&sock, &[]);
    assert_eq!(out.status.code(), Some(1), "stderr: {}", out.stderr);
    let reason = one_reason(&out);
    assert!(
        reason.contains(&sock.listen()) && reason.contains("accepting connections"),
        "{reason}"
    );
    assert!(out.stdout.is_empty(), "no readiness line: {}", out.stdout);
    // Still ours, still live: a client reaches the original listener.
    assert!(is_socket(&sock.path));
    let _client = UnixStream::connect(&sock.path).expect("the live socket still works");
    live.set_nonblocking(false).unwrap();
    // The bridge's probe connected once, the client once: both are in the queue.
    for _ in 0..2 {
        live.accept().expect("accept");
    }
}

#[test]
fn anything_but_a_socket_at_the_path_is_never_removed() {
    enum Planted {
        File,
        SymlinkToFile,
        SymlinkToStaleSocket,
        Directory,
    }
    for planted in [
        Planted::File,
        Planted::SymlinkToFile,
        Planted::SymlinkToStaleSocket,
        Planted::Directory,
    ] {
        let sock = SocketDir::new();
        let other = sock.dir.path().join("other");
        let what = match planted {
            Planted::File => {
                std::fs::write(&sock.path, "precious").unwrap();
                "a regular file"
            }
            Planted::SymlinkToFile => {
                std::fs::write(&other, "precious").unwrap();
                std::os::unix::fs::symlink(&other, &sock.path).unwrap();
                "a symlink to a file"
            }
            Planted::SymlinkToStaleSocket => {
                drop(UnixListener::bind(&other).unwrap());
                std::os::unix::fs::symlink(&other, &sock.path).unwrap();
                "a symlink to a stale socket"
            }
            Planted::Directory => {
                std::fs::create_dir(&sock.path).unwrap();
                std::fs::write(sock.path.join("inside"), "precious").unwrap();
                "a directory"
            }
        };
        let before = std::fs::symlink_metadata(&sock.path).unwrap();
        let out = serve_refused(&sock, &[]);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", out.stderr);
        let reason = one_reason(&out);
        assert!(reason.contains("not a socket"), "{what}: {reason}");
        let after = std::fs::symlink_metadata(&sock.path).expect("still there");
        assert_eq!(
            (after.ino(), after.file_type()),
            (before.ino(), before.file_type()),
            "{what} was replaced"
        );
        match planted {
            Planted::File => assert_eq!(std::fs::read_to_string(&sock.path).unwrap(), "precious"),
            Planted::SymlinkToFile => {
                assert_eq!(std::fs::read_to_string(&other).unwrap(), "precious")
            }
            Planted::SymlinkToStaleSocket => assert!(is_socket(&other), "target kept"),
            Planted::Directory => assert_eq!(
                std::fs::read_to_string(sock.path.join("inside")).unwrap(),
                "precious"
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------

#[test]
fn socket_settings_are_checked_before_anything_is_created() {
    let sock = SocketDir::new();
    let long = format!("unix:/tmp/{}", "s".repeat(120));
    let listen = sock.listen();
    for (args, needle) in [
        (
            vec!["--listen", "127.0.0.1:0", "--listen-mode", "0600"],
            "listen_mode",
        ),
        (
            vec!["--listen", "127.0.0.1:0", "--allow-peer-uid", "0"],
            "allow_peer_uid",
        ),
        (
            vec!["--listen", "127.0.0.1:0", "--allow-peer-gid", "0"],
            "allow_peer_gid",
        ),
        (
            vec!["--listen", listen.as_str(), "--listen-mode", "0666"],
            "0666",
        ),
        (
            vec!["--listen", listen.as_str(), "--listen-mode", "0644"],
            "0644",
        ),
        (vec!["--listen", long.as_str()], "107"),
        (vec!["--listen", "unix:"], "socket path"),
    ] {
        let mut full = vec!["serve"];
        full.extend_from_slice(&args);
        let out = run_bridge(&full, &[("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN)], WAIT);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out.stderr);
        let reason = one_reason(&out);
        assert!(reason.contains(needle), "{args:?}: {reason}");
        assert!(!sock.path.exists(), "{args:?} created the socket");
    }
}

// ---------------------------------------------------------------------------------------------
// Peer check (needs root: the refused peer is a child process running as another uid/gid)
// ---------------------------------------------------------------------------------------------

/// The uid and gid of a peer the tests refuse (`nobody`).
const OTHER_ID: u32 = 65534;
/// Set for the child run of [`peer_client`]: the socket it connects to.
const PEER_CLIENT_SOCKET: &str = "UNIX_SOCKET_TEST_PEER_CLIENT";

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Runs [`peer_client`] (this test binary) as `uid`/`gid` against `socket`; it passes when its
/// connection is closed without a single byte of response.
fn closed_unread_for(socket: &Path, uid: u32, gid: u32) -> RunOutput {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--ignored", "--exact", "peer_client", "--nocapture"])
        .env(PEER_CLIENT_SOCKET, socket)
        .uid(uid)
        .gid(gid);
    run_command(cmd, WAIT)
}

/// Not a test of its own: the client half of the peer-check tests, run by them in a child process
/// with another identity. It sends a full authenticated request and requires the bridge to close
/// the connection without answering.
#[test]
#[ignore = "helper: run by the peer-check tests as another uid/gid"]
fn peer_client() {
    let socket = std::env::var_os(PEER_CLIENT_SOCKET).expect("run by the peer-check tests");
    let mut conn = RawConn::connect(Endpoint::unix(Path::new(&socket)));
    // The bridge may already have closed: a failed write is part of the expected outcome.
    let _ = conn.write(
        &Req::new("GET", "/__bridge/health")
            .bearer(BRIDGE_TOKEN)
            .to_bytes(Endpoint::unix(Path::new(&socket))),
    );
    let got = conn.read_to_close();
    match got {
        Ok(bytes) => assert!(
            bytes.is_empty(),
            "answered: {:?}",
            String::from_utf8_lossy(&bytes)
        ),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
}

/// A bridge on a 0660 socket in a directory others may traverse, so that a peer of the socket's
/// group reaches the peer check (the mode would stop anyone else first).
fn serve_for_peers(sock: &SocketDir, upstream: &MockUpstream, peer_args: &[&str]) -> Bridge {
    std::fs::set_permissions(sock.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let mut args = vec!["--listen-mode", "0660"];
    args.extend_from_slice(peer_args);
    serve_on(sock, upstream, &args)
}

fn peer_refused(bridge: &Bridge) -> f64 {
    let resp = bridge.get("/__bridge/metrics");
    assert_eq!(resp.status, 200, "{}", resp.text());
    prometheus_samples(&resp.text())["callback_bridge_peer_refused_total"]
}

#[test]
fn peer_check_closes_another_uid_unread_and_counts_it() {
    if !running_as_root() {
        eprintln!("skipped: needs root to run a peer as another uid");
        return;
    }
    let upstream = MockUpstream::start();
    let sock = SocketDir::new();
    // Root (this test) is allowed; `nobody`, in the socket's group, is not.
    let bridge = serve_for_peers(&sock, &upstream, &["--allow-peer-uid", "0"]);
    assert_eq!(peer_refused(&bridge), 0.0);

    let out = closed_unread_for(&sock.path, OTHER_ID, 0);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(peer_refused(&bridge), 1.0);
    bridge.wait_stderr_contains("\"peer_uid\":65534", WAIT);
    assert!(
        !bridge.stderr_text().contains(BRIDGE_TOKEN),
        "token in the log"
    );
    assert_eq!(upstream.request_count(), 0, "nothing forwarded");
    // The metrics requests were answered: an allowed peer is served.
    assert_eq!(bridge.get("/api/agents/me").status, 200);
}

#[test]
fn peer_check_closes_another_gid_unread() {
    if !running_as_root() {
        eprintln!("skipped: needs root to run a peer as another gid");
        return;
    }
    let upstream = MockUpstream::start();
    let sock = SocketDir::new();
    // Both lists must admit the peer: uid 0 with gid `nobody` is refused by the gid list.
    let bridge = serve_for_peers(
        &sock,
        &upstream,
        &["--allow-peer-uid", "0", "--allow-peer-gid", "0"],
    );
    let out = closed_unread_for(&sock.path, 0, OTHER_ID);
    assert!(out.status.success(), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(peer_refused(&bridge), 1.0);
    assert_eq!(upstream.request_count(), 0, "nothing forwarded");
}

#[test]
fn peer_check_refusing_everyone_still_reads_nothing() {
    // Runs as any user: an allow-list without our own uid closes our own connections unread.
    let upstream = MockUpstream::start();
    let sock = SocketDir::new();
    let own = std::fs::metadata("/proc/self").unwrap().uid();
    let other = (own + 1).to_string();
    let mut bridge = serve_on(&sock, &upstream, &["--allow-peer-uid", &other]);
    let mut conn = RawConn::connect(bridge.endpoint);
    let _ = conn.write(
        &Req::new("GET", "/api/agents/me")
            .bearer(BRIDGE_TOKEN)
            .to_bytes(bridge.endpoint),
    );
    match conn.read_to_close() {
        Ok(bytes) => assert!(
            bytes.is_empty(),
            "answered: {:?}",
            String::from_utf8_lossy(&bytes)
        ),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
    }
    bridge.wait_stderr_contains("peer not allowed", WAIT);
    assert_eq!(upstream.request_count(), 0, "nothing forwarded");
    bridge.sigterm();
    let exit = bridge.wait_exit_line(Duration::from_secs(10));
    assert_eq!(
        exit["requests"], 0,
        "the refused connection was no request: {exit}"
    );
}
