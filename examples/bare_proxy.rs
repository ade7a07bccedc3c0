//! The floor of a hyper-based proxy, for the benchmark: the same runtime (current-thread tokio),
//! the same hyper server and client connections and the same keep-alive pooling as
//! `callback-bridge serve`, but no policy, no token check, no header filtering, no limits, no
//! timers and no access log. `benches/run.py` runs it beside the bridge (row "hyper floor") so
//! the cost of the bridge's own work and the cost of the hyper/tokio machinery can be told apart.
//!
//! `cargo run --release --example bare_proxy -- 127.0.0.1:0 http://127.0.0.1:PORT`
//! prints `{"url":"http://127.0.0.1:PORT"}` when listening. Loopback only; not a product.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

type Body = BoxBody<Bytes, hyper::Error>;

struct Pool {
    upstream: String,
    idle: Mutex<Vec<SendRequest<Body>>>,
}

impl Pool {
    async fn send(self: &Arc<Self>, req: Request<Body>) -> Result<Response<Incoming>, String> {
        let reused = self.idle.lock().unwrap().pop();
        let mut sender = match reused {
            Some(s) => s,
            None => {
                let stream = tokio::net::TcpStream::connect(&self.upstream)
                    .await
                    .map_err(|e| e.to_string())?;
                stream.set_nodelay(true).map_err(|e| e.to_string())?;
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                sender
            }
        };
        sender.ready().await.map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        // Simplification a real proxy cannot make: the connection goes back to the pool before
        // the response body is read (fine for the benchmark's small, complete bodies).
        self.idle.lock().unwrap().push(sender);
        Ok(resp)
    }
}

async fn proxy(pool: Arc<Pool>, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let (mut parts, body) = req.into_parts();
    parts.uri = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse()
        .unwrap_or_default();
    let upstream_req = Request::from_parts(parts, body.boxed());
    Ok(match pool.send(upstream_req).await {
        Ok(resp) => resp.map(BodyExt::boxed),
        Err(_) => Response::builder()
            .status(502)
            .body(http_body_util::Empty::new().map_err(|n| match n {}).boxed())
            .unwrap(),
    })
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:0".into());
    let upstream_url = args
        .next()
        .expect("usage: bare_proxy LISTEN http://HOST:PORT");
    let upstream = upstream_url
        .strip_prefix("http://")
        .expect("http:// upstream")
        .trim_end_matches('/')
        .to_owned();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen).await?;
        println!(r#"{{"url":"http://{}"}}"#, listener.local_addr()?);
        let pool = Arc::new(Pool {
            upstream,
            idle: Mutex::new(Vec::new()),
        });
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let pool = pool.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| proxy(pool.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
