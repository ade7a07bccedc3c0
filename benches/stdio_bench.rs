//! Load benchmark of the stdio transport against direct `serve`, in one run, on loopback only.
//!
//! Run: `cargo bench --bench stdio_bench` (release build). Tunables: `BENCH_REQUESTS` (sequential
//! GETs per path for the latency figure, default 3000), `BENCH_SECONDS` (duration of each
//! throughput phase, default 5), `BENCH_CONCURRENCY` (default 16).
//!
//! One fast in-process upstream answers `GET /api/agents/me` with a small JSON body. The same
//! client measures: the upstream directly, through `serve`, and through `relay --transport stdio
//! -- callback-bridge gateway --transport stdio`. Added latency = p50(path) − p50(direct).
//! Rate limiting and access logs are off for both bridge paths alike. Every phase is bounded.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, Command};

const TOKEN: &str = "bench-bridge-token-0123456789";
/// Upper bound of any single wait (readiness, one request).
const WAIT: Duration = Duration::from_secs(20);
/// Upper bound of the whole benchmark.
const TOTAL: Duration = Duration::from_secs(300);
const WARMUP: usize = 300;
/// Requests per path before switching to the next one, so that background load hits all paths alike.
const ROUND: usize = 50;
const TARGET: &str = "/api/agents/me";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        tokio::time::timeout(TOTAL, run())
            .await
            .expect("benchmark exceeded its time bound")
    });
}

async fn run() {
    let requests = env_or("BENCH_REQUESTS", 3000) as usize;
    let seconds = env_or("BENCH_SECONDS", 5);
    let concurrency = env_or("BENCH_CONCURRENCY", 16) as usize;
    let upstream = start_upstream().await;

    let (_serve, serve_addr) = start_serve(upstream).await;
    let (_relay, stdio_addr) = start_stdio(upstream).await;

    println!(
        "lone GET {TARGET}, {requests} sequential requests per path on one keep-alive connection \
         each, interleaved in rounds of {ROUND}"
    );
    let mut paths = [
        Path::new(upstream, false).await,
        Path::new(serve_addr, true).await,
        Path::new(stdio_addr, true).await,
    ];
    for path in &mut paths {
        path.run(WARMUP, false).await;
    }
    for _ in 0..requests.div_ceil(ROUND) {
        for path in &mut paths {
            path.run(ROUND, true).await;
        }
    }
    let [direct, serve, stdio] = paths.map(|p| {
        let mut v = p.samples;
        v.sort();
        v
    });
    let p = |v: &[Duration], q: f64| v[((v.len() - 1) as f64 * q) as usize];
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>14}",
        "path", "p50 µs", "p90 µs", "p99 µs", "added p50 µs"
    );
    for (name, v) in [("direct", &direct), ("serve", &serve), ("stdio", &stdio)] {
        let added = p(v, 0.5).as_secs_f64() - p(&direct, 0.5).as_secs_f64();
        println!(
            "{:<8} {:>10.1} {:>10.1} {:>10.1} {:>14.1}",
            name,
            p(v, 0.5).as_secs_f64() * 1e6,
            p(v, 0.9).as_secs_f64() * 1e6,
            p(v, 0.99).as_secs_f64() * 1e6,
            added * 1e6
        );
    }
    let added_serve = p(&serve, 0.5).as_secs_f64() - p(&direct, 0.5).as_secs_f64();
    let added_stdio = p(&stdio, 0.5).as_secs_f64() - p(&direct, 0.5).as_secs_f64();
    println!(
        "stdio added p50 / serve added p50 = {:.2} (target <= 2)",
        added_stdio / added_serve
    );

    println!(
        "\nthroughput: {concurrency} concurrent agents (one connection each), {seconds} s per path"
    );
    for (name, addr, auth) in [
        ("direct", upstream, false),
        ("serve", serve_addr, true),
        ("stdio", stdio_addr, true),
    ] {
        let (count, errors) =
            throughput(addr, auth, concurrency, Duration::from_secs(seconds)).await;
        println!(
            "{:<8} {:>10.0} req/s  ({} ok, {} not 200)",
            name,
            count as f64 / seconds as f64,
            count,
            errors
        );
    }
}

/// The fast upstream: a small JSON body for every request.
async fn start_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|_req: Request<Incoming>| async {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(b"{\"id\":\"agent-1\"}")))
                            .unwrap(),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn bridge(upstream: SocketAddr) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_callback-bridge"));
    cmd.env("CALLBACK_BRIDGE_UPSTREAM", format!("http://{upstream}"))
        .env("CALLBACK_BRIDGE_UPSTREAM_TOKEN", "bench-upstream-secret")
        .env("CALLBACK_BRIDGE_TOKEN", TOKEN)
        .env("CALLBACK_BRIDGE_RATE_LIMIT_PER_SECOND", "0")
        .env("CALLBACK_BRIDGE_LOG_LEVEL", "warn")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn first_line(child: &mut Child) -> serde_json::Value {
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("readiness within the wait")
        .unwrap()
        .expect("a readiness line");
    // Keep draining stdout so that the exit line never blocks the process.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    serde_json::from_str(&line).unwrap()
}

async fn start_serve(upstream: SocketAddr) -> (Child, SocketAddr) {
    let mut child = bridge(upstream).arg("serve").spawn().unwrap();
    let ready = first_line(&mut child).await;
    let addr = ready["url"]
        .as_str()
        .unwrap()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    (child, addr)
}

async fn start_stdio(upstream: SocketAddr) -> (Child, SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = bridge(upstream)
        .args(["relay", "--transport", "stdio", "--"])
        .arg(env!("CARGO_BIN_EXE_callback-bridge"))
        .args(["gateway", "--transport", "stdio", "--listen", &listen])
        .args(["--rate-limit-per-second", "0", "--log-level", "warn"])
        .spawn()
        .unwrap();
    let ready = first_line(&mut child).await;
    assert_eq!(ready["event"], "ready", "{ready}");
    (child, listen.parse().unwrap())
}

async fn connect(addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn get(sender: &mut SendRequest<Empty<Bytes>>, addr: SocketAddr, auth: bool) -> u16 {
    let mut req = Request::builder()
        .uri(TARGET)
        .header("host", addr.to_string());
    if auth {
        req = req.header("authorization", format!("Bearer {TOKEN}"));
    }
    let req = req.body(Empty::new()).unwrap();
    let work = async {
        sender.ready().await.unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        resp.into_body().collect().await.unwrap();
        status
    };
    tokio::time::timeout(WAIT, work)
        .await
        .expect("request within the wait")
}

/// One keep-alive connection to one path, and the latencies measured on it.
struct Path {
    addr: SocketAddr,
    auth: bool,
    sender: SendRequest<Empty<Bytes>>,
    samples: Vec<Duration>,
}

impl Path {
    async fn new(addr: SocketAddr, auth: bool) -> Path {
        Path {
            addr,
            auth,
            sender: connect(addr).await,
            samples: Vec::new(),
        }
    }

    /// `n` sequential GETs; their latencies are kept when `record`.
    async fn run(&mut self, n: usize, record: bool) {
        for _ in 0..n {
            let started = Instant::now();
            let status = get(&mut self.sender, self.addr, self.auth).await;
            let elapsed = started.elapsed();
            assert_eq!(status, 200);
            if record {
                self.samples.push(elapsed);
            }
        }
    }
}

async fn throughput(
    addr: SocketAddr,
    auth: bool,
    concurrency: usize,
    duration: Duration,
) -> (u64, u64) {
    let stop = Instant::now() + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        tasks.spawn(async move {
            let mut sender = connect(addr).await;
            let (mut ok, mut bad) = (0u64, 0u64);
            while Instant::now() < stop {
                if get(&mut sender, addr, auth).await == 200 {
                    ok += 1;
                } else {
                    bad += 1;
                }
            }
            (ok, bad)
        });
    }
    let (mut ok, mut bad) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        let (o, b) = r.unwrap();
        ok += o;
        bad += b;
    }
    (ok, bad)
}
