//! Queue transport, hostile sandbox: request files planted by anything in the sandbox get the
//! same answers as over HTTP and never reach the upstream; the upstream credential never
//! appears in a command's argv or environment, nor in any file in the sandbox.

mod support;

use std::path::Path;

use serde_json::json;
use support::*;

/// A request file as a gateway would write it, with `overrides` merged in.
fn planted(id: &str, overrides: serde_json::Value) -> Vec<u8> {
    let mut f = json!({
        "id": id, "method": "GET", "path": "/api/agents/me", "query": "",
        "headers": {}, "body": "", "createdAt": "2025-01-01T00:00:00.000Z"
    });
    for (k, v) in overrides.as_object().unwrap() {
        f[k] = v.clone();
    }
    serde_json::to_vec(&f).unwrap()
}

fn plant(sb: &Sandbox, id: &str, bytes: &[u8]) {
    let tmp = sb.requests().join(format!("{id}.json.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, sb.requests().join(format!("{id}.json"))).unwrap();
}

#[test]
fn planted_request_files_get_the_http_denials_and_never_reach_the_upstream() {
    let up = MockUpstream::app();
    let sb = Sandbox::new();
    let _relay = sb.relay(&up.url(), &["sh", "-c"], &["--max-body-bytes", "1024"]);
    let json_ct = json!({"content-type": "application/json"});
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "traversal",
            planted("traversal", json!({"path": "/api/issues/../secrets"})),
            400,
            "invalid_path",
        ),
        (
            "dot-encoded",
            planted(
                "dot-encoded",
                json!({"path": "/api/issues/%2e%2e/comments"}),
            ),
            400,
            "invalid_path",
        ),
        (
            "slash-encoded",
            planted("slash-encoded", json!({"path": "/api/issues/a%2Fb"})),
            400,
            "invalid_path",
        ),
        (
            "absolute",
            planted(
                "absolute",
                json!({"path": "http://evil.example/api/agents/me"}),
            ),
            400,
            "invalid_path",
        ),
        (
            "query-space",
            planted("query-space", json!({"query": "?a b"})),
            400,
            "invalid_path",
        ),
        (
            "secrets",
            planted("secrets", json!({"path": "/api/companies/c1/secrets"})),
            403,
            "route_not_allowed",
        ),
        (
            "approve",
            planted(
                "approve",
                json!({"method": "POST", "path": "/api/approvals/a1/approve", "headers": json_ct, "body": "{}"}),
            ),
            403,
            "route_not_allowed",
        ),
        (
            "trace",
            planted("trace", json!({"method": "TRACE"})),
            405,
            "method_not_allowed",
        ),
        (
            "text-plain",
            planted(
                "text-plain",
                json!({"method": "POST", "path": "/api/issues/1/comments", "headers": {"content-type": "text/plain"}, "body": "x"}),
            ),
            415,
            "unsupported_media_type",
        ),
        (
            "get-body",
            planted("get-body", json!({"body": "x"})),
            400,
            "bad_request",
        ),
        (
            "too-large",
            planted(
                "too-large",
                json!({"method": "POST", "path": "/api/issues/1/comments", "headers": json_ct, "body": "a".repeat(2000)}),
            ),
            413,
            "body_too_large",
        ),
        (
            "bad-base64",
            planted(
                "bad-base64",
                json!({"method": "POST", "path": "/api/issues/1/comments", "headers": json_ct, "body": "%%%", "bodyEncoding": "base64"}),
            ),
            400,
            "bad_request",
        ),
        (
            "gzip",
            planted(
                "gzip",
                json!({"method": "POST", "path": "/api/issues/1/comments", "headers": json_ct, "body": "x", "bodyEncoding": "gzip"}),
            ),
            400,
            "bad_request",
        ),
        (
            "bad-header",
            planted("bad-header", json!({"headers": {"bad name": "x"}})),
            400,
            "bad_request",
        ),
        (
            "bridge-local",
            planted("bridge-local", json!({"path": "/__bridge/metrics"})),
            404,
            "not_found",
        ),
        (
            "id-mismatch",
            planted("someone-else", json!({})),
            400,
            "bad_request",
        ),
        ("not-json", b"{not json".to_vec(), 400, "bad_request"),
        ("envelope", vec![b' '; 80_000], 413, "body_too_large"),
    ];
    // Names the relay never touches.
    std::fs::write(sb.requests().join("bad name.json"), planted("x", json!({}))).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", sb.requests().join("link.json")).unwrap();
    for (id, bytes, _, _) in &cases {
        plant(&sb, id, bytes);
    }
    for (id, _, status, code) in &cases {
        let path = sb.responses().join(format!("{id}.json"));
        wait_until(&format!("the answer to {id}"), || path.exists());
        let answer = read_json(&path);
        assert_eq!(answer["status"], *status, "{id}: {answer}");
        assert_eq!(answer["headers"]["x-bridge-error"], *code, "{id}: {answer}");
        assert_eq!(answer["headers"]["content-type"], "application/json");
        let body: serde_json::Value =
            serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["code"], *code);
    }
    assert!(
        up.requests().is_empty(),
        "nothing reached the upstream: {:?}",
        up.requests()
    );
    // The put command publishes the answer, then removes the claim: wait for both (bounded).
    let expected = vec!["bad name.json".to_string(), "link.json".to_string()];
    wait_until("claims removed after answering", || {
        Sandbox::list(&sb.requests()) == expected
    });
    let left = Sandbox::list(&sb.requests());
    assert_eq!(
        left,
        vec!["bad name.json", "link.json"],
        "claims are removed once answered"
    );
    assert!(!sb.responses().join("link.json").exists());
}

#[test]
fn planted_credentials_and_framing_are_replaced_by_the_relays_own() {
    let up = MockUpstream::app();
    let sb = Sandbox::new();
    let _relay = sb.relay(&up.url(), &["sh", "-c"], &[]);
    let headers = json!({
        "authorization": "Bearer planted",
        "cookie": "a=b",
        "host": "evil.example",
        "x-paperclip-run-id": "fake-run",
        "content-length": "999",
        "content-type": "application/json",
        "x-forwarded-for": "10.0.0.1",
    });
    plant(
        &sb,
        "p1",
        &planted(
            "p1",
            json!({"method": "POST", "path": "/api/issues/1/comments", "headers": headers, "body": "{}"}),
        ),
    );
    let path = sb.responses().join("p1.json");
    wait_until("the answer", || path.exists());
    assert_eq!(read_json(&path)["status"], 201);
    let r = &up.requests()[0];
    assert_eq!(
        r.header("authorization").as_deref(),
        Some(format!("Bearer {UPSTREAM_TOKEN}").as_str())
    );
    assert_eq!(r.header("x-paperclip-run-id").as_deref(), Some(RUN_ID));
    assert_eq!(
        r.header("host"),
        Some(up.url().trim_start_matches("http://").to_owned())
    );
    assert_eq!(r.header("content-length").as_deref(), Some("2"));
    assert!(r.header("cookie").is_none());
    assert!(r.header("x-forwarded-for").is_none());
    assert_eq!(r.body, b"{}");
}

/// Every file under `dir`, recursively.
fn all_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            all_files(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn the_credential_never_enters_the_sandbox() {
    let up = MockUpstream::app();
    let sb = Sandbox::new();
    let (_gw_proc, gw) = sb.gateway(&[]);
    let prefix = sb.counting_prefix();
    let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
    let mut relay = sb.relay(&up.url(), &prefix, &[]);
    // The test has teeth: the secret is in the relay's environment and reaches the upstream.
    let environ = std::fs::read(format!("/proc/{}/environ", relay.pid())).unwrap();
    assert!(String::from_utf8_lossy(&environ).contains(UPSTREAM_TOKEN));

    assert_eq!(gw.request("GET", "/api/agents/me", &[], b"").status, 200);
    let r = gw.request(
        "POST",
        "/api/issues/1/comments",
        &[("content-type", "application/json")],
        b"{\"body\":\"hi\"}",
    );
    assert_eq!(r.status, 201);
    assert!(up.requests()[0]
        .header("authorization")
        .unwrap()
        .contains(UPSTREAM_TOKEN));
    relay.signal("TERM");
    relay.wait_event("exit");

    let commands = std::fs::read_to_string(sb.path("commands.env")).unwrap();
    assert!(commands.contains("ARGV"), "the wrapper ran");
    assert!(
        !commands.contains(UPSTREAM_TOKEN),
        "secret in a command's argv or environment"
    );
    assert!(
        !commands.lines().any(|l| l.starts_with("CALLBACK_BRIDGE_")),
        "CALLBACK_BRIDGE_* variables reach the commands"
    );
    let mut files = Vec::new();
    all_files(&sb.queue(), &mut files);
    assert!(files.iter().any(|f| f.ends_with("relay.json")));
    for f in files {
        let text = std::fs::read(&f).unwrap();
        assert!(
            !String::from_utf8_lossy(&text).contains(UPSTREAM_TOKEN),
            "secret written to {}",
            f.display()
        );
    }
    let logs = relay.stderr_text();
    assert!(!logs.contains(UPSTREAM_TOKEN), "secret in the relay's log");
}

#[test]
fn paperclips_key_names_and_named_variables_never_reach_a_command() {
    let up = MockUpstream::app();
    let sb = Sandbox::new();
    let (_gw_proc, gw) = sb.gateway(&[]);
    let prefix = sb.counting_prefix();
    let prefix: Vec<&str> = prefix.iter().map(String::as_str).collect();
    let mut relay = sb.relay_env(
        &up.url(),
        &prefix,
        &["--scrub-env", "MY_DEPLOY_SECRET"],
        &[
            ("PAPERCLIP_API_KEY", "pcp-key-in-the-adapter-env"),
            ("PAPERCLIP_API_KEY_FILE", "/run/secrets/pcp-key-file"),
            ("MY_DEPLOY_SECRET", "deploy-secret-value"),
            ("MY_HARMLESS_SETTING", "kept"),
        ],
    );
    assert_eq!(gw.request("GET", "/api/agents/me", &[], b"").status, 200);
    relay.signal("TERM");
    relay.wait_event("exit");
    let commands = std::fs::read_to_string(sb.path("commands.env")).unwrap();
    assert!(
        commands.contains("MY_HARMLESS_SETTING=kept"),
        "the test has teeth: the relay's environment is inherited otherwise"
    );
    for secret in [
        "pcp-key-in-the-adapter-env",
        "/run/secrets/pcp-key-file",
        "deploy-secret-value",
    ] {
        assert!(!commands.contains(secret), "{secret} reached a command");
    }
}
