//! The built-in Paperclip allowlist (docs/reference.md §4.3): every allowed method + template pair is
//! forwarded unchanged with the upstream credential and run id injected; the denied examples get
//! 403 `route_not_allowed` and never reach the upstream.

mod support;

use support::*;

/// The 77 method + template pairs of docs/reference.md §4.3, with sample values substituted for `{x}`.
/// Each entry: (method, concrete path).
const ALLOWED: &[(&str, &str)] = &[
    ("POST", "/runtime-tools/github/credentials"),
    ("GET", "/api/agents/me"),
    ("GET", "/api/agents/me/inbox-lite"),
    ("GET", "/api/agents/me/inbox/mine"),
    ("GET", "/api/agents/agt_5f2c9a"),
    ("GET", "/api/agents/agt_5f2c9a/skills"),
    ("POST", "/api/agents/agt_5f2c9a/skills/sync"),
    ("PATCH", "/api/agents/agt_5f2c9a/instructions-path"),
    ("POST", "/api/companies/cmp-0042/agent-commentary"),
    ("GET", "/api/openapi.json"),
    ("GET", "/api/companies/cmp-0042"),
    ("GET", "/api/companies/cmp-0042/dashboard"),
    ("GET", "/api/companies/cmp-0042/agents"),
    ("GET", "/api/companies/cmp-0042/issues"),
    ("GET", "/api/companies/cmp-0042/projects"),
    ("GET", "/api/companies/cmp-0042/goals"),
    ("GET", "/api/companies/cmp-0042/org"),
    ("GET", "/api/companies/cmp-0042/approvals"),
    ("GET", "/api/companies/cmp-0042/routines"),
    ("GET", "/api/companies/cmp-0042/skills"),
    ("GET", "/api/projects/prj-77"),
    ("GET", "/api/goals/goal-3"),
    ("GET", "/api/companies/cmp-0042/email/inboxes"),
    ("GET", "/api/companies/cmp-0042/email/tasks/task-19"),
    ("GET", "/api/companies/cmp-0042/email/deliveries/dlv-8"),
    ("POST", "/api/companies/cmp-0042/email/send"),
    ("GET", "/api/issues/ISS-1234"),
    ("GET", "/api/issues/ISS-1234/heartbeat-context"),
    ("GET", "/api/issues/ISS-1234/comments"),
    ("GET", "/api/issues/ISS-1234/comments/cmt-55"),
    ("POST", "/api/issues/ISS-1234/comments"),
    ("GET", "/api/issues/ISS-1234/documents"),
    ("GET", "/api/issues/ISS-1234/documents/plan"),
    ("GET", "/api/issues/ISS-1234/documents/plan/revisions"),
    ("PUT", "/api/issues/ISS-1234/documents/plan"),
    ("POST", "/api/issues/ISS-1234/checkout"),
    ("POST", "/api/issues/ISS-1234/release"),
    ("PATCH", "/api/issues/ISS-1234"),
    ("GET", "/api/issues/ISS-1234/approvals"),
    ("GET", "/api/issues/ISS-1234/attachments"),
    (
        "POST",
        "/api/companies/cmp-0042/issues/ISS-1234/attachments",
    ),
    ("GET", "/api/attachments/att-9/content"),
    ("GET", "/api/issues/ISS-1234/work-products"),
    ("POST", "/api/issues/ISS-1234/work-products"),
    ("PATCH", "/api/work-products/wp-6"),
    ("GET", "/api/issues/ISS-1234/interactions"),
    ("GET", "/api/issues/ISS-1234/interactions/int-2"),
    ("POST", "/api/issues/ISS-1234/interactions"),
    ("POST", "/api/issues/ISS-1234/interactions/int-2/accept"),
    ("POST", "/api/issues/ISS-1234/interactions/int-2/reject"),
    ("POST", "/api/issues/ISS-1234/interactions/int-2/respond"),
    ("POST", "/api/issues/ISS-1234/interactions/int-2/verdicts"),
    ("POST", "/api/issues/ISS-1234/interactions/int-2/withdraw"),
    ("POST", "/api/companies/cmp-0042/issues"),
    ("GET", "/llms/agent-configuration.txt"),
    ("GET", "/llms/agent-configuration/claude-local.txt"),
    ("GET", "/llms/agent-icons.txt"),
    ("GET", "/api/companies/cmp-0042/agent-configurations"),
    ("POST", "/api/companies/cmp-0042/agent-hires"),
    ("POST", "/api/issues/ISS-1234/approvals"),
    ("GET", "/api/approvals/apr-31"),
    ("GET", "/api/approvals/apr-31/issues"),
    ("GET", "/api/approvals/apr-31/comments"),
    ("POST", "/api/approvals/apr-31/comments"),
    ("POST", "/api/companies/cmp-0042/approvals"),
    ("GET", "/api/execution-workspaces/ews-4"),
    (
        "POST",
        "/api/execution-workspaces/ews-4/runtime-services/start",
    ),
    (
        "POST",
        "/api/execution-workspaces/ews-4/runtime-services/stop",
    ),
    (
        "POST",
        "/api/execution-workspaces/ews-4/runtime-services/restart",
    ),
    ("GET", "/api/routines/rtn-12"),
    ("GET", "/api/routines/rtn-12/runs"),
    ("POST", "/api/companies/cmp-0042/routines"),
    ("PATCH", "/api/routines/rtn-12"),
    ("POST", "/api/routines/rtn-12/run"),
    ("POST", "/api/routines/rtn-12/triggers"),
    ("PATCH", "/api/routine-triggers/trg-5"),
    ("DELETE", "/api/routine-triggers/trg-5"),
];

/// The one route that accepts multipart bodies.
const UPLOAD: &str = "/api/companies/cmp-0042/issues/ISS-1234/attachments";

/// Denied examples named in docs/reference.md §4.3, plus near misses of allowed templates.
const DENIED: &[(&str, &str)] = &[
    ("POST", "/api/companies/cmp-0042/agents"),
    ("GET", "/api/secrets"),
    ("GET", "/api/companies/cmp-0042/secrets"),
    ("POST", "/api/companies/cmp-0042/secrets"),
    ("GET", "/api/secrets/sec-1"),
    ("PATCH", "/api/secrets/sec-1"),
    ("DELETE", "/api/secrets/sec-1"),
    ("POST", "/api/approvals/apr-31/approve"),
    ("POST", "/api/approvals/apr-31/reject"),
    ("POST", "/api/agents/agt_5f2c9a/pause"),
    ("POST", "/api/agents/agt_5f2c9a/terminate"),
    ("GET", "/api/agents/agt_5f2c9a/keys"),
    ("POST", "/api/agents/agt_5f2c9a/keys"),
    ("GET", "/api/companies/cmp-0042/exports"),
    ("POST", "/api/companies/cmp-0042/exports"),
    ("POST", "/api/companies/cmp-0042/imports"),
    ("POST", "/api/companies/cmp-0042/archive"),
    ("POST", "/api/companies/cmp-0042/logo"),
    ("DELETE", "/api/issues/ISS-1234/documents/plan"),
    ("DELETE", "/api/approvals/apr-31"),
    ("DELETE", "/api/work-products/wp-6"),
    // Method not allowed on an otherwise allowed path.
    ("DELETE", "/api/issues/ISS-1234"),
    ("PUT", "/api/agents/me"),
    ("POST", "/api/agents/me"),
    ("GET", "/api/companies/cmp-0042/email/send"),
    ("DELETE", "/api/routines/rtn-12"),
    // Whole-path matching: no prefixes, no extra or missing segments, no case folding.
    ("GET", "/api/agents"),
    ("GET", "/api/agents/me/extra"),
    ("GET", "/api/agents/me/"),
    ("GET", "/API/agents/me"),
    ("GET", "/api/Agents/me"),
    ("GET", "/api/openapi.JSON"),
    ("GET", "/api"),
    ("GET", "/"),
    ("GET", "/api/issues/ISS-1234/comments/cmt-55/extra"),
    ("GET", "/api/companies/cmp-0042/unknown"),
    // A literal segment matches only identical raw bytes.
    ("GET", "/api/%61gents/me"),
    ("GET", "/api/agent%73/me"),
    ("GET", "/api/openapi%2Ejson"),
    // `{name}.txt` needs a non-empty name and the literal suffix.
    ("GET", "/llms/agent-configuration/.txt"),
    ("GET", "/llms/agent-configuration/claude-local.md"),
    ("GET", "/llms/agent-icons.json"),
    ("GET", "/runtime-tools/github/credentials"),
];

fn sample_body(method: &str, path: &str) -> Option<(String, Vec<u8>)> {
    match method {
        "POST" | "PUT" | "PATCH" if path == UPLOAD => Some(multipart_file(
            "notes.txt",
            b"attachment bytes \x00\x01\x02 for the upload route",
        )),
        "POST" | "PUT" | "PATCH" => Some((
            "application/json".to_string(),
            format!("{{\"probe\":\"{method} {path}\",\"n\":[1,2,3]}}").into_bytes(),
        )),
        _ => None,
    }
}

#[test]
fn forwards_every_allowed_paperclip_route_unchanged() {
    assert_eq!(
        ALLOWED.len(),
        77,
        "docs/reference.md §4.3 lists 77 method + template pairs"
    );
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let mut failures = Vec::new();

    for (i, (method, path)) in ALLOWED.iter().enumerate() {
        // A query on every request: it must be forwarded byte for byte, encoded bytes included.
        let target = format!("{path}?probe={i}&q=a%2Fb%2e%2E&empty=&x=%7Bz%7D");
        let mut req = Req::new(method, &target)
            .header("accept", "application/json")
            .bearer(BRIDGE_TOKEN);
        let body = sample_body(method, path);
        if let Some((ct, bytes)) = &body {
            req = req.body(ct, bytes.clone());
        }
        let before = upstream.request_count();
        let resp = bridge.send(req);
        let received = upstream.requests();
        let got = received.get(before);

        let mut problems = Vec::new();
        if resp.status != 200 || resp.body != b"{\"ok\":true}" {
            problems.push(format!(
                "agent got {} {:?}, expected the upstream's 200 {{\"ok\":true}}",
                resp.status,
                resp.text()
            ));
        }
        if received.len() != before + 1 {
            problems.push(format!(
                "upstream received {} requests, expected exactly 1",
                received.len() - before
            ));
        }
        if let Some(got) = got {
            if got.method != *method {
                problems.push(format!(
                    "upstream method {} (expected {method})",
                    got.method
                ));
            }
            if got.target != target {
                problems.push(format!(
                    "upstream target {:?} (expected {target:?})",
                    got.target
                ));
            }
            let auth = got.header_all("authorization");
            if auth != [format!("Bearer {UPSTREAM_TOKEN}")] {
                problems.push(format!("upstream authorization {auth:?}"));
            }
            if got.header_all("x-paperclip-run-id") != [RUN_ID] {
                problems.push(format!(
                    "upstream x-paperclip-run-id {:?}",
                    got.header_all("x-paperclip-run-id")
                ));
            }
            if got.header_all("host") != [upstream.authority()] {
                problems.push(format!("upstream host {:?}", got.header_all("host")));
            }
            match &body {
                Some((ct, bytes)) => {
                    if got.body != *bytes {
                        problems.push("upstream body differs from the agent's".to_string());
                    }
                    if got.header("content-type").as_deref() != Some(ct.as_str()) {
                        problems.push(format!(
                            "upstream content-type {:?} (expected {ct:?})",
                            got.header("content-type")
                        ));
                    }
                }
                None => {
                    if !got.body.is_empty() {
                        problems.push("upstream got a body for a bodiless request".to_string());
                    }
                }
            }
        }
        if !problems.is_empty() {
            failures.push(format!("{method} {path}: {}", problems.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 77 allowed routes misbehaved:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn head_is_allowed_wherever_get_is() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let mut failures = Vec::new();
    for (_, path) in ALLOWED.iter().filter(|(m, _)| *m == "GET") {
        let before = upstream.request_count();
        let resp = bridge.send(Req::new("HEAD", path));
        let received = upstream.requests();
        if resp.status != 200 {
            failures.push(format!("HEAD {path}: agent got {}", resp.status));
        }
        match received.get(before) {
            Some(r) if r.method == "HEAD" && r.target == *path => {}
            other => failures.push(format!(
                "HEAD {path}: upstream got {:?}",
                other.map(|r| (&r.method, &r.target))
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn denies_routes_outside_the_allowlist_with_403() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let mut failures = Vec::new();
    for (method, path) in DENIED {
        let mut req = Req::new(method, path);
        if matches!(*method, "POST" | "PUT" | "PATCH") {
            req = req.json("{\"name\":\"x\"}");
        }
        let resp = bridge.send(req);
        let ok = resp.status == 403
            && resp.header("x-bridge-error") == Some("route_not_allowed")
            && serde_json::from_slice::<serde_json::Value>(&resp.body)
                .map(|b| b["code"] == "route_not_allowed")
                .unwrap_or(false);
        if !ok {
            failures.push(format!(
                "{method} {path}: expected 403 route_not_allowed, got {} {:?} (x-bridge-error {:?})",
                resp.status,
                resp.text(),
                resp.header("x-bridge-error")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} denied examples misbehaved:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(
        upstream.request_count(),
        0,
        "denied requests reached the upstream: {:?}",
        upstream
            .requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.target))
            .collect::<Vec<_>>()
    );
}

#[test]
fn route_denial_message_names_method_and_path() {
    let upstream = MockUpstream::start();
    let bridge = Bridge::for_upstream(&upstream, &[]);
    let resp = bridge.send(Req::new("GET", "/api/secrets?name=x"));
    resp.assert_bridge_error(403, "route_not_allowed");
    let message = resp.json()["error"].as_str().unwrap().to_string();
    assert!(
        message.contains("Route not allowed: GET /api/secrets"),
        "docs/reference.md §4 step 5 message `Route not allowed: <METHOD> <path>`, got {message:?}"
    );
    assert_eq!(upstream.request_count(), 0);
}
