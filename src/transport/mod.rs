//! Fallback transports for command-only runtimes: a `gateway` in the sandbox and a `relay` on
//! the host, over a file queue (`queue`) or HTTP/2 on a command's stdio (`stdio`).
//!
//! Promise: the agent-facing contract equals `serve`'s (same token, policy, codes); the relay
//! re-applies the whole policy to everything it receives and never trusts the sandbox; the
//! upstream credential never enters the sandbox (argv, environment or files).

pub mod queue;
pub mod stdio;

use crate::cli::{GatewayArgs, QueueHelperArgs, RelayArgs, TransportKind};
use crate::config::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Bad configuration: exit 2.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Bad usage: exit 2 with this one-line reason.
    #[error("{0}")]
    Usage(String),
    /// Any other fatal error: exit 1.
    #[error("{0}")]
    Fatal(String),
    #[error(transparent)]
    Serve(#[from] crate::server::ServeError),
}

/// Resolves the transport from the flag/env, or Paperclip's `PAPERCLIP_API_BRIDGE_MODE`.
pub fn transport_kind(flag: Option<TransportKind>) -> Result<TransportKind, TransportError> {
    if let Some(kind) = flag {
        return Ok(kind);
    }
    match std::env::var("PAPERCLIP_API_BRIDGE_MODE") {
        Ok(mode) => match mode.as_str() {
            "queue_v1" => Ok(TransportKind::Queue),
            "http2_v1" => Ok(TransportKind::Stdio),
            other => Err(TransportError::Usage(format!(
                "Unsupported PAPERCLIP_API_BRIDGE_MODE: {other}"
            ))),
        },
        Err(_) => Err(TransportError::Usage(
            "--transport queue|stdio is required (or PAPERCLIP_API_BRIDGE_MODE)".into(),
        )),
    }
}

/// `callback-bridge gateway`.
pub fn gateway(args: GatewayArgs) -> Result<(), TransportError> {
    match transport_kind(args.transport)? {
        TransportKind::Queue => queue::gateway(args),
        TransportKind::Stdio => stdio::gateway(args),
    }
}

/// `callback-bridge relay`.
pub fn relay(args: RelayArgs) -> Result<(), TransportError> {
    match transport_kind(args.transport)? {
        TransportKind::Queue => queue::relay(args),
        TransportKind::Stdio => stdio::relay(args),
    }
}

/// `callback-bridge queue …` (hidden): sandbox-side helper operations.
pub fn queue_helper(args: QueueHelperArgs) -> Result<(), TransportError> {
    queue::helper(args)
}
