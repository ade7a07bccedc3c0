//! callback-bridge: a loopback sidecar proxy that lets an AI agent inside a sandbox call its
//! orchestrator's API (Paperclip) with a per-run bridge token instead of the real credential.
//! Every request passes one pure policy (`policy`), gets the real credential injected (`auth`)
//! and is streamed to one configured upstream (`proxy`). Where the sandbox has no network path to
//! the host, a `gateway` inside the sandbox and a `relay` on the host carry requests over a file
//! queue or over a command's stdio (`transport`).
#![forbid(unsafe_code)]

pub mod auth;
pub mod policy;
