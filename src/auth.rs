//! The bridge token: generation, constant-time verification, and the upstream credential.
//!
//! Promise: the caller's token is compared on fixed-length SHA-256 digests with `subtle`, so
//! neither its content nor its length leaks through timing; secrets live in `SecretString`
//! whose `Debug` prints `[redacted]`, and are exposed only where a header value is built.

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Random bytes in a generated bridge token (docs/reference.md §3): 32 bytes = 256 bits of entropy.
pub const GENERATED_TOKEN_BYTES: usize = 32;

/// Shortest bridge token the bridge accepts from outside. Tokens are per-run secrets compared in
/// constant time; Paperclip's are 24 random bytes (32 base64url characters) and ours 32 bytes (43).
/// Anything under 16 characters is a placeholder (`test`, `changeme`) or a truncated secret, and
/// guessable: refusing it at start-up beats silently accepting it.
pub const MIN_TOKEN_LEN: usize = 16;

/// A supplied bridge token shorter than [`MIN_TOKEN_LEN`].
#[derive(Debug, thiserror::Error)]
#[error("the bridge token is shorter than {MIN_TOKEN_LEN} characters")]
pub struct TokenTooShort;

/// The per-run token the agent presents as `Authorization: Bearer <token>`.
#[derive(Clone)]
pub struct BridgeToken {
    secret: SecretString,
    digest: [u8; 32],
}

impl std::fmt::Debug for BridgeToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BridgeToken([redacted])")
    }
}

impl BridgeToken {
    /// Wraps a supplied token.
    /// A token the bridge was given (environment, file, handshake line): refused below
    /// [`MIN_TOKEN_LEN`] characters.
    pub fn supplied(value: String) -> Result<Self, TokenTooShort> {
        if value.chars().count() < MIN_TOKEN_LEN {
            return Err(TokenTooShort);
        }
        Ok(Self::new(value))
    }

    pub fn new(value: String) -> Self {
        let digest = Sha256::digest(value.as_bytes()).into();
        BridgeToken {
            secret: SecretString::from(value),
            digest,
        }
    }

    /// Generates a token: 32 bytes from the OS CSPRNG, base64url without padding (43 chars).
    pub fn generate() -> std::io::Result<Self> {
        let mut bytes = [0u8; GENERATED_TOKEN_BYTES];
        getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
        Ok(Self::new(
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
        ))
    }

    /// The token itself, for the readiness line and for building the gateway's handshake.
    pub fn expose(&self) -> &str {
        self.secret.expose_secret()
    }

    /// Checks a candidate token in constant time (digest compare: length does not leak).
    pub fn verify(&self, candidate: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(candidate).into();
        self.digest.ct_eq(&digest).into()
    }

    /// Checks an `Authorization` header value: scheme exactly `Bearer`, one space, the token.
    pub fn verify_authorization(&self, value: &[u8]) -> bool {
        // The scheme check is not secret-dependent; the token compare is constant time.
        match value.strip_prefix(b"Bearer ") {
            Some(candidate) => self.verify(candidate),
            None => {
                // Spend the same work on a malformed header as on a wrong token.
                let _ = self.verify(value);
                false
            }
        }
    }
}

/// The real upstream credential, injected into every forwarded request.
#[derive(Clone)]
pub struct UpstreamCredential {
    header: http::HeaderName,
    value: http::HeaderValue,
}

impl std::fmt::Debug for UpstreamCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UpstreamCredential({}: [redacted])", self.header)
    }
}

impl UpstreamCredential {
    /// Builds the header value `<scheme> <secret>` (or the raw secret when the scheme is empty),
    /// marked sensitive so that hyper's HPACK never indexes it and `Debug` hides it.
    pub fn new(
        header: http::HeaderName,
        scheme: &str,
        secret: &SecretString,
    ) -> Result<Self, http::header::InvalidHeaderValue> {
        let raw = if scheme.is_empty() {
            secret.expose_secret().to_owned()
        } else {
            format!("{scheme} {}", secret.expose_secret())
        };
        let mut value = http::HeaderValue::from_str(&raw)?;
        value.set_sensitive(true);
        Ok(UpstreamCredential { header, value })
    }

    pub fn header(&self) -> &http::HeaderName {
        &self.header
    }

    pub fn value(&self) -> &http::HeaderValue {
        &self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_token_is_43_url_safe_chars() {
        let t = BridgeToken::generate().unwrap();
        assert_eq!(t.expose().len(), 43);
        assert!(t
            .expose()
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(t.expose(), BridgeToken::generate().unwrap().expose());
    }

    #[test]
    fn verifies_exact_bearer_only() {
        let t = BridgeToken::new("s3cret".into());
        assert!(t.verify_authorization(b"Bearer s3cret"));
        assert!(!t.verify_authorization(b"bearer s3cret"));
        assert!(!t.verify_authorization(b"Bearer  s3cret"));
        assert!(!t.verify_authorization(b"Bearer s3cre"));
        assert!(!t.verify_authorization(b"Bearer s3crett"));
        assert!(!t.verify_authorization(b"s3cret"));
        assert!(!t.verify_authorization(b""));
    }

    #[test]
    fn debug_never_prints_secrets() {
        let t = BridgeToken::new("s3cret".into());
        assert!(!format!("{t:?}").contains("s3cret"));
        let c = UpstreamCredential::new(
            http::header::AUTHORIZATION,
            "Bearer",
            &SecretString::from("up-secret"),
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("up-secret"));
        assert_eq!(c.value(), "Bearer up-secret");
    }
}
