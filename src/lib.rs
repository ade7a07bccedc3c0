//! callback-bridge: a loopback sidecar proxy that lets an AI agent inside a sandbox call its
//! orchestrator's API (Paperclip) with a per-run bridge token instead of the real credential.
//!
//! `config` turns flags, environment, the TOML file and Paperclip's variables into one validated
//! configuration per role. Every role — `serve`, the two gateways and the two relays — runs the
//! same [`pipeline`]: token and policy (`policy`), rate and in-flight limits (`limits`), then a
//! dispatcher (`dispatch`) that sends the allowed request on: upstream with the real credential
//! (`proxy`), or to the relay over a file queue or HTTP/2 on stdio (`transport`). `server` is the
//! agent-facing HTTP/1.1 listener; `telemetry` the logs, metrics and exit summary.
//! `docs/architecture.md` draws the data flow.
#![forbid(unsafe_code)]

mod admin;
pub mod auth;
mod body;
pub mod cli;
mod commands;
mod config;
mod dispatch;
mod lifecycle;
mod limits;
mod pipeline;
pub mod policy;
mod proxy;
mod respond;
mod server;
mod telemetry;
pub mod transport;
mod unix_socket;

pub use commands::{check, explain, health};
pub use config::{load, process_env, ConfigError, Role, Run};
pub use telemetry::init_logging;

/// Version and git commit, for `--version`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("CALLBACK_BRIDGE_GIT_COMMIT"),
    ")"
);

/// Why a role stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error(transparent)]
    Serve(#[from] server::ServeError),
    #[error(transparent)]
    Transport(#[from] transport::TransportError),
}

impl RoleError {
    /// 2 for bad input, 1 for any other fatal error.
    pub fn exit_code(&self) -> u8 {
        match self {
            RoleError::Serve(_) => 1,
            RoleError::Transport(e) => e.exit_code(),
        }
    }
}

/// Runs a long-running role until it stops (drained, exit line printed).
pub async fn run_role(role: Role) -> Result<(), RoleError> {
    match role {
        Role::Serve(c) => server::run(c).await.map(|_| ()).map_err(Into::into),
        Role::QueueGateway(c) => Ok(transport::queue::gateway::run(c).await?),
        Role::StdioGateway(c) => Ok(transport::stdio::gateway::run(c).await?),
        Role::QueueRelay(c) => Ok(transport::queue::relay::run(c).await?),
        Role::StdioRelay(c) => Ok(transport::stdio::relay::run(c).await?),
        Role::AutoRelay(c) => Ok(transport::auto::run(c).await?),
    }
}

/// Runs the hidden sandbox-side queue helper (`queue take|start|put`).
pub fn queue_helper(args: &[String]) -> Result<(), transport::TransportError> {
    transport::queue::helper::run(args)
}
