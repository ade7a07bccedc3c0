//! `upstream_ca_file` (docs/reference.md §2.3, §5): an https upstream whose certificate comes from
//! a private CA. A CA and a server certificate for 127.0.0.1 are made at test time; the upstream
//! is a small TLS server on loopback that records what reaches it. Without the CA the request
//! fails as documented (502 `upstream_unavailable`, nothing received); with it, through `serve`
//! and both relays, the request is answered 200 and the credential arrives. Bad files exit 2.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use support::*;
use tokio_rustls::rustls;

const TARGET: &str = "/api/agents/me";

/// A private CA and a server certificate it signed, as PEM files in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    server_cert: String,
    server_key: String,
}

impl Pki {
    fn new() -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "callback-bridge test CA");
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
        let cert = server.signed_by(&key, &ca_cert, &ca_key).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        Pki {
            dir,
            server_cert: cert.pem(),
            server_key: key.serialize_pem(),
        }
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn write(&self, name: &str, text: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

/// An https server on 127.0.0.1 answering 200 `{"ok":true}`, recording each request's
/// `authorization` header. Stops when dropped (its runtime thread ends with the process).
struct TlsUpstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Option<String>>>>,
}

impl TlsUpstream {
    fn start(pki: &Pki) -> TlsUpstream {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = vec![CertificateDer::from_pem_slice(pki.server_cert.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(pki.server_key.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    let acceptor = acceptor.clone();
                    let record = record.clone();
                    tokio::spawn(async move {
                        // A client that refuses our certificate ends here: nothing recorded.
                        let Ok(tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let service = hyper::service::service_fn(move |req: http::Request<_>| {
                            let auth = req
                                .headers()
                                .get("authorization")
                                .map(|v: &http::HeaderValue| v.to_str().unwrap().to_owned());
                            record.lock().unwrap().push(auth);
                            async {
                                Ok::<_, std::convert::Infallible>(
                                    http::Response::builder()
                                        .header("content-type", "application/json")
                                        .body(Full::new(bytes::Bytes::from_static(
                                            b"{\"ok\":true}",
                                        )))
                                        .unwrap(),
                                )
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                            .await;
                    });
                }
            });
        });
        TlsUpstream { addr, seen }
    }

    fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    fn seen(&self) -> Vec<Option<String>> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(upstream: &TlsUpstream, args: &[&str], env: &[(&str, &str)]) -> Bridge {
    let url = upstream.url();
    let mut all_args = vec!["--upstream", url.as_str()];
    all_args.extend_from_slice(args);
    let mut all_env = vec![
        ("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN),
        ("CALLBACK_BRIDGE_UPSTREAM_TOKEN", UPSTREAM_TOKEN),
    ];
    all_env.extend_from_slice(env);
    Bridge::spawn(&all_args, &all_env)
}

fn assert_forwarded_with_credential(resp: &Response, upstream: &TlsUpstream) {
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["ok"], true);
    assert_eq!(
        upstream.seen(),
        vec![Some(format!("Bearer {UPSTREAM_TOKEN}"))],
        "the upstream received the request once, with the credential"
    );
}

#[test]
fn without_the_ca_the_private_upstream_is_unavailable_and_receives_nothing() {
    let pki = Pki::new();
    let upstream = TlsUpstream::start(&pki);
    let bridge = serve(&upstream, &[], &[]);
    bridge
        .get(TARGET)
        .assert_bridge_error(502, "upstream_unavailable");
    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen());
}

#[test]
fn with_the_ca_file_serve_reaches_the_private_upstream() {
    let pki = Pki::new();
    let upstream = TlsUpstream::start(&pki);
    let ca = pki.ca_file().display().to_string();
    let bridge = serve(&upstream, &["--upstream-ca-file", &ca], &[]);
    assert_forwarded_with_credential(&bridge.get(TARGET), &upstream);

    let upstream = TlsUpstream::start(&pki);
    let bridge = serve(&upstream, &[], &[("CALLBACK_BRIDGE_UPSTREAM_CA_FILE", &ca)]);
    assert_forwarded_with_credential(&bridge.get(TARGET), &upstream);
}

#[test]
fn another_ca_does_not_verify_the_upstream() {
    let pki = Pki::new();
    let other = Pki::new();
    let upstream = TlsUpstream::start(&pki);
    let ca = other.ca_file().display().to_string();
    let bridge = serve(&upstream, &["--upstream-ca-file", &ca], &[]);
    bridge
        .get(TARGET)
        .assert_bridge_error(502, "upstream_unavailable");
    assert!(upstream.seen().is_empty(), "{:?}", upstream.seen());
}

#[test]
fn a_relative_path_in_the_config_file_is_relative_to_the_file() {
    let pki = Pki::new();
    let upstream = TlsUpstream::start(&pki);
    let config = pki.write("bridge.toml", b"upstream_ca_file = \"ca.pem\"\n");
    let config = config.display().to_string();
    // The bridge's working directory is elsewhere: only the file's directory has ca.pem.
    let bridge = serve(&upstream, &["--config", &config], &[]);
    assert_forwarded_with_credential(&bridge.get(TARGET), &upstream);
}

#[test]
fn both_relays_reach_the_private_upstream_with_the_ca_file() {
    let pki = Pki::new();
    let ca = pki.ca_file().display().to_string();

    let upstream = TlsUpstream::start(&pki);
    let relay = Relay::start_url(
        &upstream.url(),
        RelayOptions {
            relay_args: &["--upstream-ca-file", &ca],
            supplied_token: true,
            ..RelayOptions::default()
        },
    );
    assert_forwarded_with_credential(&relay.agent().get(TARGET), &upstream);

    let upstream = TlsUpstream::start(&pki);
    let sb = Sandbox::new();
    let (_gateway, agent) = sb.gateway(&[]);
    let _relay = sb.relay(&upstream.url(), &["sh", "-c"], &["--upstream-ca-file", &ca]);
    assert_forwarded_with_credential(&agent.get(TARGET), &upstream);
}

#[test]
fn check_reports_the_ca_file() {
    let pki = Pki::new();
    let ca = pki.ca_file().display().to_string();
    let out = run_bridge(
        &[
            "check",
            "--upstream",
            "https://127.0.0.1:8443",
            "--upstream-ca-file",
            &ca,
        ],
        &[],
        WAIT,
    );
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains(&format!(
            "upstream ca {ca} (1 certificate; instead of the built-in roots)"
        )),
        "{}",
        out.stdout
    );
    let out = run_bridge(
        &["check", "--upstream", "https://127.0.0.1:8443"],
        &[],
        WAIT,
    );
    assert!(
        out.stdout.contains("upstream ca built-in roots (Mozilla)"),
        "{}",
        out.stdout
    );
}

/// Runs `check` (and `serve`, which must refuse the same way before printing anything) with the
/// CA file `path`; returns the one stderr line.
fn refused(path: &Path, upstream: &str) -> String {
    let path = path.display().to_string();
    for cmd in ["check", "serve"] {
        let out = run_bridge(
            &[cmd, "--upstream", upstream, "--upstream-ca-file", &path],
            &[("CALLBACK_BRIDGE_UPSTREAM_TOKEN", UPSTREAM_TOKEN)],
            WAIT,
        );
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{cmd}: {}", out.stdout);
        assert_eq!(out.stderr.trim_end().lines().count(), 1, "{}", out.stderr);
        assert!(
            out.stderr.starts_with(&format!(
                "callback-bridge: invalid upstream_ca_file {path}: "
            )),
            "{}",
            out.stderr
        );
        assert!(!out.stderr.contains(UPSTREAM_TOKEN));
    }
    let out = run_bridge(
        &[
            "relay",
            "--transport",
            "stdio",
            "--upstream",
            upstream,
            "--upstream-ca-file",
            &path,
            "--",
            "true",
        ],
        &[],
        WAIT,
    );
    assert_eq!(out.status.code(), Some(2), "relay: {}", out.stderr);
    out.stderr.trim_end().to_owned()
}

#[test]
fn bad_ca_files_exit_2_with_one_line() {
    let pki = Pki::new();
    let https = "https://127.0.0.1:8443";
    let cases: Vec<(PathBuf, &str)> = vec![
        (pki.dir.path().join("missing.pem"), "cannot read it"),
        (pki.write("empty.pem", b""), "the file is empty"),
        (
            pki.write("text.pem", b"this is not a certificate\n"),
            "no PEM certificate",
        ),
        (
            pki.write("key.pem", pki.server_key.as_bytes()),
            "no PEM certificate",
        ),
        (
            pki.write(
                "garbage.pem",
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            ),
            "certificate 1 is not a usable CA certificate",
        ),
    ];
    for (path, why) in cases {
        let line = refused(&path, https);
        assert!(line.contains(why), "{}: {line}", path.display());
    }
    let line = refused(&pki.ca_file(), "http://127.0.0.1:3100");
    assert!(line.contains("only an https upstream"), "{line}");
}
