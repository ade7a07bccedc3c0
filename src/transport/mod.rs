//! Fallback transports for command-only runtimes: a `gateway` in the sandbox and a `relay` on
//! the host, over a file queue (`queue`) or HTTP/2 on a command's stdio (`stdio`).
//!
//! Promise: the agent-facing contract equals `serve`'s (each role runs the same
//! [`Pipeline`](crate::pipeline::Pipeline): token, policy, limits, codes); the relay re-applies
//! the whole policy to everything it receives and never trusts the sandbox; the upstream
//! credential never enters the sandbox (argv, environment or files).

pub mod auto;
pub mod diag;
pub mod queue;
pub mod stdio;

use std::path::PathBuf;

use std::time::Duration;

use crate::server::ServeError;

/// Smallest margin between a relay's deadline and its gateway's timeout (at most half the timeout).
pub const MARGIN_MIN: Duration = Duration::from_secs(1);
/// Largest margin between a relay's deadline and its gateway's timeout.
pub const MARGIN_MAX: Duration = Duration::from_secs(5);

/// How much earlier than a gateway that waits `t` for its answer a relay gives up on the upstream,
/// for both transports: a tenth of `t`, at least 1 s (at most half of `t`), at most 5 s. It covers
/// delivering the answer (a queue command, an HTTP/2 frame) and the gateway noticing it, so the
/// agent gets the relay's precise answer (504 `upstream_timeout`, 409) rather than the gateway's
/// `bridge_timeout`.
pub fn deadline_margin(t: Duration) -> Duration {
    (t / 10).min(MARGIN_MAX).max(MARGIN_MIN.min(t / 2))
}

/// Why a gateway, a relay or the queue helper stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error("cannot create queue directory {path}: {source}")]
    QueueDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot reach the sandbox queue after {attempts} attempts: {source}")]
    SandboxUnreachable {
        attempts: u32,
        source: queue::exec::CommandFailure,
    },
    #[error("another relay announced itself in relay.json; this one stops")]
    AnotherRelay,
    #[error("sandbox commands have failed for {secs} s: {source}")]
    SandboxLost {
        secs: u64,
        source: queue::exec::CommandFailure,
    },
    /// Bad arguments to the hidden `queue` helper (exit 2).
    #[error("queue helper: {0}")]
    HelperUsage(String),
    #[error("queue helper {op}: {source}")]
    Helper { op: String, source: std::io::Error },
    /// A malformed `--handshake stdin` line (exit 2).
    #[error("--handshake stdin: {0}")]
    HandshakeInput(#[source] stdio::handshake::HandshakeError),
    #[error("--handshake stdin: {0}")]
    Handshake(#[source] stdio::handshake::HandshakeError),
    #[error("the HTTP/2 session with the relay ended")]
    SessionEnded,
    #[error("cannot generate a nonce: {0}")]
    Nonce(#[source] std::io::Error),
    #[error(transparent)]
    Launch(#[from] stdio::relay::LaunchError),
    #[error("the stdio channel was lost {lost} times within {window_secs} s; giving up")]
    RestartBudget { lost: usize, window_secs: u64 },
}

impl TransportError {
    /// 2 for bad input on the command line or stdin, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            TransportError::HelperUsage(_) | TransportError::HandshakeInput(_) => 2,
            _ => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relays_deadline_comes_a_margin_before_the_gateways() {
        assert_eq!(
            deadline_margin(Duration::from_secs(30)),
            Duration::from_secs(3)
        );
        assert_eq!(
            deadline_margin(Duration::from_secs(3)),
            Duration::from_secs(1)
        );
        assert_eq!(
            deadline_margin(Duration::from_secs(1)),
            Duration::from_millis(500)
        );
        assert_eq!(
            deadline_margin(Duration::from_secs(300)),
            Duration::from_secs(5)
        );
    }
}
