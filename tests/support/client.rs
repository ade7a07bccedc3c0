//! The agent's side: HTTP/1.1 over a plain `TcpStream` or `UnixStream` (an [`Endpoint`]),
//! writing exactly the bytes a test gives (so that malformed requests can be sent) and reading one
//! response at a time.
//!
//! * [`Req`] builds a well-formed request (`connection: close`, so one request per connection);
//!   [`Req::send`] writes it and reads the answer.
//! * [`RawConn`], [`raw_request`], [`try_raw_request`] write raw bytes.
//! * [`Agent`] is an agent-facing endpoint (address + bridge token) of any transport.
//! * [`request`] is the short form `request(addr, method, target, headers, body)`.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{self, Receiver};

use serde_json::Value;

use super::{BRIDGE_TOKEN, WAIT};

/// Where an agent connects: a loopback TCP address or a Unix socket. `Copy` like the
/// `SocketAddr` it generalises, so every helper taking an address takes either (a socket's path
/// is leaked once per endpoint made: a test makes a handful).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(&'static Path),
}

impl Endpoint {
    /// The Unix socket at `path`.
    pub fn unix(path: &Path) -> Endpoint {
        Endpoint::Unix(Box::leak(path.to_path_buf().into_boxed_path()))
    }

    /// The value of the `host` header a client sends: the address, or `localhost` for a socket
    /// (what `curl --unix-socket P http://localhost/…` sends).
    pub fn host(&self) -> String {
        match self {
            Endpoint::Tcp(addr) => addr.to_string(),
            Endpoint::Unix(_) => "localhost".to_string(),
        }
    }

    /// The TCP address; panics for a socket (for tests that are about TCP itself).
    pub fn tcp(&self) -> SocketAddr {
        match self {
            Endpoint::Tcp(addr) => *addr,
            Endpoint::Unix(p) => panic!("{} is a Unix socket, not a TCP address", p.display()),
        }
    }
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Endpoint {
        Endpoint::Tcp(addr)
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(addr) => addr.fmt(f),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// An agent-facing endpoint: where the agent connects (a `serve` listener or a gateway) and the
/// bridge token it presents.
#[derive(Clone, Debug)]
pub struct Agent {
    pub addr: Endpoint,
    pub token: String,
}

impl Agent {
    /// An endpoint at `addr` whose token is [`BRIDGE_TOKEN`].
    pub fn new(addr: impl Into<Endpoint>) -> Agent {
        Agent {
            addr: addr.into(),
            token: BRIDGE_TOKEN.to_string(),
        }
    }

    /// An endpoint at `url` (`http://HOST:PORT`, or `unix:PATH` from a readiness line) whose
    /// token is [`BRIDGE_TOKEN`].
    pub fn at_url(url: &str) -> Agent {
        Agent::new(endpoint_of_url(url))
    }

    /// `http://HOST:PORT`, or `unix:PATH` for a socket (the readiness line's form).
    pub fn url(&self) -> String {
        match self.addr {
            Endpoint::Tcp(addr) => format!("http://{addr}"),
            Endpoint::Unix(_) => self.addr.to_string(),
        }
    }

    /// Sends `req` with this endpoint's token unless the request already carries
    /// `authorization`.
    pub fn send(&self, req: Req) -> Response {
        let req = if req.has_header("authorization") {
            req
        } else {
            req.bearer(&self.token)
        };
        req.send(self.addr)
    }

    /// `GET target` with the token.
    pub fn get(&self, target: &str) -> Response {
        self.send(Req::new("GET", target))
    }

    /// [`Agent::send`] on a thread; the receiver yields the result (for a request held in
    /// flight while the test looks elsewhere).
    pub fn send_in_background(&self, req: Req) -> Receiver<io::Result<Response>> {
        let req = if req.has_header("authorization") {
            req
        } else {
            req.bearer(&self.token)
        };
        req.send_in_background(self.addr)
    }

    /// `method target` with the token, `headers` and `body` (see [`request`]).
    pub fn request(
        &self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        self.send(
            Req::new(method, target)
                .headers(headers)
                .raw_body(method, body),
        )
    }
}

/// One request on a fresh connection: `headers` as given, and `body` with a `content-length`
/// when it is not empty or the method is `POST`, `PUT` or `PATCH` (no content type is added).
pub fn request(
    addr: impl Into<Endpoint>,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    Req::new(method, target)
        .headers(headers)
        .raw_body(method, body)
        .send(addr)
}

/// The samples of a Prometheus text exposition: `name{labels}` (exactly as written) → value.
/// Comment lines are skipped.
pub fn prometheus_samples(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.trim().to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// Parses a readiness `url`: `unix:PATH` is that socket, anything else [`addr_of_url`].
pub fn endpoint_of_url(url: &str) -> Endpoint {
    match url.strip_prefix("unix:") {
        Some(path) => Endpoint::unix(Path::new(path)),
        None => Endpoint::Tcp(addr_of_url(url)),
    }
}

/// Parses `http://HOST:PORT` into a connectable address (an unspecified host becomes loopback).
pub fn addr_of_url(url: &str) -> SocketAddr {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("url is not http://: {url}"));
    let authority = rest.split('/').next().unwrap();
    let mut addr = authority
        .to_socket_addrs()
        .unwrap_or_else(|e| panic!("bad url authority {authority:?}: {e}"))
        .next()
        .unwrap();
    if addr.ip().is_unspecified() {
        addr.set_ip([127, 0, 0, 1].into());
    }
    addr
}
// Raw HTTP/1.1 client
// ---------------------------------------------------------------------------------------------

/// A response as read off the wire.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    /// Header names lower-case, in wire order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.header(name).is_some()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The bridge's error code as the `x-bridge-error` header carries it (`""` when absent).
    pub fn code(&self) -> &str {
        self.header("x-bridge-error").unwrap_or("")
    }

    /// The `code` field of the JSON body (panics if the body is not JSON; `""` when absent).
    pub fn json_code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {} body {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// Asserts a response the bridge built itself (docs/reference.md §4.1): the status, `content-type:
    /// application/json`, body `{"error":"<message>","code":"<code>"}` and `x-bridge-error`.
    pub fn assert_bridge_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status,
            status,
            "expected {status} {code}, got {} with body {:?}",
            self.status,
            self.text()
        );
        let ct = self.header("content-type").unwrap_or("");
        assert!(
            ct.starts_with("application/json"),
            "bridge error {code} must be application/json, got content-type {ct:?}"
        );
        let body = self.json();
        assert_eq!(body["code"], code, "body code; body {body}");
        assert!(
            body["error"].as_str().is_some_and(|m| !m.is_empty()),
            "body must carry a human message in \"error\": {body}"
        );
        assert_eq!(
            self.header("x-bridge-error"),
            Some(code),
            "x-bridge-error header; headers {:?}",
            self.headers
        );
    }

    /// For requests that hyper may refuse before the bridge sees them: the status must match and
    /// the body is either empty (hyper's own response) or the bridge's error with `code`.
    pub fn assert_status_maybe_from_parser(&self, status: u16, code: &str) {
        assert_eq!(
            self.status,
            status,
            "expected {status} ({code} or the HTTP parser's own), got {} with body {:?}",
            self.status,
            self.text()
        );
        if !self.body.is_empty() {
            self.assert_bridge_error(status, code);
        }
    }
}

/// A connected client stream of either kind.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Stream {
    /// Connects (bounded by [`WAIT`]); every later read and write is bounded by [`WAIT`] too.
    pub fn connect(addr: Endpoint) -> io::Result<Stream> {
        match addr {
            Endpoint::Tcp(addr) => {
                let stream = TcpStream::connect_timeout(&addr, WAIT)?;
                stream.set_read_timeout(Some(WAIT))?;
                stream.set_write_timeout(Some(WAIT))?;
                stream.set_nodelay(true)?;
                Ok(Stream::Tcp(stream))
            }
            Endpoint::Unix(path) => {
                // A Unix connect does not wait for a handshake: it succeeds or fails at once.
                let stream = UnixStream::connect(path)?;
                stream.set_read_timeout(Some(WAIT))?;
                stream.set_write_timeout(Some(WAIT))?;
                Ok(Stream::Unix(stream))
            }
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.flush(),
            Stream::Unix(s) => s.flush(),
        }
    }
}

/// A client connection writing exact bytes.
pub struct RawConn {
    reader: BufReader<Stream>,
}

impl RawConn {
    /// Connects (bounded by [`WAIT`]); panics if nothing listens.
    pub fn connect(addr: impl Into<Endpoint>) -> RawConn {
        let addr = addr.into();
        Self::try_connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"))
    }

    /// Connects (bounded by [`WAIT`]); every later read and write is bounded by [`WAIT`] too.
    pub fn try_connect(addr: impl Into<Endpoint>) -> io::Result<RawConn> {
        Ok(RawConn {
            reader: BufReader::new(Stream::connect(addr.into())?),
        })
    }

    /// Writes bytes; an error (the peer may already have answered and closed) is returned, not
    /// raised, so the caller can still read the response.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let stream = self.reader.get_mut();
        stream.write_all(bytes)?;
        stream.flush()
    }

    /// A second handle on the same connection, for writing from another thread while this one
    /// reads.
    pub fn writer(&self) -> io::Result<Stream> {
        Ok(match self.reader.get_ref() {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    /// Reads one response. `head_request` means the response has no body whatever it declares.
    pub fn read_response(&mut self, head_request: bool) -> io::Result<Response> {
        loop {
            let (status, headers) = self.read_head()?;
            if (100..200).contains(&status) && status != 101 {
                continue; // interim response (100 Continue)
            }
            let body = if head_request || status == 204 || status == 304 {
                Vec::new()
            } else {
                self.read_body(&headers)?
            };
            return Ok(Response {
                status,
                headers,
                body,
            });
        }
    }

    fn read_head(&mut self) -> io::Result<(u16, Vec<(String, String)>)> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            ));
        }
        let mut parts = line.split_whitespace();
        let version = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/1.") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {line:?}"),
            ));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad status code"))?;
        let mut headers = Vec::new();
        loop {
            let mut h = String::new();
            if self.reader.read_line(&mut h)? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "eof in head"));
            }
            let h = h.trim_end_matches(['\r', '\n']);
            if h.is_empty() {
                break;
            }
            let (k, v) = h
                .split_once(':')
                .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "bad header"))?;
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        Ok((status, headers))
    }

    fn read_body(&mut self, headers: &[(String, String)]) -> io::Result<Vec<u8>> {
        let te = headers.iter().find(|(k, _)| k == "transfer-encoding");
        let cl = headers.iter().find(|(k, _)| k == "content-length");
        if let Some((_, te)) = te {
            if !te.eq_ignore_ascii_case("chunked") {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unexpected transfer-encoding {te:?}"),
                ));
            }
            let mut body = Vec::new();
            loop {
                let mut size = String::new();
                if self.reader.read_line(&mut size)? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "eof in chunked body",
                    ));
                }
                let size = size.trim_end_matches(['\r', '\n']);
                let size = size.split(';').next().unwrap().trim();
                let n = usize::from_str_radix(size, 16).map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("bad chunk size {size:?}"),
                    )
                })?;
                if n == 0 {
                    // Trailers until the empty line.
                    loop {
                        let mut t = String::new();
                        if self.reader.read_line(&mut t)? == 0 || t == "\r\n" || t == "\n" {
                            break;
                        }
                    }
                    return Ok(body);
                }
                let start = body.len();
                body.resize(start + n, 0);
                self.reader.read_exact(&mut body[start..])?;
                let mut crlf = [0u8; 2];
                self.reader.read_exact(&mut crlf)?;
            }
        } else if let Some((_, cl)) = cl {
            let n: usize = cl
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?;
            let mut body = vec![0u8; n];
            self.reader.read_exact(&mut body)?;
            Ok(body)
        } else {
            let mut body = Vec::new();
            self.reader.read_to_end(&mut body)?;
            Ok(body)
        }
    }

    /// Whether the peer closed the connection: reads until end of file (true), data (false) or
    /// the [`WAIT`] bound (false).
    pub fn closed_by_peer(&mut self) -> bool {
        let mut buf = [0u8; 1];
        match self.reader.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
        }
    }

    /// Reads everything until the peer closes; errors (including the [`WAIT`] timeout) returned.
    pub fn read_to_close(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.reader.read_to_end(&mut out)?;
        Ok(out)
    }
}

/// Writes `bytes` on a new connection and reads one response; a connection that cannot be
/// opened is a panic (the listener is expected to be up), a broken exchange an error.
pub fn try_raw_request(addr: impl Into<Endpoint>, bytes: &[u8]) -> io::Result<Response> {
    exchange(RawConn::connect(addr), bytes)
}

/// Like [`try_raw_request`], but a refused connection is an error too (for polling a listener
/// that is restarting).
pub fn try_raw_request_or_refused(addr: impl Into<Endpoint>, bytes: &[u8]) -> io::Result<Response> {
    exchange(RawConn::try_connect(addr)?, bytes)
}

fn exchange(mut conn: RawConn, bytes: &[u8]) -> io::Result<Response> {
    let write_result = conn.write(bytes);
    let head = bytes.starts_with(b"HEAD ");
    match conn.read_response(head) {
        Ok(r) => Ok(r),
        Err(e) => Err(match write_result {
            Err(w) => io::Error::new(e.kind(), format!("{e} (write failed too: {w})")),
            Ok(()) => e,
        }),
    }
}

/// Writes `bytes` on a new connection and reads one response; panics if none arrives.
pub fn raw_request(addr: impl Into<Endpoint>, bytes: &[u8]) -> Response {
    try_raw_request(addr, bytes).unwrap_or_else(|e| {
        panic!(
            "no response to {:?}: {e}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        )
    })
}

/// Runs [`try_raw_request`] on a thread; the receiver yields its result.
pub fn raw_request_in_background(
    addr: impl Into<Endpoint>,
    bytes: Vec<u8>,
) -> Receiver<io::Result<Response>> {
    let addr = addr.into();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(try_raw_request(addr, &bytes));
    });
    rx
}

/// A well-formed HTTP/1.1 request, serialised to bytes by [`Req::to_bytes`]. It carries
/// `connection: close` so that each request uses its own connection.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
}

impl Req {
    pub fn new(method: &str, target: &str) -> Req {
        Req {
            method: method.to_string(),
            target: target.to_string(),
            headers: Vec::new(),
            body: None,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Several headers, in order.
    pub fn headers(mut self, headers: &[(&str, &str)]) -> Req {
        for (k, v) in headers {
            self = self.header(k, v);
        }
        self
    }

    pub fn bearer(self, token: &str) -> Req {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// A body with its content type (and a matching `content-length`).
    pub fn body(self, content_type: &str, body: impl Into<Vec<u8>>) -> Req {
        let mut r = self.header("content-type", content_type);
        r.body = Some(body.into());
        r
    }

    pub fn json(self, body: &str) -> Req {
        self.body("application/json", body.as_bytes())
    }

    /// A body without a content type: sent (with `content-length`) when it is not empty or
    /// `method` is `POST`, `PUT` or `PATCH`; else no body at all.
    pub fn raw_body(mut self, method: &str, body: &[u8]) -> Req {
        if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
            self.body = Some(body.to_vec());
        }
        self
    }

    /// A body sent with `transfer-encoding: chunked` in pieces of `piece` bytes (no content
    /// type is added).
    pub fn chunked_body(self, body: &[u8], piece: usize) -> Req {
        let mut r = self.header("transfer-encoding", "chunked");
        r.body = Some(chunked(body, piece.max(1)));
        r
    }

    pub fn has_header(&self, name: &str) -> bool {
        self.headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case(name))
    }

    pub fn to_bytes(&self, addr: impl Into<Endpoint>) -> Vec<u8> {
        let mut out = format!("{} {} HTTP/1.1\r\n", self.method, self.target).into_bytes();
        if !self.has_header("host") {
            out.extend_from_slice(format!("host: {}\r\n", addr.into().host()).as_bytes());
        }
        for (k, v) in &self.headers {
            out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
        }
        if let Some(body) = &self.body {
            if !self.has_header("content-length") && !self.has_header("transfer-encoding") {
                out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
            }
        }
        if !self.has_header("connection") {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if let Some(body) = &self.body {
            out.extend_from_slice(body);
        }
        out
    }

    pub fn send(&self, addr: impl Into<Endpoint>) -> Response {
        let addr = addr.into();
        raw_request(addr, &self.to_bytes(addr))
    }

    /// Like [`Req::send`] but returns errors, a refused connection included (for polling a
    /// restarting gateway).
    pub fn try_send(&self, addr: impl Into<Endpoint>) -> io::Result<Response> {
        let addr = addr.into();
        try_raw_request_or_refused(addr, &self.to_bytes(addr))
    }

    /// Sends on a thread; the receiver yields the result.
    pub fn send_in_background(&self, addr: impl Into<Endpoint>) -> Receiver<io::Result<Response>> {
        let addr = addr.into();
        raw_request_in_background(addr, self.to_bytes(addr))
    }
}

/// Encodes `body` with the chunked transfer coding in pieces of `piece` bytes.
pub fn chunked(body: &[u8], piece: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for c in body.chunks(piece) {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// A multipart/form-data body with one file part, and its content type.
pub fn multipart_file(file_name: &str, content: &[u8]) -> (String, Vec<u8>) {
    let boundary = "----callback-bridge-test-boundary-7MA4YWxkTrZu0gW";
    let mut body = Vec::new();
    body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
    body.extend_from_slice(
        format!("Content-Disposition: form-data; name=\"file\"; filename=\"{file_name}\"\r\n")
            .as_bytes(),
    );
    body.extend_from_slice(b"Content-Type: application/octet-stream\r\n\r\n");
    body.extend_from_slice(content);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}
