//! Queue transport, compatibility with Paperclip's `queue_v1`: the gateway launched exactly as
//! Paperclip launches `paperclip-bridge-server.mjs` (environment only), the gateway served by a
//! host worker that does not claim (Paperclip's), and the relay serving files written the way
//! Paperclip's gateway writes them (UUIDv4 names, its key order, base64 multipart bodies).

mod support;

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use support::*;

fn paperclip_gateway(sb: &Sandbox, mode: &str) -> Command {
    let mut cmd = bridge_command_bare(&["gateway"], &[]);
    cmd.env("PAPERCLIP_API_BRIDGE_MODE", mode)
        .env("PAPERCLIP_BRIDGE_QUEUE_DIR", sb.queue())
        .env("PAPERCLIP_BRIDGE_TOKEN", BRIDGE_TOKEN)
        .env("PAPERCLIP_BRIDGE_HOST", "127.0.0.1")
        .env("PAPERCLIP_BRIDGE_PORT", "0")
        .env("PAPERCLIP_BRIDGE_POLL_INTERVAL_MS", "100")
        .env("PAPERCLIP_BRIDGE_RESPONSE_TIMEOUT_MS", "30000")
        .env("PAPERCLIP_BRIDGE_MAX_QUEUE_DEPTH", "64")
        .env("PAPERCLIP_BRIDGE_MAX_BODY_BYTES", "10551296")
        .env("CALLBACK_BRIDGE_LOG_FORMAT", "json");
    cmd
}

#[test]
fn gateway_starts_from_paperclips_environment_alone() {
    let up = MockUpstream::app();
    let sb = Sandbox::new();
    let mut gw_proc = Proc::spawn(
        paperclip_gateway(&sb, "queue_v1"),
        "paperclip-style gateway",
    );
    let ready = gw_proc.wait_event("ready");
    assert!(
        ready.get("token").is_none(),
        "a supplied token is not printed"
    );
    let url = ready["url"].as_str().unwrap();

    let text = std::fs::read_to_string(sb.queue().join("ready.json")).unwrap();
    assert!(text.starts_with("{\"pid\":"), "{text}");
    let doc = read_json(&sb.queue().join("ready.json"));
    let keys: Vec<&str> = ["pid", "host", "port", "baseUrl", "startedAt"].to_vec();
    assert_eq!(doc.as_object().unwrap().len(), keys.len(), "{doc}");
    assert_eq!(doc["pid"], gw_proc.pid());
    assert_eq!(doc["host"], "127.0.0.1");
    assert_eq!(doc["baseUrl"], url);
    assert_eq!(format!("http://127.0.0.1:{}", doc["port"]), url);
    assert!(doc["startedAt"].as_str().unwrap().ends_with('Z'));
    let pid = std::fs::read_to_string(sb.queue().join("server.pid")).unwrap();
    assert_eq!(pid, format!("{}\n", gw_proc.pid()));
    for dir in ["requests", "responses", "logs"] {
        assert!(sb.queue().join(dir).is_dir(), "{dir}");
    }

    let _relay = sb.relay(&up.url(), &["sh", "-c"], &[]);
    let gw = Agent::at_url(url);
    let r = gw.request("GET", "/api/agents/me", &[], b"");
    assert_eq!(r.status, 200);
    let r = request(
        gw.addr,
        "GET",
        "/api/agents/me",
        &[("authorization", "Bearer nope")],
        b"",
    );
    assert_eq!(r.status, 401);
}

#[test]
fn an_unsupported_bridge_mode_exits_2_with_paperclips_message() {
    let sb = Sandbox::new();
    let out = run_command(paperclip_gateway(&sb, "carrier_pigeon"), WAIT);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(out
        .stderr
        .contains("Unsupported PAPERCLIP_API_BRIDGE_MODE: carrier_pigeon"));
}

/// Paperclip's host worker, reduced to its file protocol: list `requests/*.json`, read, write
/// `responses/<id>.json` through a temp name, then delete the request. It never claims.
fn paperclip_worker(
    sb: &Sandbox,
    answers: usize,
) -> std::thread::JoinHandle<Vec<serde_json::Value>> {
    let requests = sb.requests();
    let responses = sb.responses();
    background(move || {
        let mut seen = Vec::new();
        while seen.len() < answers {
            let names: Vec<String> = Sandbox::list(&requests)
                .into_iter()
                .filter(|n| n.ends_with(".json"))
                .collect();
            for name in names {
                let path = requests.join(&name);
                let Ok(bytes) = std::fs::read(&path) else {
                    continue;
                };
                let req: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
                let id = req["id"].as_str().unwrap().to_owned();
                let body = format!(
                    "{{\"echo\":{}}}",
                    serde_json::to_string(&req["path"]).unwrap()
                );
                let resp = serde_json::json!({
                    "id": id, "status": 202,
                    "headers": {"content-type": "application/json", "etag": "\"e1\""},
                    "body": body, "completedAt": "2025-01-01T00:00:00.000Z"
                });
                let tmp = responses.join(format!("{id}.json.tmp"));
                std::fs::write(&tmp, format!("{resp}\n")).unwrap();
                std::fs::rename(&tmp, responses.join(format!("{id}.json"))).unwrap();
                let _ = std::fs::remove_file(&path);
                seen.push(req);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        seen
    })
}

#[test]
fn gateway_is_served_by_a_worker_that_does_not_claim() {
    let sb = Sandbox::new();
    let (_gw_proc, gw) = sb.gateway(&[]);
    let worker = paperclip_worker(&sb, 2);
    let r = gw.request(
        "GET",
        "/api/issues/ISS-9?expand=1",
        &[("accept", "application/json")],
        b"",
    );
    assert_eq!(r.status, 202);
    assert_eq!(r.header("etag"), Some("\"e1\""));
    assert_eq!(r.json()["echo"], "/api/issues/ISS-9");
    let r = gw.request(
        "POST",
        "/api/issues/ISS-9/comments",
        &[("content-type", "application/json")],
        b"{\"body\":\"x\"}",
    );
    assert_eq!(r.status, 202);
    let seen = worker.join().unwrap();
    // The files are Paperclip's shape: its keys, path and query split, allowlisted headers.
    let get = &seen[0];
    assert_eq!(get["method"], "GET");
    assert_eq!(get["query"], "?expand=1");
    assert_eq!(get["body"], "");
    assert_eq!(get["headers"]["accept"], "application/json");
    assert!(
        get["headers"].get("authorization").is_none(),
        "the token is not in the file"
    );
    assert!(get.get("bodyEncoding").is_none());
    assert_eq!(seen[1]["body"], "{\"body\":\"x\"}");
    assert!(Sandbox::list(&sb.requests()).is_empty());
    assert!(Sandbox::list(&sb.responses()).is_empty());
}

#[test]
fn relay_serves_files_written_like_paperclips_gateway() {
    let up = MockUpstream::app();
    let sb = Sandbox::new();
    let _relay = sb.relay(&up.url(), &["sh", "-c"], &[]);
    let get_id = "3f2b8c1e-9a4d-4c1b-8e2f-0a1b2c3d4e5f";
    let upload_id = "9d8c7b6a-5f4e-4d3c-b2a1-0f9e8d7c6b5a";
    let binary: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&binary);
    // Exactly the bytes Paperclip's gateway writes: compact JSON in its key order, then "\n".
    let files = [
        (
            get_id,
            format!(
                r#"{{"id":"{get_id}","method":"GET","path":"/api/agents/me","query":"?a=1","headers":{{"accept":"application/json"}},"body":"","createdAt":"2025-01-01T00:00:00.000Z"}}"#
            ),
        ),
        (
            upload_id,
            format!(
                r#"{{"id":"{upload_id}","method":"POST","path":"/api/companies/c1/issues/i1/attachments","query":"","headers":{{"content-type":"multipart/form-data; boundary=zz"}},"body":"{b64}","bodyEncoding":"base64","createdAt":"2025-01-01T00:00:00.000Z"}}"#
            ),
        ),
    ];
    for (id, text) in &files {
        let tmp = sb.requests().join(format!("{id}.json.tmp"));
        std::fs::write(&tmp, format!("{text}\n")).unwrap();
        std::fs::rename(&tmp, sb.requests().join(format!("{id}.json"))).unwrap();
    }
    for (id, _) in &files {
        let path = sb.responses().join(format!("{id}.json"));
        wait_until("the relay's answer", || path.exists());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.starts_with(&format!("{{\"id\":\"{id}\",\"status\":")),
            "{text}"
        );
        assert!(text.ends_with("}\n") && text.matches('\n').count() == 1);
        let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(
            doc["completedAt"].is_string() && doc["headers"].is_object() && doc["body"].is_string()
        );
    }
    let got = read_json(&sb.responses().join(format!("{get_id}.json")));
    assert_eq!(got["status"], 200);
    assert_eq!(got["headers"]["etag"], "\"v1\"");
    let upload = read_json(&sb.responses().join(format!("{upload_id}.json")));
    assert_eq!(upload["status"], 201);
    assert_eq!(upload["bodyEncoding"], "base64");
    let echoed = base64::engine::general_purpose::STANDARD
        .decode(upload["body"].as_str().unwrap())
        .unwrap();
    assert!(echoed == binary, "binary body byte-exact both ways");
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().any(|r| r.target == "/api/agents/me?a=1"));
    assert!(seen.iter().any(|r| r.body == binary));
    wait_until("claims removed", || {
        Sandbox::list(&sb.requests()).is_empty()
    });
}
