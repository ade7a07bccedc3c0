//! The READY line (Paperclip `http2_v1` duplex frame, version 2) and the relay's gate on it.
//!
//! Promise: the gateway writes exactly `{"version":2,"type":"ready","nonce":"N"}\n` and then only
//! HTTP/2. The relay hands a channel to its HTTP/2 server only after it saw a READY line carrying
//! *this launch's* nonce followed by the HTTP/2 client preface. It skips what a command may print
//! first (blank lines, shell banners, a PTY's echo of the launch command, bracketed-paste escapes)
//! but reads at most [`READY_MAX_BYTES`] for at most [`READY_TIMEOUT`], so a command that floods
//! or stalls cannot hold the relay; a READY with another nonce (a stale or foreign gateway) is
//! refused outright. Skipped lines are never logged (an echo may contain the handshake token).

use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncRead;

use super::io::{LineError, LineReader};

/// Version of the duplex frame schema (Paperclip `DUPLEX_FRAME_VERSION`).
pub const READY_VERSION: u64 = 2;
/// Most bytes the relay reads from a fresh command before the HTTP/2 preface: generous for a
/// login banner or a PTY echo, small enough that a runaway command is cut off quickly.
pub const READY_MAX_BYTES: usize = 256 * 1024;
/// How long a fresh command has to print READY and the preface (Paperclip: 10 s). Covers a cold
/// `docker exec`/`kubectl exec`; a command that needs longer is broken.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ReadyFrame<'a> {
    version: u64,
    #[serde(rename = "type")]
    kind: &'a str,
    nonce: std::borrow::Cow<'a, str>,
}

/// The READY line the gateway writes, `\n` included.
pub fn encode(nonce: &str) -> String {
    let frame = ReadyFrame {
        version: READY_VERSION,
        kind: "ready",
        nonce: nonce.into(),
    };
    let mut s = serde_json::to_string(&frame).unwrap_or_default();
    s.push('\n');
    s
}

/// The nonce of a READY line, or `None` if the line is not one. Tolerates a trailing `\r` and
/// anything before the first `{` (a PTY's bracketed-paste prefix such as `ESC[?2004l CR`).
pub fn parse(line: &[u8]) -> Option<String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let strict = |bytes: &[u8]| -> Option<String> {
        let frame: ReadyFrame<'_> = serde_json::from_slice(bytes).ok()?;
        (frame.version == READY_VERSION && frame.kind == "ready").then(|| frame.nonce.into_owned())
    };
    strict(line).or_else(|| {
        let start = line.iter().position(|&b| b == b'{')?;
        if start == 0 {
            return None;
        }
        strict(&line[start..])
    })
}

/// Why a launched command was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("no READY line and HTTP/2 preface within {0:?}")]
    Timeout(Duration),
    #[error("more than {0} bytes before the READY line and HTTP/2 preface")]
    TooMuchOutput(usize),
    #[error("the command closed its stdout before READY")]
    ChannelClosed,
    #[error("READY carried a different nonce (not the gateway this relay started)")]
    NonceMismatch,
    #[error("cannot read the command's stdout: {0}")]
    Io(std::io::Error),
}

impl From<LineError> for GateError {
    fn from(e: LineError) -> Self {
        match e {
            LineError::CapExceeded(n) => GateError::TooMuchOutput(n),
            LineError::Io(e) => GateError::Io(e),
        }
    }
}

/// Reads `stdout` until the READY line with `nonce` and the HTTP/2 preface. Returns the reader and
/// the bytes from the preface on, which the HTTP/2 server must read first.
pub async fn await_ready<R: AsyncRead + Unpin>(
    stdout: R,
    nonce: &str,
) -> Result<(R, Bytes), GateError> {
    tokio::time::timeout(READY_TIMEOUT, gate(stdout, nonce))
        .await
        .map_err(|_| GateError::Timeout(READY_TIMEOUT))?
}

async fn gate<R: AsyncRead + Unpin>(stdout: R, nonce: &str) -> Result<(R, Bytes), GateError> {
    let mut reader = LineReader::new(stdout, READY_MAX_BYTES);
    let mut skipped = 0usize;
    loop {
        let line = reader.next_line().await?.ok_or(GateError::ChannelClosed)?;
        match parse(&line) {
            Some(seen) if seen == nonce => break,
            Some(_) => return Err(GateError::NonceMismatch),
            None => {
                if !line.iter().all(u8::is_ascii_whitespace) {
                    skipped += 1;
                }
            }
        }
    }
    if skipped > 0 {
        tracing::debug!(lines = skipped, "skipped output before READY");
    }
    // The preface follows at once; anything before it (a stray CR from a terminal) is dropped.
    loop {
        let buffered = reader.buffered();
        if let Some(pos) = buffered
            .windows(H2_PREFACE.len())
            .position(|w| w == H2_PREFACE)
        {
            reader.discard(pos);
            return Ok(reader.into_parts());
        }
        // Keep only a tail that could still be the start of the preface.
        let keep = H2_PREFACE.len() - 1;
        if buffered.len() > keep {
            let drop = buffered.len() - keep;
            reader.discard(drop);
        }
        if reader.fill().await? == 0 {
            return Err(GateError::ChannelClosed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn encodes_paperclip_ready_line() {
        assert_eq!(
            encode("n1"),
            "{\"version\":2,\"type\":\"ready\",\"nonce\":\"n1\"}\n"
        );
    }

    #[test]
    fn parse_is_strict_about_the_schema() {
        assert_eq!(
            parse(b"{\"version\":2,\"type\":\"ready\",\"nonce\":\"n\"}").as_deref(),
            Some("n")
        );
        assert_eq!(
            parse(b"\x1b[?2004l\r{\"version\":2,\"type\":\"ready\",\"nonce\":\"n\"}\r").as_deref(),
            Some("n")
        );
        for bad in [
            &b"{\"version\":1,\"type\":\"ready\",\"nonce\":\"n\"}"[..],
            b"{\"version\":2,\"type\":\"other\",\"nonce\":\"n\"}",
            b"{\"version\":2,\"type\":\"ready\",\"nonce\":\"n\",\"x\":1}",
            b"{\"version\":2,\"type\":\"ready\",\"nonce\":5}",
            b"{\"version\":2,\"type\":\"ready\"}",
            b"$ callback-bridge gateway --transport stdio",
            b"",
        ] {
            assert_eq!(parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[tokio::test]
    async fn gate_skips_noise_and_returns_the_preface_onwards() {
        let input = stream(&[
            b"\n$ exec callback-bridge gateway\r\n{\"not\":\"ready\"}\n",
            encode("abc").as_bytes(),
            b"\r",
            H2_PREFACE,
            b"frames",
        ]);
        let (_, rest) = await_ready(&input[..], "abc").await.unwrap();
        assert_eq!(&rest[..], &[H2_PREFACE, b"frames"].concat()[..]);
    }

    #[tokio::test]
    async fn gate_refuses_a_foreign_nonce() {
        let input = stream(&[encode("other").as_bytes(), H2_PREFACE]);
        assert!(matches!(
            await_ready(&input[..], "abc").await,
            Err(GateError::NonceMismatch)
        ));
    }

    #[tokio::test]
    async fn gate_reports_a_closed_channel_and_a_flood() {
        assert!(matches!(
            await_ready(&b"banner\n"[..], "abc").await,
            Err(GateError::ChannelClosed)
        ));
        let flood = vec![b'x'; READY_MAX_BYTES + 1];
        assert!(matches!(
            await_ready(&flood[..], "abc").await,
            Err(GateError::TooMuchOutput(_))
        ));
        let ready_only = encode("abc");
        assert!(matches!(
            await_ready(ready_only.as_bytes(), "abc").await,
            Err(GateError::ChannelClosed)
        ));
    }
}
