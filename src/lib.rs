//! callback-bridge: a loopback sidecar proxy that lets an AI agent inside a sandbox call its
//! orchestrator's API (Paperclip) with a per-run bridge token instead of the real credential.
//! Every request passes one pure policy (`policy`), gets the real credential injected (`auth`)
//! and is streamed to one configured upstream (`proxy`) by the server (`server`). `config` turns
//! flags, environment and the TOML file into one validated `Config`; `limits` holds the body,
//! in-flight and rate limits; `telemetry` the logs, metrics and exit summary.
#![forbid(unsafe_code)]

pub mod auth;
pub mod cli;
pub mod commands;
pub mod config;
pub mod lifecycle;
pub mod limits;
pub mod policy;
pub mod proxy;
pub mod server;
pub mod telemetry;
pub mod transport;

/// Version and git commit, for `--version`.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("CALLBACK_BRIDGE_GIT_COMMIT"),
    ")"
);
