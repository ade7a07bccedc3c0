//! The stdio transport (docs/reference.md §6.2, wire-compatible with Paperclip `http2_v1`): one long-running
//! command whose stdin/stdout carry an HTTP/2 session. The gateway (inside the sandbox) is the
//! HTTP/2 *client*; the relay (on the host) spawns the command and is the HTTP/2 *server*.
//!
//! Promise: after one READY line (`{"version":2,"type":"ready","nonce":"…"}`) stdout carries only
//! HTTP/2; every stream carries `authorization: Bearer <bridge token>` and is re-checked by the
//! relay with the whole policy before anything is forwarded; a lost session never turns into a
//! silently retried mutation (503 `bridge_unavailable` if not dispatched, 409 if it may have been).
//! Attacks defended: a sandbox that forges or floods streams (token, policy, stream/header/ping
//! limits on the relay), a command that prints junk or a stale READY (bounded, nonce-checked gate),
//! and credential leaks (the upstream credential never enters the child's argv or environment; the
//! bridge token is never in any argv).

pub mod frames;
pub(crate) mod gateway;
pub(crate) mod handshake;
pub mod io;
pub(crate) mod peek;
pub mod ready;
pub(crate) mod relay;
pub(crate) mod watch;

use std::time::Duration;

/// Streams the relay serves at once (docs/reference.md §6.2). Bounds the relay's work per sandbox; the
/// gateway queues further requests inside its HTTP/2 client until a stream frees up.
pub const MAX_CONCURRENT_STREAMS: u32 = 32;
/// Largest HTTP/2 header list (HPACK-decoded, RFC 9113 accounting) either side accepts: the
/// same 16 KiB the policy allows for an agent's request head (docs/reference.md §4 step 9).
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// Largest number of header pairs per stream the relay accepts before the policy runs: the
/// policy's own limit plus the `x-request-id` the gateway adds (which the relay takes out before
/// the policy runs), so a gateway cannot make the relay do more work than an agent could.
pub const MAX_HEADER_PAIRS: usize = crate::policy::MAX_HEADER_COUNT + 1;
/// The relay (and the gateway) PING the peer this often, so that a session whose peer vanished
/// without closing the pipe (a hung `ssh`, a frozen container) is noticed (Paperclip: 5 s).
pub const PING_INTERVAL: Duration = Duration::from_secs(5);
/// A PING unanswered for this long means the session is dead (Paperclip: 20 s stall limit).
pub const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// The relay ends a session when nothing was read from the command, or a write to it stayed
/// pending, for this long (docs/reference.md §6.2). Equal to [`PING_TIMEOUT`]: a live gateway
/// answers the PING the relay sends after [`PING_INTERVAL`] of silence (and sends its own), so
/// 20 s without a byte is several unanswered PINGs; a write pending that long means nothing reads
/// the pipe (a paused container, a stalled `ssh`), where the HTTP/2 library's own PING timeout
/// would wait forever to write its GOAWAY.
pub const STALL_TIMEOUT: Duration = PING_TIMEOUT;
/// Bytes of HTTP/2 control frames (everything but HEADERS and non-empty or stream-ending DATA,
/// header included; see `frames.rs`) the relay reads from the command per second before it
/// closes the session as hostile. A legitimate gateway sends far less: a PING and its ACK every
/// 5 s, a few SETTINGS per session, at most one RST_STREAM per request (100/s by default), and
/// WINDOW_UPDATEs as it consumes response bodies: Node's HTTP/2 client (Paperclip's gateway)
/// sends two 13-byte frames per 32 KiB, ours one per 512 KiB, so 256 KiB/s covers more than
/// 300 MiB/s of downloads through a Node gateway. A flood of 14-byte PRIORITY frames meets the
/// budget after about 19,000 frames, a few milliseconds of the relay's time.
pub const CONTROL_BYTES_PER_SECOND: u64 = 256 * 1024;
/// HTTP/2 flow-control window per stream: large enough that a 10 MiB attachment is not throttled
/// by round trips over a slow exec channel.
pub const STREAM_WINDOW_BYTES: u32 = 1024 * 1024;
/// HTTP/2 flow-control window per session: bounds the body bytes buffered for all streams
/// together (unread data can never exceed it), whatever the number of streams.
pub const CONNECTION_WINDOW_BYTES: u32 = 4 * 1024 * 1024;
/// `:authority` of every stream (Paperclip's gateway connects to `http://bridge.internal`).
pub const AUTHORITY: &str = "bridge.internal";

/// Header on every stream our gateway opens: how long (milliseconds) it waits for the answer
/// (its `response_timeout`). The relay removes it before the policy runs and keeps its own
/// upstream deadline [`relay_deadline`] of it, so its precise answer (504 `upstream_timeout`, 409)
/// reaches the agent before the gateway gives up with 504 `bridge_timeout` (docs/reference.md
/// §6.2). Paperclip's gateway sends none and waits without a deadline.
pub const WAIT_HEADER: &str = "x-callback-bridge-wait-ms";

/// The relay's upstream deadline for a gateway that waits `gateway_wait`: the relays' one margin
/// earlier ([`super::deadline_margin`]), so the default 35 s gives 31.5 s.
pub fn relay_deadline(gateway_wait: Duration) -> Duration {
    gateway_wait.saturating_sub(super::deadline_margin(gateway_wait))
}

/// The upstream deadline a transport asks for one request (a request extension the forwarder
/// honours when it is shorter than its own `upstream_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamDeadline(pub Duration);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_answers_a_margin_before_the_gateway_gives_up() {
        assert_eq!(
            relay_deadline(Duration::from_secs(35)),
            Duration::from_millis(31_500)
        );
        assert_eq!(
            relay_deadline(Duration::from_secs(30)),
            Duration::from_secs(27)
        );
        assert_eq!(
            relay_deadline(Duration::from_secs(2)),
            Duration::from_secs(1)
        );
        assert_eq!(relay_deadline(Duration::ZERO), Duration::ZERO);
    }
}
