//! Resource-exhaustion attacks: a client that sends its head one byte per second, idle
//! connections that hold every slot, a request flood above the rate limit, and 10,000 idle
//! connections at once.
//!
//! What must hold: slow or idle clients are cut off after `--header-read-timeout` while others
//! are served; every request of a flood gets an answer (200 or 429, nothing dropped silently and
//! nothing forwarded that was answered 429), the bridge's memory stays bounded; at most
//! `--max-connections` connections are served at once, and descriptors are released when clients
//! go away. Resources are read from `/proc/<pid>/{fd,status}` of the spawned bridge.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

use support::attack::*;
use support::*;

#[test]
fn slow_loris_head_is_cut_off_while_another_client_is_served() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &["--header-read-timeout", "1s"]);
    let head = head("GET", ME, "");
    let mut slow = TcpStream::connect(bridge.addr).unwrap();
    slow.set_read_timeout(Some(WAIT)).unwrap();
    // A reader reports when the bridge closes the slow connection (and what it said first).
    let (closed_tx, closed_rx) = mpsc::channel();
    let mut reader = slow.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        let end = reader.read_to_end(&mut seen);
        let _ = closed_tx.send((end.map(|_| ()), seen));
    });
    // One byte per second until the bridge hangs up (bounded by the head's length).
    let mut sent = 0;
    let mut outcome = None;
    for &byte in head.as_bytes() {
        if slow.write_all(&[byte]).is_err() {
            break;
        }
        sent += 1;
        if sent == 1 {
            // The bridge has a slow client in progress: a second client is served normally.
            let resp = bridge.get("/api/issues/ISS-1");
            assert_eq!(resp.status, 200, "{:?}", resp.text());
        }
        match closed_rx.recv_timeout(Duration::from_secs(1)) {
            Ok(result) => {
                outcome = Some(result);
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(e) => panic!("reader thread gone: {e}"),
        }
    }
    let (end, seen) = outcome
        .or_else(|| closed_rx.recv_timeout(WAIT).ok())
        .expect("the bridge must close a connection whose head never completes");
    // Closed either way: a clean end of stream, or a reset when a byte the bridge never read was
    // still in its receive buffer at close (the kernel then answers with RST). Anything else, such
    // as the reader's own time-out, means the bridge kept the connection.
    assert!(
        match &end {
            Ok(()) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        },
        "the slow connection was not closed by the bridge: {end:?}"
    );
    assert!(
        sent < head.len(),
        "the whole head ({} bytes, one per second) got through before the timeout",
        head.len()
    );
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "only a 408 may precede the close, got {text:?}"
    );
    let got = upstream.requests();
    assert_eq!(got.len(), 1, "only the complete request was forwarded");
    assert_well_formed_forward(&got[0], &upstream, "GET", "/api/issues/ISS-1");
}

#[test]
fn idle_connections_holding_every_slot_are_reaped_by_the_header_timeout() {
    let upstream = MockUpstream::start();
    let cap = 16;
    let bridge = Bridge::for_upstream(
        &upstream,
        &[
            "--max-connections",
            &cap.to_string(),
            "--header-read-timeout",
            "1s",
        ],
    );
    // Every slot is taken by a connection that never sends a byte.
    let mut idle: Vec<TcpStream> = (0..cap)
        .map(|_| TcpStream::connect(bridge.addr).unwrap())
        .collect();
    // A real client still gets its answer once the idle ones time out.
    let resp = raw_request(
        bridge.addr,
        head("GET", ME, "connection: close\r\n").as_bytes(),
    );
    assert_eq!(resp.status, 200, "{:?}", resp.text());
    assert_forwarded_once(&upstream, "GET", ME, b"");
    for (i, conn) in idle.iter_mut().enumerate() {
        conn.set_read_timeout(Some(WAIT)).unwrap();
        let mut rest = Vec::new();
        let end = conn.read_to_end(&mut rest);
        assert!(
            end.is_ok(),
            "idle connection {i} was not closed by the bridge: {end:?}"
        );
        let text = String::from_utf8_lossy(&rest);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "idle connection {i}: {text:?}"
        );
    }
}

#[test]
fn flood_above_the_rate_limit_gets_429s_and_every_request_an_answer() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(
        &upstream,
        &["--rate-limit-per-second", "20", "--rate-limit-burst", "20"],
    );
    // Warm up, then measure memory before the flood.
    assert_eq!(bridge.get(ME).status, 200);
    let rss_before = rss_kib(bridge.pid());
    const CLIENTS: usize = 8;
    const PER_CLIENT: usize = 250;
    let addr = bridge.addr;
    let workers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            std::thread::spawn(move || {
                // Keep-alive: a 429 does not close the connection.
                let mut conn = RawConn::connect(addr);
                let req = head("GET", ME, "");
                (0..PER_CLIENT)
                    .map(|_| {
                        conn.write(req.as_bytes()).unwrap();
                        conn.read_response(false)
                            .expect("every request of the flood gets a response")
                    })
                    .collect::<Vec<Response>>()
            })
        })
        .collect();
    let responses: Vec<Response> = workers
        .into_iter()
        .flat_map(|w| w.join().expect("flood client panicked"))
        .collect();
    assert_eq!(responses.len(), CLIENTS * PER_CLIENT);
    let ok = responses.iter().filter(|r| r.status == 200).count();
    let limited: Vec<&Response> = responses.iter().filter(|r| r.status == 429).collect();
    assert_eq!(
        ok + limited.len(),
        responses.len(),
        "only 200 and 429 are expected, got {:?}",
        responses
            .iter()
            .map(|r| r.status)
            .filter(|s| *s != 200 && *s != 429)
            .collect::<Vec<_>>()
    );
    assert!(
        !limited.is_empty(),
        "a flood of {} requests above 20/s was never limited",
        responses.len()
    );
    for r in &limited {
        r.assert_bridge_error(429, "rate_limited");
        assert!(r
            .header("retry-after")
            .is_some_and(|v| v.parse::<u64>().is_ok()));
    }
    // Exactly the answered-200 requests were forwarded (plus the warm-up): nothing limited went
    // upstream and nothing forwarded went unanswered.
    assert_eq!(upstream.request_count(), ok + 1);
    let rss_after = rss_kib(bridge.pid());
    assert!(
        rss_after < rss_before + 32 * 1024,
        "resident memory grew from {rss_before} KiB to {rss_after} KiB over the flood"
    );
    // And the bridge is still healthy for the next caller.
    let health = raw_request(
        bridge.addr,
        b"GET /__bridge/health HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n",
    );
    assert_eq!(health.status, 200);
}

#[test]
fn ten_thousand_idle_connections_neither_starve_new_clients_nor_leak_descriptors() {
    const IDLE: usize = 10_000;
    const HEADROOM: usize = 16;
    const BATCH: usize = 64;
    // The warm-up request's own connection may still be open when the baseline is taken.
    const SLACK: usize = 2;
    // This process holds every client socket; the bridge inherits the raised limit.
    let limit = raise_nofile((IDLE + HEADROOM) as u64 + 1_000);
    let idle_count = IDLE.min((limit as usize).saturating_sub(HEADROOM + 1_000));
    assert!(
        idle_count >= 1_000,
        "RLIMIT_NOFILE {limit} is too low to run this test meaningfully"
    );
    if idle_count < IDLE {
        eprintln!(
            "RLIMIT_NOFILE is {limit}: holding {idle_count} idle connections instead of {IDLE}"
        );
    }
    let cap = idle_count + HEADROOM;
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(
        &upstream,
        &[
            "--max-connections",
            &cap.to_string(),
            // Long enough that the idle connections stay for the whole test.
            "--header-read-timeout",
            "60s",
            "--rate-limit-per-second",
            "0",
        ],
    );
    let pid = bridge.pid();
    assert_eq!(bridge.get(ME).status, 200);
    let baseline = fd_count(pid);

    // Connect in batches, each accepted before the next: a burst beyond the listen backlog
    // (1024, capped by somaxconn) costs the client a 1 s SYN retry.
    let mut idle: Vec<TcpStream> = Vec::with_capacity(cap);
    while idle.len() < idle_count {
        let batch = BATCH.min(idle_count - idle.len());
        for _ in 0..batch {
            let i = idle.len();
            idle.push(
                TcpStream::connect(bridge.addr)
                    .unwrap_or_else(|e| panic!("idle connection {i} could not connect: {e}")),
            );
        }
        let want = baseline + idle.len() - SLACK;
        assert!(
            eventually(|| fd_count(pid) >= want),
            "the bridge did not accept {} connections (fds {} over a baseline of {baseline})",
            idle.len(),
            fd_count(pid)
        );
    }
    // New clients are served while the idle ones are held, up to the cap.
    for i in 0..HEADROOM / 2 {
        let resp = bridge.get(&format!("/api/issues/ISS-{i}"));
        assert_eq!(
            resp.status,
            200,
            "new client {i} under {idle_count} idle: {:?}",
            resp.text()
        );
    }

    // Fill the last slots: now a new client waits in the kernel's queue, unanswered...
    while idle.len() < cap {
        idle.push(TcpStream::connect(bridge.addr).unwrap());
    }
    assert!(eventually(|| fd_count(pid) >= baseline + cap - SLACK));
    let mut waiting = TcpStream::connect(bridge.addr).unwrap();
    waiting
        .write_all(head("GET", "/api/issues/WAITING", "connection: close\r\n").as_bytes())
        .unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut first = [0u8; 1];
    let early = waiting.read(&mut first);
    assert!(
        early.is_err(),
        "a client beyond --max-connections {cap} was answered ({early:?})"
    );
    assert!(upstream
        .requests()
        .iter()
        .all(|r| r.target != "/api/issues/WAITING"));
    // ...until one slot frees up.
    drop(idle.pop());
    waiting.set_read_timeout(Some(WAIT)).unwrap();
    let mut answer = Vec::new();
    waiting.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");

    // Closing the idle connections releases every descriptor.
    drop(idle);
    drop(waiting);
    assert!(
        eventually(|| fd_count(pid) <= baseline + 2),
        "descriptors leaked: {} open, {baseline} before the idle connections",
        fd_count(pid)
    );
    assert_eq!(bridge.get(ME).status, 200, "still serving afterwards");
    let forwarded = upstream.requests();
    assert_eq!(forwarded.len(), 1 + HEADROOM / 2 + 1 + 1);
    for r in &forwarded {
        assert_well_formed_forward(r, &upstream, "GET", &r.target);
    }
}
