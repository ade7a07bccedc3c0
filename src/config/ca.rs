//! `upstream_ca_file`: the CA certificates a private https upstream is verified against, read and
//! checked once at start-up. They **replace** the compiled-in Mozilla roots for that upstream
//! (like `curl --cacert`): naming a private CA narrows trust to it; to trust both, put both in the
//! file. A file that cannot be read, is empty, holds no PEM certificate, or holds one that is not
//! a usable CA certificate exits 2 with one line.

use std::path::{Path, PathBuf};

use super::{ConfigError, Upstream};

/// The CA certificates of `upstream_ca_file`, ready to verify the upstream with.
#[derive(Clone)]
pub struct UpstreamCa {
    pub path: PathBuf,
    /// How many certificates the file holds.
    pub count: usize,
    #[cfg(feature = "tls")]
    pub roots: std::sync::Arc<tokio_rustls::rustls::RootCertStore>,
}

impl std::fmt::Debug for UpstreamCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamCa")
            .field("path", &self.path)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

fn bad(path: &Path, message: impl Into<String>) -> ConfigError {
    ConfigError::CaFile {
        path: path.to_owned(),
        message: message.into(),
    }
}

impl UpstreamCa {
    /// Reads and checks `path` for `upstream`, which must be https.
    pub fn load(path: &Path, upstream: &Upstream) -> Result<UpstreamCa, ConfigError> {
        if !upstream.is_https() {
            return Err(bad(
                path,
                format!(
                    "only an https upstream uses a CA file, and the upstream is {}",
                    upstream.display()
                ),
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| bad(path, format!("cannot read it: {e}")))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(bad(path, "the file is empty"));
        }
        Self::parse(path, &bytes)
    }

    #[cfg(not(feature = "tls"))]
    fn parse(path: &Path, _bytes: &[u8]) -> Result<UpstreamCa, ConfigError> {
        Err(bad(
            path,
            "https upstreams need the `tls` feature, which this build was compiled without",
        ))
    }

    #[cfg(feature = "tls")]
    fn parse(path: &Path, bytes: &[u8]) -> Result<UpstreamCa, ConfigError> {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        use tokio_rustls::rustls::pki_types::CertificateDer;
        use tokio_rustls::rustls::RootCertStore;

        let mut roots = RootCertStore::empty();
        let mut count = 0;
        for item in CertificateDer::pem_slice_iter(bytes) {
            let cert = item.map_err(|e| bad(path, format!("not valid PEM: {e}")))?;
            count += 1;
            roots.add(cert).map_err(|e| {
                bad(
                    path,
                    format!("certificate {count} is not a usable CA certificate: {e}"),
                )
            })?;
        }
        if count == 0 {
            return Err(bad(
                path,
                "no PEM certificate in it (expected -----BEGIN CERTIFICATE----- blocks)",
            ));
        }
        Ok(UpstreamCa {
            path: path.to_owned(),
            count,
            roots: std::sync::Arc::new(roots),
        })
    }
}

#[cfg(all(test, feature = "tls"))]
mod tests {
    use super::*;

    fn https() -> Upstream {
        Upstream::parse("https://paperclip.internal").unwrap()
    }

    fn load_text(text: &[u8]) -> Result<UpstreamCa, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, text).unwrap();
        UpstreamCa::load(&path, &https()).map_err(|e| e.to_string())
    }

    #[test]
    fn bad_files_are_refused_with_one_line_naming_the_file() {
        let cases: [(&[u8], &str); 4] = [
            (b"", "the file is empty"),
            (b"\n  \n", "the file is empty"),
            (b"hello, not a certificate\n", "no PEM certificate"),
            (
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                "no PEM certificate",
            ),
        ];
        for (text, want) in cases {
            let err = load_text(text).unwrap_err();
            assert!(err.contains(want), "{err}");
            assert!(err.contains("ca.pem") && !err.contains('\n'), "{err}");
        }
        let err = load_text(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n")
            .unwrap_err();
        assert!(
            err.contains("not valid PEM") || err.contains("not a usable CA certificate"),
            "{err}"
        );
        let err = load_text(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
            .unwrap_err();
        assert!(err.contains("certificate 1 is not a usable CA"), "{err}");
        let err = UpstreamCa::load(Path::new("/nonexistent/ca.pem"), &https())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/nonexistent/ca.pem") && err.contains("cannot read"),
            "{err}"
        );
    }

    #[test]
    fn an_http_upstream_takes_no_ca_file() {
        let http = Upstream::parse("http://127.0.0.1:3100").unwrap();
        let err = UpstreamCa::load(Path::new("/any/ca.pem"), &http)
            .unwrap_err()
            .to_string();
        assert!(err.contains("only an https upstream"), "{err}");
    }
}
