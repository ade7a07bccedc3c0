//! `relay --transport auto`: the stdio transport when its channel starts, else the queue.
//!
//! Promise: the relay launches the stdio gateway command (the exec prefix plus the gateway
//! script) once; if it starts — the command runs, prints READY with this launch's nonce and the
//! HTTP/2 preface — the relay is a stdio relay from then on (restarts as usual, never a switch
//! later). If it does not, nothing was served over it, the command is reaped, and the relay
//! becomes a queue relay with the same upstream, policy and limits over the same prefix, saying
//! why on its readiness line (`fallback_reason`) and in a log line (docs/reference.md §6.5).

use crate::config::{AutoRelayConfig, QueueRelayConfig, StdioRelayConfig};
use crate::lifecycle::ExitReason;
use crate::server::print_line;
use crate::telemetry::Metrics;
use crate::transport::{queue, stdio, TransportError};

/// Runs the relay: stdio if its first launch succeeds, the queue otherwise.
pub async fn run(config: AutoRelayConfig) -> Result<(), TransportError> {
    let AutoRelayConfig {
        stdio: stdio_config,
        queue_dir,
        sandbox_helper,
        response_timeout,
        prefix,
    } = config;
    // The handlers exist before the log line that says the attempt started: a signal sent once
    // that line is seen stops the relay cleanly instead of killing it.
    let stop = terminated();
    tracing::info!("trying the stdio transport");
    let attempt = tokio::select! {
        attempt = stdio::relay::try_launch(&stdio_config) => attempt,
        () = stop => {
            // Stopped before either transport was ready: no readiness line, an exit line.
            tracing::info!(reason = ExitReason::Signal.as_str(), "relay stopped");
            print_line(&Metrics::default().exit_line(ExitReason::Signal.as_str()))?;
            return Ok(());
        }
    };
    let failure = match attempt {
        Ok(first) => return stdio::relay::run_launched(stdio_config, Some(first)).await,
        Err(e) => e,
    };
    let reason = failure.reason();
    tracing::warn!(
        fallback_reason = reason,
        error = %failure,
        "the stdio channel did not start; using the queue transport"
    );
    let StdioRelayConfig {
        target,
        common,
        scrub,
        ..
    } = stdio_config;
    queue::relay::run(QueueRelayConfig {
        target,
        common,
        queue_dir,
        sandbox_helper,
        response_timeout,
        command: prefix,
        scrub,
        fallback_reason: Some(reason),
    })
    .await
}

/// Installs SIGTERM and SIGINT handlers now and resolves on either (while the stdio launch is
/// tried; the chosen relay then installs its own handlers).
fn terminated() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!("cannot install signal handlers");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}
