//! Queue transport, nested timeouts (docs/queue-transport.md, "Nested timeouts"): on a hung
//! upstream the relay answers before the gateway gives up — with our gateway, which writes its
//! timeout into each request file, and with a gateway that behaves like Paperclip's (no timeout
//! in the file; the relay is told through `PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS`, as the host
//! launched the gateway) — the upstream sees each request once, and no request or response file
//! is left behind.

mod support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::*;

const JSON: &[(&str, &str)] = &[("content-type", "application/json")];

fn send(
    gw: &Agent,
    method: &'static str,
    target: &'static str,
) -> std::thread::JoinHandle<Response> {
    let gw = gw.clone();
    let body: &'static [u8] = if method == "GET" {
        b""
    } else {
        b"{\"body\":\"x\"}"
    };
    background(move || {
        gw.request(
            method,
            target,
            if body.is_empty() { &[] } else { JSON },
            body,
        )
    })
}

fn queue_files_left(sb: &Sandbox) -> Vec<String> {
    let mut left = Sandbox::list(&sb.requests());
    left.extend(Sandbox::list(&sb.responses()));
    left
}

fn check_settles(sb: &Sandbox, up: &MockUpstream) {
    // Release the upstream: its late answers must not turn into files.
    up.set_holding(false);
    wait_until("no request or response files left", || {
        queue_files_left(sb).is_empty()
    });
}

#[test]
fn our_pair_hung_get_and_post_get_the_relays_answer_and_leave_no_files() {
    for helper in [false, true] {
        let up = MockUpstream::app();
        up.set_holding(true);
        let sb = Sandbox::new();
        let (_gw_proc, gw) = sb.gateway(&["--response-timeout", "3s"]);
        let bin = bridge_binary_str();
        let args: Vec<&str> = if helper {
            vec!["--sandbox-helper", bin.as_str()]
        } else {
            Vec::new()
        };
        // The relay is not told the timeout: each request file says it.
        let relay = sb.relay(&up.url(), &["sh", "-c"], &args);
        let (g, p) = (
            send(&gw, "GET", "/api/agents/hold"),
            send(&gw, "POST", "/api/issues/hold/comments"),
        );
        let (g, p) = (g.join().unwrap(), p.join().unwrap());
        assert_eq!(
            (g.status, g.code()),
            (504, "upstream_timeout"),
            "helper {helper}"
        );
        assert_eq!(
            (p.status, p.code()),
            (409, "outcome_indeterminate"),
            "helper {helper}"
        );
        assert_eq!(up.count_path("/api/agents/hold"), 1);
        assert_eq!(up.count_path("/api/issues/hold/comments"), 1);
        // Both answers are the relay's: it wrote them and the gateway consumed them (it did
        // not withdraw the claims first).
        let logs = relay.stderr_text();
        assert!(!logs.contains("nobody waits"), "{logs}");
        assert_eq!(logs.matches("\"status\":504").count(), 1, "{logs}");
        assert_eq!(logs.matches("\"status\":409").count(), 1, "{logs}");
        check_settles(&sb, &up);
    }
}

/// A gateway that behaves like Paperclip's on the file level: it writes a request file (its key
/// order, a UUIDv4-style id, `createdAt` now, no timeout field), waits for `responses/<id>.json`
/// for `timeout`, reads and deletes it; on timeout it deletes its request file and gives up.
fn paperclip_style_call(
    requests: PathBuf,
    responses: PathBuf,
    id: &'static str,
    method: &'static str,
    path: &'static str,
    timeout: Duration,
) -> std::thread::JoinHandle<Option<serde_json::Value>> {
    background(move || {
        let created = callback_bridge::transport::queue::file::now_iso8601();
        let body = if method == "GET" {
            ""
        } else {
            "{\\\"body\\\":\\\"x\\\"}"
        };
        let text = format!(
            r#"{{"id":"{id}","method":"{method}","path":"{path}","query":"","headers":{{"content-type":"application/json"}},"body":"{body}","createdAt":"{created}"}}"#
        );
        let tmp = requests.join(format!("{id}.json.tmp"));
        std::fs::write(&tmp, format!("{text}\n")).unwrap();
        let request = requests.join(format!("{id}.json"));
        std::fs::rename(&tmp, &request).unwrap();
        let response = responses.join(format!("{id}.json"));
        let started = Instant::now();
        while started.elapsed() < timeout {
            if let Ok(bytes) = std::fs::read(&response) {
                let _ = std::fs::remove_file(&response);
                return Some(serde_json::from_slice(&bytes).unwrap());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(&request);
        None
    })
}

fn paperclip_style_gateway_gets_the_relays_answer(relay_args: &[&str], env: &[(&str, &str)]) {
    let up = MockUpstream::app();
    up.set_holding(true);
    let sb = Sandbox::new();
    // The relay creates the queue; the simulated gateway only writes and reads files.
    let _relay = sb.relay_env(&up.url(), &["sh", "-c"], relay_args, env);
    let timeout = Duration::from_secs(3);
    let call = |id, method, path| {
        paperclip_style_call(sb.requests(), sb.responses(), id, method, path, timeout)
    };
    let (g, p) = (
        call(
            "5b0c7a52-3d1e-4f6a-9b8c-7d6e5f4a3b2c",
            "GET",
            "/api/agents/hold",
        ),
        call(
            "c4d3e2f1-a0b9-4c8d-8e7f-6a5b4c3d2e1f",
            "POST",
            "/api/issues/hold/comments",
        ),
    );
    let g = g.join().unwrap().expect("the GET answered in time");
    let p = p.join().unwrap().expect("the POST answered in time");
    assert_eq!(g["status"], 504);
    let body: serde_json::Value = serde_json::from_str(g["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["code"], "upstream_timeout");
    // An indeterminate mutation travels as 504 + Paperclip's outcome header (the gateway
    // turns it into 409).
    assert_eq!(p["status"], 504);
    assert_eq!(p["headers"]["x-paperclip-bridge-outcome"], "indeterminate");
    assert_eq!(up.count_path("/api/agents/hold"), 1);
    assert_eq!(up.count_path("/api/issues/hold/comments"), 1);
    check_settles(&sb, &up);
}

#[test]
fn paperclip_style_gateway_hung_get_and_post_get_the_relays_answer_and_leave_no_files() {
    // The host passes the relay the variable it launched the gateway with.
    paperclip_style_gateway_gets_the_relays_answer(
        &[],
        &[("PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS", "3000")],
    );
}

#[test]
fn the_relay_flag_names_the_gateways_timeout() {
    paperclip_style_gateway_gets_the_relays_answer(&["--response-timeout", "3s"], &[]);
}

#[test]
fn a_request_the_gateway_gave_up_on_is_not_answered_late_and_its_claim_goes() {
    // The relay is told a timeout longer than the simulated gateway's own (1 s), so the
    // gateway gives up first; the relay's late answer must not stay in the queue.
    let up = MockUpstream::app();
    up.set_holding(true);
    let sb = Sandbox::new();
    let relay = sb.relay_env(&up.url(), &["sh", "-c"], &["--response-timeout", "3s"], &[]);
    let g = paperclip_style_call(
        sb.requests(),
        sb.responses(),
        "0f1e2d3c-4b5a-4968-8776-655443322110",
        "GET",
        "/api/agents/hold",
        Duration::from_secs(1),
    );
    assert!(g.join().unwrap().is_none(), "the gateway gave up first");
    up.wait_for("the GET at the upstream", 1, "/api/agents/hold");
    // The relay's deadline (3 s less its margin) passes; its answer is written for a gateway
    // it still believes waiting, and swept once that gateway's timeout has passed.
    wait_until("the relay answered", || {
        relay.stderr_text().contains("\"status\":504")
    });
    check_settles(&sb, &up);
}
