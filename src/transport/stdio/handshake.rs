//! The bridge token and nonce the relay hands to the gateway it starts: in the child's
//! environment (`--handshake env`, the default) or as one JSON line on the child's stdin
//! (`--handshake stdin`, for `kubectl exec` and `ssh`, which forward no environment).
//!
//! Promise: neither value ever travels in an argv; the stdin line is read with a size and time
//! bound and must be exactly `{"token":"…","nonce":"…"}`; errors never echo the line (it holds the
//! token).

use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncRead;

use super::io::{LineError, LineReader};
use crate::auth::BridgeToken;

/// Environment variable carrying the bridge token to the gateway (also the `serve` default).
pub const TOKEN_ENV: &str = "CALLBACK_BRIDGE_TOKEN";
/// Environment variable carrying the session nonce to the gateway.
pub const NONCE_ENV: &str = "CALLBACK_BRIDGE_NONCE";
/// Paperclip's name for the bridge token (`paperclip-bridge-server.mjs`), accepted as an alias.
pub const PAPERCLIP_TOKEN_ENV: &str = "PAPERCLIP_BRIDGE_TOKEN";
/// Paperclip's name for the nonce, accepted as an alias.
pub const PAPERCLIP_NONCE_ENV: &str = "PAPERCLIP_BRIDGE_NONCE";
/// Random bytes in a nonce: 16, hex-encoded to 32 characters, as Paperclip's host does.
pub const NONCE_BYTES: usize = 16;
/// Longest nonce a gateway accepts; a nonce is an identifier, not a payload.
pub const MAX_NONCE_LEN: usize = 256;
/// Longest handshake line: a 43-character token and a 32-character nonce need ~100 bytes; room
/// for supplied tokens of any sane length.
pub const HANDSHAKE_MAX_BYTES: usize = 16 * 1024;
/// How long the gateway waits for the handshake line before giving up (the relay writes it right
/// after spawning, so only a broken launch takes longer).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the gateway needs from its relay before it starts.
pub struct Handshake {
    pub token: BridgeToken,
    pub nonce: String,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("token", &self.token)
            .field("nonce", &self.nonce)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("no handshake line on stdin within {0:?}")]
    Timeout(Duration),
    #[error("stdin closed before the handshake line")]
    Eof,
    #[error("the handshake line is longer than {HANDSHAKE_MAX_BYTES} bytes")]
    TooLong,
    #[error("the handshake line is not {{\"token\":\"…\",\"nonce\":\"…\"}} ({0})")]
    Malformed(&'static str),
    #[error("cannot read stdin: {0}")]
    Io(std::io::Error),
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Line<'a> {
    #[serde(borrow)]
    token: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    nonce: std::borrow::Cow<'a, str>,
}

/// A fresh nonce: [`NONCE_BYTES`] from the OS CSPRNG, lower-case hex.
pub fn generate_nonce() -> std::io::Result<String> {
    let mut bytes = [0u8; NONCE_BYTES];
    getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Checks a nonce received from the relay (environment or handshake line).
pub fn valid_nonce(nonce: &str) -> bool {
    !nonce.is_empty() && nonce.len() <= MAX_NONCE_LEN && !nonce.chars().any(char::is_control)
}

/// The handshake line the relay writes on the child's stdin, `\n` included.
pub fn encode_line(token: &BridgeToken, nonce: &str) -> String {
    let line = Line {
        token: token.expose().into(),
        nonce: nonce.into(),
    };
    let mut s = serde_json::to_string(&line).unwrap_or_default();
    s.push('\n');
    s
}

/// Parses one handshake line (without its `\n`; a trailing `\r` is tolerated).
pub fn parse_line(line: &[u8]) -> Result<Handshake, HandshakeError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // serde_json's message could quote the input: report only what kind of problem it was.
    let parsed: Line<'_> = serde_json::from_slice(line).map_err(|e| {
        HandshakeError::Malformed(match e.classify() {
            serde_json::error::Category::Data => "wrong or missing fields",
            _ => "not JSON",
        })
    })?;
    if parsed.token.is_empty() {
        return Err(HandshakeError::Malformed("empty token"));
    }
    if !valid_nonce(&parsed.nonce) {
        return Err(HandshakeError::Malformed("invalid nonce"));
    }
    Ok(Handshake {
        token: BridgeToken::supplied(parsed.token.into_owned())
            .map_err(|_| HandshakeError::Malformed("token too short"))?,
        nonce: parsed.nonce.into_owned(),
    })
}

/// Reads the handshake line from `stdin`; returns it and the bytes read past it (which belong to
/// the HTTP/2 session).
pub async fn read_line<R: AsyncRead + Unpin>(
    stdin: R,
) -> Result<(Handshake, R, Bytes), HandshakeError> {
    let mut reader = LineReader::new(stdin, HANDSHAKE_MAX_BYTES);
    let line = tokio::time::timeout(HANDSHAKE_TIMEOUT, reader.next_line())
        .await
        .map_err(|_| HandshakeError::Timeout(HANDSHAKE_TIMEOUT))?
        .map_err(|e| match e {
            LineError::CapExceeded(_) => HandshakeError::TooLong,
            LineError::Io(e) => HandshakeError::Io(e),
        })?
        .ok_or(HandshakeError::Eof)?;
    let handshake = parse_line(&line)?;
    let (stdin, rest) = reader.into_parts();
    Ok((handshake, stdin, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_line_parses_back() {
        let token = BridgeToken::new("tok-1-0123456789abcdef".into());
        let line = encode_line(&token, "abc");
        assert_eq!(
            line,
            "{\"token\":\"tok-1-0123456789abcdef\",\"nonce\":\"abc\"}\n"
        );
        let h = parse_line(line.trim_end().as_bytes()).unwrap();
        assert!(h.token.verify(b"tok-1-0123456789abcdef"));
        assert_eq!(h.nonce, "abc");
    }

    #[test]
    fn rejects_extra_missing_or_empty_fields_without_echoing_them() {
        for bad in [
            &b"{\"token\":\"t\"}"[..],
            b"{\"token\":\"t\",\"nonce\":\"n\",\"x\":1}",
            b"{\"token\":\"\",\"nonce\":\"n\"}",
            b"{\"token\":\"t\",\"nonce\":\"\"}",
            b"token=secret-value",
        ] {
            let err = parse_line(bad).unwrap_err().to_string();
            assert!(!err.contains("secret-value"), "{err}");
        }
    }

    #[test]
    fn nonces_are_32_hex_chars_and_fresh() {
        let a = generate_nonce().unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a, generate_nonce().unwrap());
    }

    #[tokio::test]
    async fn read_line_returns_the_bytes_after_it() {
        let input: &[u8] = b"{\"token\":\"t0123456789abcdefgh\",\"nonce\":\"n\"}\nPRI";
        let (h, _, rest) = read_line(input).await.unwrap();
        assert_eq!(h.nonce, "n");
        assert_eq!(&rest[..], b"PRI");
    }
}
