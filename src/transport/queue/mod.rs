//! The queue transport (docs/reference.md §6.1, compatible with Paperclip `queue_v1`): the gateway turns each
//! allowed agent request into `requests/<id>.json` inside the sandbox; the relay on the host
//! drives the sandbox through one-shot commands (`<exec prefix…> '<sh script>'`), claims those
//! files, re-applies the policy, forwards with the real credential and writes
//! `responses/<id>.json` back.
//!
//! Promise: the agent-facing contract is `serve`'s; a mutation reaches the upstream at most once
//! (the `.claimed` rename hand-off decides every race between the relay, a restarted relay and a
//! gateway that gives up); the credential stays on the host; a burst costs two commands, idling
//! one per five seconds. Attacks defended: anything in the sandbox may plant, edit or delete
//! queue files or answer commands with garbage — the relay trusts no file, name or output, and
//! the gateway trusts no response file beyond its allowlisted headers and bounded body.
//!
//! Files: [`file`] wire format (shared), [`gateway`] sandbox side, [`relay`] host side,
//! [`scripts`] the `sh` scripts and their output protocol, [`helper`] the same operations in
//! this binary (`--sandbox-helper`), [`exec`] running one command with a time cap and a scrubbed
//! environment, [`presence`] whether a gateway is at the queue directory.

pub(crate) mod exec;
pub mod file;
pub(crate) mod gateway;
pub(crate) mod helper;
#[doc(hidden)]
pub mod invariants;
pub(crate) mod presence;
pub(crate) mod relay;
pub(crate) mod scripts;
