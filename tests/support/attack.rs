//! Helpers for the adversarial suite (`tests/attack_*.rs`): request heads written byte for byte,
//! assertions on what the mock upstream saw, and the bridge process's resources (file
//! descriptors, resident memory) read from `/proc`.

use std::process::Command;

use super::*;

/// An allowed read route of the built-in table.
pub const ME: &str = "/api/agents/me";
/// An allowed `POST` route with a JSON body.
pub const COMMENTS: &str = "/api/issues/ISS-1/comments";
/// A route that is never allowed (docs/reference.md §4.3: agent creation), used as the smuggled request.
pub const FORBIDDEN: &str = "/api/companies/cmp-1/agents";

/// `authorization: Bearer <BRIDGE_TOKEN>`, one header line with CRLF.
pub fn auth_line() -> String {
    format!("authorization: Bearer {BRIDGE_TOKEN}\r\n")
}

/// A request head `METHOD TARGET HTTP/1.1`, `host`, the bridge token, then `extra` (header lines,
/// each ending in CRLF, written as given) and the empty line.
pub fn head(method: &str, target: &str, extra: &str) -> String {
    format!(
        "{method} {target} HTTP/1.1\r\nhost: bridge.test\r\n{}{extra}\r\n",
        auth_line()
    )
}

/// Panics unless the upstream received nothing.
pub fn assert_upstream_saw_nothing(upstream: &MockUpstream, what: &str) {
    let got = upstream.requests();
    assert!(
        got.is_empty(),
        "{what}: the upstream must receive nothing, got {:?}",
        got.iter()
            .map(|r| format!("{} {}", r.method, r.target))
            .collect::<Vec<_>>()
    );
}

/// Checks one forwarded request as the bridge must shape every one: the expected method and
/// byte-identical target, `host` the configured upstream, the real credential (never the
/// caller's), the run id, only allowlisted caller headers, and framing set by the bridge alone.
pub fn assert_well_formed_forward(
    r: &Recorded,
    upstream: &MockUpstream,
    method: &str,
    target: &str,
) {
    assert_eq!(
        (r.method.as_str(), r.target.as_str()),
        (method, target),
        "forwarded request line"
    );
    assert_eq!(
        r.header_all("host"),
        [upstream.authority()],
        "the upstream host is always the configured one"
    );
    assert_eq!(
        r.header_all("authorization"),
        [format!("Bearer {UPSTREAM_TOKEN}")],
        "only the injected credential goes upstream"
    );
    assert_eq!(r.header_all("x-paperclip-run-id"), [RUN_ID]);
    let ids = r.header_all("x-request-id");
    assert!(
        ids.len() == 1 && !ids[0].is_empty(),
        "exactly one x-request-id, the bridge's: {ids:?}"
    );
    const ALLOWED: [&str; 12] = [
        "x-request-id",
        "accept",
        "content-type",
        "if-match",
        "if-none-match",
        "idempotency-key",
        "x-paperclip-github-capability",
        "host",
        "authorization",
        "x-paperclip-run-id",
        "content-length",
        "transfer-encoding",
    ];
    for name in r.header_names() {
        assert!(
            ALLOWED.contains(&name.as_str()),
            "{method} {target}: forwarded header {name:?} is not on the allowlist"
        );
    }
    let cl = r.header_all("content-length");
    let te = r.header_all("transfer-encoding");
    assert!(
        cl.len() <= 1 && te.len() <= 1,
        "framing headers repeated: {cl:?} {te:?}"
    );
    assert!(
        cl.is_empty() || te.is_empty(),
        "both content-length {cl:?} and transfer-encoding {te:?}"
    );
    assert!(
        te.iter().all(|v| v == "chunked"),
        "transfer-encoding {te:?}"
    );
}

/// Panics unless the upstream received exactly one request, shaped as
/// [`assert_well_formed_forward`] requires, with `body` complete; returns it.
pub fn assert_forwarded_once(
    upstream: &MockUpstream,
    method: &str,
    target: &str,
    body: &[u8],
) -> Recorded {
    let got = upstream.wait_for_requests(1);
    assert_eq!(
        got.len(),
        1,
        "exactly one upstream request, got {:?}",
        got.iter()
            .map(|r| format!("{} {}", r.method, r.target))
            .collect::<Vec<_>>()
    );
    let r = upstream.wait_for_body_end(0);
    assert_well_formed_forward(&r, upstream, method, target);
    assert!(r.body_complete, "the forwarded body was cut off");
    assert_eq!(r.body, body, "forwarded body");
    r
}

/// Reads responses off `conn` until the bridge closes it (or an unparsable byte sequence ends
/// the stream); returns them in order.
pub fn responses_until_close(conn: &mut RawConn) -> Vec<Response> {
    let mut out = Vec::new();
    while let Ok(resp) = conn.read_response(false) {
        out.push(resp);
    }
    out
}

/// Number of open file descriptors of process `pid`.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/fd: {e}"))
        .count()
}

/// Resident set size of process `pid` in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// The soft `RLIMIT_NOFILE` of this process, raised towards `wanted` (up to the hard limit) with
/// util-linux `prlimit` when it is lower. Children spawned afterwards (the bridge) inherit it.
pub fn raise_nofile(wanted: u64) -> u64 {
    let read = || -> (u64, u64) {
        let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
        let line = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .expect("Max open files in /proc/self/limits");
        let mut nums = line.split_whitespace().filter_map(|w| {
            w.parse::<u64>()
                .ok()
                .or((w == "unlimited").then_some(u64::MAX))
        });
        (nums.next().unwrap(), nums.next().unwrap())
    };
    let (soft, hard) = read();
    if soft >= wanted {
        return soft;
    }
    let target = wanted.min(hard);
    let hard = if hard == u64::MAX {
        "unlimited".to_owned()
    } else {
        hard.to_string()
    };
    let _ = Command::new("prlimit")
        .arg("--pid")
        .arg(std::process::id().to_string())
        .arg(format!("--nofile={target}:{hard}"))
        .status();
    read().0
}
