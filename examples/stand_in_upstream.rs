//! A stand-in for Paperclip, for trying the bridge on a machine without one (README "Quick
//! tour"). It answers Paperclip-like JSON on `/api/...` and adds a `received` object that echoes
//! what arrived — method, path, the names of the headers, which credential header came and its
//! scheme, the run id, the body length — so the caller sees what the bridge injected and dropped.
//! The credential itself is never echoed: only its first four characters and its length.
//!
//! Usage: `cargo run --example stand_in_upstream [-- 127.0.0.1:3100]` (the default is the
//! bridge's default upstream). Prints `{"event":"ready","url":…}` on stdout when bound and one
//! JSON line per request on stderr. Loopback only; not for production use.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// The bridge's built-in upstream (`config/bridge.toml`), so the bridge needs no flag.
const DEFAULT_ADDR: &str = "127.0.0.1:3100";

/// Headers that carry a credential. The bridge should let exactly one through: the one it
/// injects (`authorization` by default), never the agent's own.
const CREDENTIAL_HEADERS: [&str; 4] = [
    "authorization",
    "proxy-authorization",
    "x-api-key",
    "cookie",
];

/// How many characters of a credential are shown: enough to tell `pcp_…` (the real key) from
/// a bridge token, too few to be useful to anyone reading the output.
const SHOWN_CHARS: usize = 4;

/// `Bearer pcp_… (16 chars)`: the scheme, a short prefix and the length, never the whole value.
fn redact(value: &str) -> String {
    let (scheme, secret) = match value.split_once(' ') {
        Some((scheme, secret)) => (format!("{scheme} "), secret),
        None => (String::new(), value),
    };
    let shown: String = secret.chars().take(SHOWN_CHARS).collect();
    format!("{scheme}{shown}… ({} chars)", secret.chars().count())
}

/// What arrived. Header names and credentials are joined into one string each, so that the
/// pretty-printed answer stays short enough to read in a terminal.
fn received(method: &Method, target: &str, headers: &HeaderMap, body_bytes: u64) -> Value {
    let mut names: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
    names.sort_unstable();
    let credentials: Vec<String> = CREDENTIAL_HEADERS
        .iter()
        .filter_map(|name| {
            let value = headers.get(*name)?;
            Some(format!(
                "{name}: {}",
                redact(&String::from_utf8_lossy(value.as_bytes()))
            ))
        })
        .collect();
    let run_id = headers
        .get("x-paperclip-run-id")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    json!({
        "method": method.as_str(),
        "path": target,
        // null when no credential header arrived at all.
        "credential": (!credentials.is_empty()).then(|| credentials.join("; ")),
        "run_id": run_id,
        "body_bytes": body_bytes,
        "headers": names.join(", "),
    })
}

/// A Paperclip-like answer for a few well-known routes, a generic one for the rest of `/api/`.
fn answer_for(method: &Method, path: &str) -> (StatusCode, Value) {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (&Method::GET, ["api", "agents", "me"]) => (
            StatusCode::OK,
            json!({"id": "agent-1", "name": "stand-in agent", "companyId": "company-1", "status": "active"}),
        ),
        (&Method::POST, ["api", "issues", issue, "comments"]) => (
            StatusCode::CREATED,
            json!({"id": "comment-1", "issueId": issue}),
        ),
        (_, ["api", ..]) => (StatusCode::OK, json!({"ok": true})),
        _ => (StatusCode::NOT_FOUND, json!({"error": "Not found"})),
    }
}

async fn answer(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (head, mut body) = req.into_parts();
    // Count the body frame by frame; nothing is kept.
    let mut body_bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    body_bytes += data.len() as u64;
                }
            }
            Err(_) => break,
        }
    }
    let target = head
        .uri
        .path_and_query()
        .map_or_else(|| head.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let seen = received(&head.method, &target, &head.headers, body_bytes);
    eprintln!("{}", json!({"event": "request", "received": seen}));

    let (status, mut payload) = answer_for(&head.method, head.uri.path());
    payload["received"] = seen;
    // Pretty-printed: the answer is read by a person in a terminal, not by a program.
    let text = serde_json::to_string_pretty(&payload).unwrap_or_default() + "\n";
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

fn main() -> std::io::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| DEFAULT_ADDR.to_owned())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the stand-in listens on loopback addresses only",
        ));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        println!(
            "{}",
            json!({"event": "ready", "url": format!("http://{}", listener.local_addr()?)})
        );
        loop {
            let (stream, _) = listener.accept().await?;
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(answer))
                    .await;
            });
        }
    })
}
