//! Black-box tests of the stdio gateway against a fake relay written here with hyper's HTTP/2
//! server: the READY line and preface on stdout, what each stream carries, what the agent gets
//! when the session dies, and the gateway's own exit (docs/reference.md §6.2).

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use callback_bridge::transport::stdio::{io::Duplex, ready};
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{ChildStdin, ChildStdout};
use tokio::sync::mpsc;

const NONCE: &str = "0123456789abcdef0123456789abcdef";

/// A gateway started with its token and nonce in the environment, its stdin and stdout handed
/// to the test (they are the HTTP/2 channel); killed when the [`Proc`] is dropped.
fn spawn_gateway(port: u16) -> (Proc, ChildStdin, ChildStdout) {
    let listen = format!("127.0.0.1:{port}");
    let cmd = bridge_command(
        &["gateway", "--transport", "stdio", "--listen", &listen],
        &[
            ("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN),
            ("CALLBACK_BRIDGE_NONCE", NONCE),
            ("CALLBACK_BRIDGE_LOG_FORMAT", "json"),
        ],
    );
    let (mut proc, stdout) = Proc::spawn_raw_stdout(cmd, "stdio gateway");
    let stdin = ChildStdin::from_std(proc.take_stdin()).expect("async stdin");
    let stdout = ChildStdout::from_std(stdout).expect("async stdout");
    (proc, stdin, stdout)
}

/// What the fake relay does with each stream.
#[derive(Clone, Copy)]
enum Answer {
    /// Never answer (the test then kills the session).
    Hang,
    /// 504 marked `x-paperclip-bridge-outcome: indeterminate`, as Paperclip's host does.
    Indeterminate,
}

/// One stream as the fake relay received it.
struct Stream {
    method: String,
    uri: http::Uri,
    headers: http::HeaderMap,
}

/// The gateway process and the fake relay serving its session.
struct Session {
    proc: Proc,
    agent: SocketAddr,
    streams: mpsc::UnboundedReceiver<Stream>,
    server: tokio::task::JoinHandle<()>,
}

async fn start_session(answer: Answer) -> Session {
    let port = closed_port();
    let (proc, stdin, stdout) = spawn_gateway(port);
    let (stdout, prefix) = tokio::time::timeout(WAIT, ready::await_ready(stdout, NONCE))
        .await
        .expect("READY within the wait")
        .expect("READY with our nonce");
    let (tx, streams) = mpsc::unbounded_channel();
    let service = service_fn(move |req: Request<Incoming>| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(Stream {
                method: req.method().to_string(),
                uri: req.uri().clone(),
                headers: req.headers().clone(),
            });
            match answer {
                Answer::Hang => std::future::pending::<()>().await,
                Answer::Indeterminate => {}
            }
            let resp = Response::builder()
                .status(504)
                .header("content-type", "application/json")
                .header("x-paperclip-bridge-outcome", "indeterminate")
                .body(Full::new(Bytes::from_static(
                    br#"{"error":"lost","outcome":"indeterminate","retryable":false}"#,
                )))
                .unwrap();
            Ok::<_, Infallible>(resp)
        }
    });
    let io = TokioIo::new(Duplex::new(prefix, stdout, stdin));
    let server = tokio::spawn(async move {
        let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await;
    });
    Session {
        proc,
        agent: SocketAddr::from(([127, 0, 0, 1], port)),
        streams,
        server,
    }
}

async fn next_stream(session: &mut Session) -> Stream {
    tokio::time::timeout(WAIT, session.streams.recv())
        .await
        .expect("a stream within the wait")
        .expect("fake relay alive")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_exactly_the_ready_line_then_the_http2_preface() {
    let (_gateway, _stdin, stdout) = spawn_gateway(closed_port());
    let mut stdout = BufReader::new(stdout);
    let mut line = Vec::new();
    tokio::time::timeout(WAIT, stdout.read_until(b'\n', &mut line))
        .await
        .expect("READY within the wait")
        .unwrap();
    let expected = format!("{{\"version\":2,\"type\":\"ready\",\"nonce\":\"{NONCE}\"}}\n");
    assert_eq!(String::from_utf8_lossy(&line), expected);
    let mut preface = [0u8; 24];
    tokio::time::timeout(WAIT, stdout.read_exact(&mut preface))
        .await
        .expect("preface within the wait")
        .unwrap();
    assert_eq!(&preface[..], ready::H2_PREFACE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_loss_answers_503_or_409_and_the_gateway_exits_nonzero() {
    let mut session = start_session(Answer::Hang).await;
    let auth = format!("Bearer {BRIDGE_TOKEN}");
    let agent = session.agent;
    let get = {
        let auth = auth.clone();
        tokio::task::spawn_blocking(move || {
            request(
                agent,
                "GET",
                "/api/agents/me",
                &[("authorization", &auth)],
                b"",
            )
        })
    };
    let post = tokio::task::spawn_blocking(move || {
        request(
            agent,
            "POST",
            "/api/issues/i1/comments",
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            b"{}",
        )
    });
    // Both streams reached the relay: both are dispatched when the session dies.
    let mut methods = vec![
        next_stream(&mut session).await.method,
        next_stream(&mut session).await.method,
    ];
    methods.sort();
    assert_eq!(methods, ["GET", "POST"]);
    session.server.abort();

    let get = get.await.unwrap();
    assert_eq!(get.status, 503);
    assert_eq!(get.json_code(), "bridge_unavailable");
    let post = post.await.unwrap();
    assert_eq!(post.status, 409);
    assert_eq!(post.json_code(), "outcome_indeterminate");
    assert_eq!(post.json()["retryable"], false);
    assert_eq!(
        post.header("x-paperclip-bridge-outcome"),
        Some("indeterminate")
    );

    // The gateway exits after losing its session (bounded by WAIT).
    let status = session.proc.wait_exit();
    assert_eq!(status.code(), Some(1), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_carry_the_token_and_indeterminate_answers_become_409() {
    let mut session = start_session(Answer::Indeterminate).await;
    let auth = format!("Bearer {BRIDGE_TOKEN}");
    let got = request(
        session.agent,
        "PATCH",
        "/api/issues/i1?a=1&b=%20",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
            ("cookie", "c=1"),
        ],
        b"{\"x\":1}",
    );
    assert_eq!(got.status, 409);
    assert_eq!(got.header("x-bridge-error"), Some("outcome_indeterminate"));
    assert_eq!(got.json()["outcome"], "indeterminate");

    let stream = next_stream(&mut session).await;
    assert_eq!(stream.method, "PATCH");
    assert_eq!(
        stream.uri.path_and_query().unwrap().as_str(),
        "/api/issues/i1?a=1&b=%20"
    );
    assert_eq!(stream.uri.authority().unwrap().as_str(), "bridge.internal");
    assert_eq!(stream.headers["authorization"], auth.as_str());
    assert_eq!(stream.headers["content-type"], "application/json");
    assert_eq!(stream.headers["content-length"], "7");
    assert!(!stream.headers.contains_key("cookie"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_an_ephemeral_port_a_missing_token_or_a_missing_nonce() {
    let cases: [(&str, Vec<&str>, Vec<&str>); 3] = [
        ("port 0", vec!["--listen", "127.0.0.1:0"], vec![]),
        (
            "no token",
            vec!["--listen", "127.0.0.1:1"],
            vec!["CALLBACK_BRIDGE_TOKEN"],
        ),
        (
            "no nonce",
            vec!["--listen", "127.0.0.1:1"],
            vec!["CALLBACK_BRIDGE_NONCE"],
        ),
    ];
    for (what, args, unset) in cases {
        let mut full = vec!["gateway", "--transport", "stdio"];
        full.extend_from_slice(&args);
        // No PAPERCLIP_BRIDGE_* aliases either (bridge_command clears them).
        let mut cmd = bridge_command(
            &full,
            &[
                ("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN),
                ("CALLBACK_BRIDGE_NONCE", NONCE),
            ],
        );
        for name in unset {
            cmd.env_remove(name);
        }
        // Exits at once (bounded by WAIT).
        let out = run_command(cmd, WAIT);
        assert_eq!(out.status.code(), Some(2), "{what}");
        assert!(out.stdout.is_empty(), "{what}: wrote to stdout");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepts_paperclip_gateway_environment() {
    let port = closed_port();
    let port_text = port.to_string();
    // Paperclip's variables only: bridge_command clears every CALLBACK_BRIDGE_* variable.
    let cmd = bridge_command(
        &["gateway"],
        &[
            ("PAPERCLIP_API_BRIDGE_MODE", "http2_v1"),
            ("PAPERCLIP_BRIDGE_TOKEN", BRIDGE_TOKEN),
            ("PAPERCLIP_BRIDGE_NONCE", NONCE),
            ("PAPERCLIP_BRIDGE_HOST", "127.0.0.1"),
            ("PAPERCLIP_BRIDGE_PORT", &port_text),
        ],
    );
    let (_gateway, stdout) = Proc::spawn_raw_stdout(cmd, "paperclip-style stdio gateway");
    let stdout = ChildStdout::from_std(stdout).expect("async stdout");
    let _session = tokio::time::timeout(WAIT, ready::await_ready(stdout, NONCE))
        .await
        .expect("READY within the wait")
        .expect("READY with the Paperclip nonce");
    // READY is written after the bind: the agent-facing port answers now.
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let health = request(addr, "GET", "/__bridge/health", &[], b"");
    assert_eq!(health.status, 200);
    let denied = request(
        addr,
        "GET",
        "/api/agents/me",
        &[("authorization", "Bearer wrong")],
        b"",
    );
    assert_eq!(denied.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_under_a_node_http2_host_speaking_paperclip_http2_v1() {
    let port = closed_port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/node_host.mjs");
    let mut cmd = std::process::Command::new("node");
    cmd.arg(script)
        .arg(bridge_binary())
        .arg(port.to_string())
        .env("NODE_HOST_TOKEN", BRIDGE_TOKEN);
    let mut host = Proc::spawn(cmd, "node host");
    let ready = host.next_json().expect("node host readiness");
    assert_eq!(ready["event"], "ready");
    let agent = SocketAddr::from(([127, 0, 0, 1], port));
    let auth = &format!("Bearer {BRIDGE_TOKEN}");

    let got = request(
        agent,
        "GET",
        "/api/agents/me?q=1",
        &[("authorization", auth)],
        b"",
    );
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    let seen = got.json();
    assert_eq!(seen["method"], "GET");
    assert_eq!(seen["path"], "/api/agents/me?q=1");
    assert_eq!(seen["authority"], "bridge.internal");
    assert_eq!(seen["token_ok"], true);

    let got = Req::new("POST", "/api/issues/i1/comments")
        .header("authorization", auth)
        .header("content-type", "application/json")
        .chunked_body(&[b'x'; 100_000], 4096)
        .send(agent);
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["body_bytes"], 100_000);

    let got = request(
        agent,
        "POST",
        "/api/routines/r1/run",
        &[
            ("authorization", auth),
            ("content-type", "application/json"),
        ],
        b"{}",
    );
    assert_eq!(got.status, 200);
    let got = request(
        agent,
        "DELETE",
        "/api/routine-triggers/indeterminate",
        &[("authorization", auth)],
        b"",
    );
    assert_eq!(got.status, 409, "indeterminate answer not turned into 409");
    host.signal("TERM");
}
