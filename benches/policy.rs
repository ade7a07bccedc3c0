//! Microbenchmarks for the request policy over the built-in 68-rule Paperclip table and for the
//! bridge-token check. Plain `std` timing (no harness dependency): each case runs a warm-up, then
//! several timed batches; the median batch is reported as ns per call.
//!
//! `cargo bench --bench policy`

use std::hint::black_box;
use std::time::Instant;

use callback_bridge::auth::BridgeToken;
use callback_bridge::policy::{Decision, Policy, RequestHead, TokenCheck};
use http::{HeaderMap, HeaderValue, Method};

const BATCH: u32 = 200_000;
const BATCHES: usize = 9;

fn bench(name: &str, mut f: impl FnMut()) -> f64 {
    for _ in 0..BATCH / 10 {
        f();
    }
    let mut per_call: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..BATCH {
                f();
            }
            start.elapsed().as_nanos() as f64 / f64::from(BATCH)
        })
        .collect();
    per_call.sort_by(f64::total_cmp);
    let median = per_call[BATCHES / 2];
    println!(
        "{name:<58} {median:>8.1} ns/call  (min {:.1}, max {:.1})",
        per_call[0],
        per_call[BATCHES - 1]
    );
    median
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

fn main() {
    let policy = Policy::default();
    let token = BridgeToken::new("bench-bridge-token-0123456789abcdefghijklmnop".into());
    let auth = "Bearer bench-bridge-token-0123456789abcdefghijklmnop";
    println!(
        "policy table: {} rules, {} method+path pairs",
        policy.routes.rule_count(),
        policy.routes.pair_count()
    );

    let get = headers(&[("authorization", auth), ("accept", "application/json")]);
    let post = headers(&[
        ("authorization", auth),
        ("content-type", "application/json; charset=utf-8"),
        ("content-length", "512"),
        ("idempotency-key", "k-1"),
        ("accept", "*/*"),
    ]);
    let cases: [(&str, Method, &str, &HeaderMap); 5] = [
        (
            "evaluate GET /api/agents/me (allow)",
            Method::GET,
            "/api/agents/me",
            &get,
        ),
        (
            "evaluate GET /api/issues/{id}/comments?limit=20 (allow)",
            Method::GET,
            "/api/issues/ISS-123/comments?limit=20",
            &get,
        ),
        (
            "evaluate POST /api/issues/{id}/interactions/{i}/respond",
            Method::POST,
            "/api/issues/ISS-1/interactions/int-9/respond",
            &post,
        ),
        (
            "evaluate GET /api/companies/{id}/secrets (deny 403)",
            Method::GET,
            "/api/companies/c1/secrets",
            &get,
        ),
        (
            "evaluate GET /api/%2e%2e/x (deny 400)",
            Method::GET,
            "/api/%2e%2e/x",
            &get,
        ),
    ];
    let mut worst = 0.0f64;
    for (name, method, target, headers) in &cases {
        let head = RequestHead {
            method,
            target,
            headers,
        };
        let ns = bench(name, || {
            let d = policy.evaluate(black_box(&head), TokenCheck::Require(&token));
            black_box(matches!(d, Decision::Allow(_)));
        });
        worst = worst.max(ns);
    }
    let head = RequestHead {
        method: &Method::POST,
        target: "/api/issues/ISS-1/interactions/int-9/respond",
        headers: &post,
    };
    bench(
        "evaluate POST (token check skipped, as the relay does)",
        || {
            black_box(policy.evaluate(black_box(&head), TokenCheck::Skip));
        },
    );
    bench("token check: valid bearer", || {
        black_box(token.verify_authorization(black_box(auth.as_bytes())));
    });
    bench("token check: wrong bearer of the same length", || {
        black_box(token.verify_authorization(black_box(
            b"Bearer bench-bridge-token-0123456789abcdefghijklmnoX",
        )));
    });
    println!("worst evaluate case: {worst:.1} ns (target: <= 1000 ns)");
}
