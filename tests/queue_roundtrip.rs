//! Queue transport, the happy paths: agent → gateway → files → relay (`-- sh -c`) → upstream and
//! back, checked on both sides; local denials; the gateway surviving bad response files; the
//! sandbox helper.

mod support;

use std::path::Path;

use support::*;

#[test]
fn round_trip_injects_the_credential_and_filters_headers_both_ways() {
    let up = MockUpstream::app();
    let sb = Sandbox::new();
    let (_gw_proc, gw) = sb.gateway(&[]);
    let _relay = sb.relay(&up.url(), &["sh", "-c"], &[]);

    let resp = gw.request(
        "GET",
        "/api/agents/me?view=full&x=%2F",
        &[
            ("accept", "application/json"),
            ("cookie", "a=b"),
            ("x-api-key", "caller-key"),
            ("x-forwarded-for", "1.2.3.4"),
            ("idempotency-key", "k-1"),
        ],
        b"",
    );
    assert_eq!(
        resp.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&resp.body)
    );
    assert_eq!(resp.json()["ok"], true);
    assert_eq!(resp.header("etag"), Some("\"v1\""));
    assert_eq!(resp.header("content-type"), Some("application/json"));
    assert!(resp.header("set-cookie").is_none());
    assert!(resp.header("x-upstream-private").is_none());
    assert!(resp.header("x-request-id").is_some());

    let seen = up.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(r.method, "GET");
    assert_eq!(r.target, "/api/agents/me?view=full&x=%2F");
    assert_eq!(
        r.header("authorization").as_deref(),
        Some(format!("Bearer {UPSTREAM_TOKEN}").as_str())
    );
    assert_eq!(r.header("x-paperclip-run-id").as_deref(), Some(RUN_ID));
    assert_eq!(r.header("accept").as_deref(), Some("application/json"));
    assert_eq!(r.header("idempotency-key").as_deref(), Some("k-1"));
    assert!(r.header("cookie").is_none());
    assert!(r.header("x-api-key").is_none());
    assert!(r.header("x-forwarded-for").is_none());

    // A mutation with a JSON body arrives byte for byte.
    let body = br#"{"body":"done \u00e9 \"quoted\" \n"}"#;
    let resp = gw.request(
        "POST",
        "/api/issues/ISS-1/comments",
        &[("content-type", "application/json; charset=utf-8")],
        body,
    );
    assert_eq!(resp.status, 201);
    let posted = up.requests().pop().unwrap();
    assert_eq!(posted.method, "POST");
    assert_eq!(posted.body, body);
    assert_eq!(
        posted.header("content-type").as_deref(),
        Some("application/json; charset=utf-8")
    );
    assert_eq!(
        posted.header("content-length").as_deref(),
        Some(body.len().to_string().as_str())
    );

    // Nothing is left behind in the queue.
    wait_until("an empty queue", || {
        Sandbox::list(&sb.requests()).is_empty() && Sandbox::list(&sb.responses()).is_empty()
    });
}

#[test]
fn binary_multipart_upload_and_download_are_byte_exact() {
    let up = MockUpstream::app();
    let sb = Sandbox::new();
    let (_gw_proc, gw) = sb.gateway(&[]);
    let _relay = sb.relay(&up.url(), &["sh", "-c"], &[]);

    let file = pattern(300_000, 7);
    let mut body = b"--XyZ\r\ncontent-disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\ncontent-type: application/octet-stream\r\n\r\n".to_vec();
    body.extend_from_slice(&file);
    body.extend_from_slice(b"\r\n--XyZ--\r\n");
    let resp = gw.request(
        "POST",
        "/api/companies/c1/issues/i1/attachments",
        &[("content-type", "multipart/form-data; boundary=XyZ")],
        &body,
    );
    assert_eq!(
        resp.status,
        201,
        "{:?}",
        String::from_utf8_lossy(&resp.body)
    );
    assert_eq!(
        up.requests().last().unwrap().body,
        body,
        "upload reached the upstream intact"
    );
    assert_eq!(resp.body, body, "the echoed bytes came back intact");

    let download = pattern(1_000_000, 99);
    up.set_download(download.clone());
    let resp = gw.request("GET", "/api/attachments/att-1/content", &[], b"");
    assert_eq!(resp.status, 200);
    assert_eq!(
        resp.header("content-type"),
        Some("application/octet-stream")
    );
    assert!(resp.body == download, "download is byte-exact");
}

#[test]
fn denials_are_answered_by_the_gateway_without_writing_a_file() {
    let sb = Sandbox::new();
    // No relay: a request that got as far as the queue would wait for the response timeout.
    let (_gw_proc, gw) = sb.gateway(&["--max-body-bytes", "1000"]);
    let json: &[(&str, &str)] = &[("content-type", "application/json")];
    type Case<'a> = (
        &'a str,
        &'a str,
        &'a [(&'a str, &'a str)],
        &'a [u8],
        u16,
        &'a str,
    );
    let cases: &[Case] = &[
        (
            "GET",
            "/api/companies/c1/secrets",
            &[],
            b"",
            403,
            "route_not_allowed",
        ),
        ("GET", "/api/issues/%2e%2e/x", &[], b"", 400, "invalid_path"),
        (
            "TRACE",
            "/api/agents/me",
            &[],
            b"",
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            "/api/issues/1/comments",
            &[("content-type", "text/plain")],
            b"x",
            415,
            "unsupported_media_type",
        ),
        (
            "POST",
            "/api/issues/1/comments",
            json,
            &[b'a'; 2000],
            413,
            "body_too_large",
        ),
        ("GET", "/api/agents/me", &[], b"x", 400, "bad_request"),
    ];
    for (method, target, headers, body, status, code) in cases {
        let resp = gw.request(method, target, headers, body);
        assert_eq!(
            (resp.status, resp.code()),
            (*status, *code),
            "{method} {target}"
        );
        assert_eq!(resp.json()["code"], *code);
    }
    let resp = request(
        gw.addr,
        "GET",
        "/api/agents/me",
        &[("authorization", "Bearer wrong")],
        b"",
    );
    assert_eq!((resp.status, resp.code()), (401, "invalid_token"));
    let health = request(gw.addr, "GET", "/__bridge/health", &[], b"");
    assert_eq!(health.status, 200);
    assert!(
        Sandbox::list(&sb.requests()).is_empty(),
        "a denied request was queued"
    );
}

/// Plays the relay by hand: waits for the gateway's request file, claims it, and answers with
/// `response` (raw bytes), like a relay gone wrong would.
fn answer_next_request(sb: &Sandbox, response: impl FnOnce(&str) -> Vec<u8>) {
    let requests = sb.requests();
    let mut id = String::new();
    wait_until("a request file", || {
        match Sandbox::list(&requests)
            .into_iter()
            .find_map(|n| n.strip_suffix(".json").map(str::to_owned))
        {
            Some(found) => {
                id = found;
                true
            }
            None => false,
        }
    });
    let claimed = requests.join(format!("{id}.json.claimed"));
    std::fs::rename(requests.join(format!("{id}.json")), &claimed).unwrap();
    let tmp = sb.responses().join(format!("{id}.json.tmp"));
    std::fs::write(&tmp, response(&id)).unwrap();
    std::fs::rename(&tmp, sb.responses().join(format!("{id}.json"))).unwrap();
}

fn response_json(id: &str, status: u16, headers: serde_json::Value, body: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "id": id, "status": status, "headers": headers, "body": body, "completedAt": "x"
    }))
    .unwrap()
}

#[test]
fn gateway_survives_malformed_and_oversized_response_files() {
    let sb = Sandbox::new();
    let (_gw_proc, gw) = sb.gateway(&["--max-body-bytes", "1000"]);
    let ask = |method: &'static str, target: &'static str| {
        let gw = gw.clone();
        background(move || {
            let (headers, body): (&[(&str, &str)], &[u8]) = if method == "POST" {
                (&[("content-type", "application/json")], b"{}")
            } else {
                (&[], b"")
            };
            gw.request(method, target, headers, body)
        })
    };

    // Not JSON: 502 for a safe request, 409 for a mutation.
    let get = ask("GET", "/api/agents/me");
    answer_next_request(&sb, |_| b"{not json".to_vec());
    let r = get.join().unwrap();
    assert_eq!((r.status, r.code()), (502, "upstream_error"));
    let post = ask("POST", "/api/issues/1/comments");
    answer_next_request(&sb, |_| b"\x00\xff garbage".to_vec());
    let r = post.join().unwrap();
    assert_eq!((r.status, r.code()), (409, "outcome_indeterminate"));
    assert_eq!(
        r.header("x-paperclip-bridge-outcome"),
        Some("indeterminate")
    );
    assert_eq!(r.json()["retryable"], false);

    // Larger than the envelope (6 × 1000 + 64 KiB).
    let get = ask("GET", "/api/agents/me");
    answer_next_request(&sb, |id| {
        response_json(id, 200, serde_json::json!({}), &"x".repeat(80_000))
    });
    let r = get.join().unwrap();
    assert_eq!((r.status, r.code()), (502, "response_too_large"));

    // A body over the limit inside a small envelope; bad base64; a 1xx status.
    for bad in [
        serde_json::json!({"status": 200, "headers": {}, "body": "y".repeat(1001)}),
        serde_json::json!({"status": 200, "headers": {}, "body": "%%%", "bodyEncoding": "base64"}),
        serde_json::json!({"status": 101, "headers": {}, "body": ""}),
    ] {
        let get = ask("GET", "/api/agents/me");
        answer_next_request(&sb, |_| serde_json::to_vec(&bad).unwrap());
        let r = get.join().unwrap();
        assert_eq!(r.status, 502, "{bad}");
    }

    // An indeterminate answer from the relay becomes 409; unlisted headers are dropped.
    let post = ask("POST", "/api/issues/1/comments");
    answer_next_request(&sb, |id| {
        response_json(
            id,
            504,
            serde_json::json!({
                "content-type": "application/json",
                "x-paperclip-bridge-outcome": "indeterminate",
                "set-cookie": "evil=1"
            }),
            r#"{"error":"maybe","outcome":"indeterminate","retryable":false}"#,
        )
    });
    let r = post.join().unwrap();
    assert_eq!(r.status, 409);
    assert_eq!(
        r.header("x-paperclip-bridge-outcome"),
        Some("indeterminate")
    );
    assert!(r.header("set-cookie").is_none());

    // And it still serves normally.
    let get = ask("GET", "/api/agents/me");
    answer_next_request(&sb, |id| {
        response_json(
            id,
            200,
            serde_json::json!({"content-type": "text/plain"}),
            "fine",
        )
    });
    let r = get.join().unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"fine"[..]));
    wait_until("consumed responses", || {
        Sandbox::list(&sb.responses()).is_empty()
    });
}

#[test]
fn sandbox_helper_carries_the_same_round_trip() {
    let up = MockUpstream::app();
    let sb = Sandbox::new();
    let (_gw_proc, gw) = sb.gateway(&[]);
    let _relay = sb.relay(
        &up.url(),
        &["sh", "-c"],
        &["--sandbox-helper", &bridge_binary_str()],
    );

    let resp = gw.request("GET", "/api/agents/me", &[], b"");
    assert_eq!(resp.status, 200);
    let file = pattern(200_000, 3);
    let resp = gw.request(
        "POST",
        "/api/companies/c/issues/i/attachments",
        &[("content-type", "multipart/form-data; boundary=b")],
        &file,
    );
    assert_eq!(resp.status, 201);
    assert!(resp.body == file);
    assert!(up.requests()[1].body == file);
    // A planted file gets the same policy answer through the helper.
    std::fs::write(
        sb.requests().join("planted.json"),
        br#"{"id":"planted","method":"GET","path":"/api/companies/c/secrets","query":"","headers":{},"body":""}"#,
    )
    .unwrap();
    let out = sb.responses().join("planted.json");
    wait_until("the planted file's answer", || out.exists());
    let answer = read_json(&out);
    assert_eq!(answer["status"], 403);
    assert_eq!(up.requests().len(), 2);
}

#[test]
fn relay_prints_an_exit_line_on_sigterm() {
    let up = MockUpstream::app();
    let sb = Sandbox::new();
    let (mut gw_proc, gw) = sb.gateway(&[]);
    let mut relay = sb.relay(&up.url(), &["sh", "-c"], &[]);
    assert_eq!(gw.request("GET", "/api/agents/me", &[], b"").status, 200);
    relay.signal("TERM");
    let exit = relay.wait_event("exit");
    assert_eq!(exit["reason"], "signal");
    assert_eq!(exit["forwarded"], 1);
    assert!(relay.wait_exit().success());
    gw_proc.signal("TERM");
    let exit = gw_proc.wait_event("exit");
    assert_eq!(exit["requests"], 1);
    assert!(gw_proc.wait_exit().success());
    // relay.json stays: it records the protocol, not liveness.
    assert!(Path::new(&sb.queue().join("relay.json")).exists());
}

/// The sandbox side with nothing but busybox (`ash` and its applets), as in an Alpine image.
/// Skipped, with a note, where busybox is not installed.
#[test]
fn round_trip_with_only_busybox_in_the_sandbox() {
    let Some(busybox) = ["/usr/bin/busybox", "/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        eprintln!("skipped: busybox is not installed");
        return;
    };
    let up = MockUpstream::app();
    let sb = Sandbox::new();
    let bin = sb.path("bb");
    std::fs::create_dir(&bin).unwrap();
    for tool in ["sh", "ls", "mv", "rm", "cat", "sleep", "base64", "mkdir"] {
        std::os::unix::fs::symlink(busybox, bin.join(tool)).unwrap();
    }
    let prefix = sb.path("bb-exec");
    std::fs::write(
        &prefix,
        format!(
            "#!/bin/sh\n[ \"$1\" = -c ] && shift\nexec env -i PATH='{b}' '{b}/sh' -c \"$1\"\n",
            b = bin.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&prefix, std::fs::Permissions::from_mode(0o755)).unwrap();
    let prefix = prefix.display().to_string();

    let (_gw_proc, gw) = sb.gateway(&[]);
    let _relay = sb.relay(&up.url(), &[&prefix, "-c"], &[]);
    assert_eq!(gw.request("GET", "/api/agents/me", &[], b"").status, 200);
    let file = pattern(150_000, 5);
    let resp = gw.request(
        "POST",
        "/api/companies/c/issues/i/attachments",
        &[("content-type", "multipart/form-data; boundary=b")],
        &file,
    );
    assert_eq!(resp.status, 201);
    assert!(resp.body == file && up.requests()[1].body == file);
}
