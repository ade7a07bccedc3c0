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

pub(crate) mod gateway;
pub(crate) mod handshake;
pub mod io;
pub(crate) mod peek;
pub mod ready;
pub(crate) mod relay;

use std::time::Duration;

/// Streams the relay serves at once (docs/reference.md §6.2). Bounds the relay's work per sandbox; the
/// gateway queues further requests inside its HTTP/2 client until a stream frees up.
pub const MAX_CONCURRENT_STREAMS: u32 = 32;
/// Largest HTTP/2 header list (HPACK-decoded, RFC 9113 accounting) either side accepts: the
/// same 16 KiB the policy allows for an agent's request head (docs/reference.md §4 step 9).
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// Largest number of header pairs per stream the relay accepts before the policy runs; equals the
/// policy's own limit, so a gateway cannot make the relay do more work than an agent could.
pub const MAX_HEADER_PAIRS: usize = crate::policy::MAX_HEADER_COUNT;
/// The relay (and the gateway) PING the peer this often, so that a session whose peer vanished
/// without closing the pipe (a hung `ssh`, a frozen container) is noticed (Paperclip: 5 s).
pub const PING_INTERVAL: Duration = Duration::from_secs(5);
/// A PING unanswered for this long means the session is dead (Paperclip: 20 s stall limit).
pub const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// HTTP/2 flow-control window per stream: large enough that a 10 MiB attachment is not throttled
/// by round trips over a slow exec channel.
pub const STREAM_WINDOW_BYTES: u32 = 1024 * 1024;
/// HTTP/2 flow-control window per session: bounds the body bytes buffered for all streams
/// together (unread data can never exceed it), whatever the number of streams.
pub const CONNECTION_WINDOW_BYTES: u32 = 4 * 1024 * 1024;
/// `:authority` of every stream (Paperclip's gateway connects to `http://bridge.internal`).
pub const AUTHORITY: &str = "bridge.internal";
