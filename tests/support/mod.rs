//! The one test harness of the black-box suites: every `tests/*.rs` that spawns the binary
//! declares `mod support;` and uses what is re-exported here.
//!
//! * [`upstream`] — [`MockUpstream`], a recording HTTP/1.1 server (method, raw target, headers,
//!   body of every request) answering per a [`Behaviour`] (fixed response, echo, a small fake
//!   Paperclip API, hang, delay, slow body, close before or in the middle of the response).
//! * [`client`] — the agent's side: [`Req`], [`RawConn`], [`Response`] speak HTTP/1.1 over a
//!   plain `TcpStream`, writing exactly the bytes a test gives them; [`Agent`] adds the token.
//! * [`process`] — [`Proc`] spawns the binary under test (`BRIDGE_TEST_BIN` respected), reads
//!   readiness and exit lines from stdout (or stderr), captures stderr; [`Bridge`] is `serve`.
//! * [`queue`] — [`Sandbox`]: a queue directory with its gateway and relay (docs/reference.md §6.1).
//! * [`stdio`] — [`Relay`]: `relay --transport stdio -- <gateway>` (docs/reference.md §6.2).
//! * [`attack`] — helpers of the adversarial suite (`tests/attack_*.rs`).
//!
//! Everything is synchronous from a test's point of view (the mock upstream runs its own tokio
//! runtime on a thread). Every wait is bounded by [`WAIT`]; nothing sleeps in place of a readiness
//! line, and no test asserts on elapsed time.
// Each test binary uses a part of the harness: unused items and re-exports are expected.
#![allow(dead_code, unused_imports)]

pub mod attack;
pub mod client;
pub mod process;
pub mod queue;
pub mod stdio;
pub mod upstream;

pub use client::*;
pub use process::*;
pub use queue::*;
pub use stdio::*;
pub use upstream::*;

use std::time::{Duration, Instant};

/// Upper bound for every wait in the suite: generous, so that a slow machine (2 cores running
/// several test binaries) does not fail a test, but finite, so that a broken bridge makes a test
/// fail instead of hanging the suite.
pub const WAIT: Duration = Duration::from_secs(30);

/// The bridge token the agent presents. Tests supply it (`CALLBACK_BRIDGE_TOKEN`) wherever they
/// do not test token generation itself.
pub const BRIDGE_TOKEN: &str = "bridge-token-Zq8wK2mN5pR7tV9x";
/// The real upstream credential (`CALLBACK_BRIDGE_UPSTREAM_TOKEN`): held by `serve` and by relays,
/// never by a gateway, never in the sandbox.
pub const UPSTREAM_TOKEN: &str = "upstream-credential-Hf3Jk6Lm9Np2Qr5S";
/// The run id (`PAPERCLIP_RUN_ID`), injected upstream as `x-paperclip-run-id`.
pub const RUN_ID: &str = "run-0193f2c4-7a1e-7b55-9d3c-5e8f0a1b2c3d";

/// A loopback port with nothing listening on it right now (bound, then released): for an
/// unreachable upstream, or a `--listen` address chosen by the spawner (stdio gateways).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().unwrap().port()
}

/// `n` bytes from the OS CSPRNG.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    getrandom::fill(&mut v).expect("getrandom");
    v
}

/// Deterministic bytes (a xorshift sequence per `seed`); when `len >= 256` every byte value
/// occurs, so a body that is not carried byte for byte (UTF-8 lossy, text mode, NUL cut) differs.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if i < 256 {
                (i as u64).wrapping_add(seed) as u8
            } else {
                (x >> 24) as u8
            }
        })
        .collect()
}

/// Polls `cond` (cheap and local: a directory listing, a `/proc` read) until it holds; panics
/// naming `what` after [`WAIT`]. For conditions with no event to wait on.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    if !eventually(&mut cond) {
        panic!("timed out after {WAIT:?} waiting for {what}");
    }
}

/// Polls `cond` until it holds (true) or [`WAIT`] passes (false).
pub fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + WAIT;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `f` on another thread; the handle returns its result.
pub fn background<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(f)
}

/// Reads a JSON file (panics naming the file if it is missing or not JSON).
pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("{} is not JSON ({e})", path.display()))
}
