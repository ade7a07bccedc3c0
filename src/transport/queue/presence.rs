//! Whether a gateway is at the queue directory: the queue relay's answer to "I started the relay
//! and the agent gets 504s". A relay may start before its gateway (both create the directories,
//! as Paperclip's host does), so an empty queue is not an error; but an operator must see at once
//! that no gateway is there yet, and keep seeing it while none comes (a mistyped `--queue-dir`
//! on either side).
//!
//! Promise: the readiness line says whether `ready.json` was in the queue directory at start-up
//! (`gateway_ready`); while it is not, the relay looks again every [`PROBE_INTERVAL`] (one short
//! command, only while no gateway was seen), logs when it appears, and warns after
//! [`ABSENT_WARN_AFTER`] and then every [`ABSENT_WARN_EVERY`] that none came. Nothing else
//! changes: requests written later are taken as usual.

use std::time::{Duration, Instant};

use super::exec::Runner;
use super::scripts::sh_quote;

/// How often the relay looks for `ready.json` while no gateway was seen.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// No gateway this long after the relay's start: warned.
pub const ABSENT_WARN_AFTER: Duration = Duration::from_secs(30);
/// Then warned again this often while none comes.
pub const ABSENT_WARN_EVERY: Duration = Duration::from_secs(60);
/// The probe prints one short line.
const PROBE_STDOUT_CAP: usize = 1024;

/// Looks for a non-empty `ready.json` in `dir` (the gateway writes it once it listens; one left
/// by an earlier gateway counts too). `None` when the probe command itself failed.
pub async fn gateway_ready(runner: &Runner, dir: &str) -> Option<bool> {
    let ready = format!("{}/ready.json", dir.trim_end_matches('/'));
    let script = format!(
        "# callback-bridge queue probe\nif [ -s {} ]; then echo ':P ready'; else echo ':P none'; fi\n",
        sh_quote(&ready)
    );
    match runner.run(script, None, PROBE_STDOUT_CAP).await {
        Ok(out) if out.success => match out.stdout.as_slice() {
            b":P ready\n" => Some(true),
            b":P none\n" => Some(false),
            _ => None,
        },
        Ok(out) => {
            tracing::debug!(status = %out.status, "the gateway probe failed");
            None
        }
        Err(e) => {
            tracing::debug!(error = %e, "the gateway probe failed");
            None
        }
    }
}

/// The log line of the relay's start when no gateway is there yet.
pub fn log_absent_at_start(dir: &str) {
    tracing::info!(
        queue = %dir,
        "no gateway at the queue directory yet (no ready.json); requests are taken once one starts there"
    );
}

/// Looks for the gateway until it appears (`started`: the relay's start), logging as the
/// module promises. Runs in its own task; the relay aborts it when it stops.
pub async fn watch(runner: Runner, dir: String, started: Instant) {
    let mut next_warning = started + ABSENT_WARN_AFTER;
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        if gateway_ready(&runner, &dir).await == Some(true) {
            tracing::info!(queue = %dir, "gateway found: ready.json is in the queue directory");
            return;
        }
        if Instant::now() >= next_warning {
            tracing::warn!(
                queue = %dir,
                waited_s = started.elapsed().as_secs(),
                "no gateway at the queue directory yet (no ready.json); is the gateway's --queue-dir this directory, inside this sandbox?"
            );
            next_warning = Instant::now() + ABSENT_WARN_EVERY;
        }
    }
}
