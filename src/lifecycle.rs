//! Why and when a long-running command stops: signals, the stdin lifeline, the lifetime and idle
//! limits. Shared by `serve`, the gateways and both relays.
//!
//! Promise: SIGTERM and SIGINT drain and stop, SIGHUP is logged and ignored; the signal handlers
//! are installed before this returns (so before any readiness line
//! is printed: a SIGTERM right after readiness drains instead of killing the process); each
//! watcher sends its reason at most once; an idle limit never fires while a request is in flight.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::cli::Lifeline;
use crate::config::Lifecycle;

/// Why the process stops (the `reason` of the exit line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitReason {
    Signal,
    Lifeline,
    Lifetime,
    Idle,
    /// The transport to the relay (stdio gateway) was lost.
    Transport,
}

impl ExitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Signal => "signal",
            ExitReason::Lifeline => "lifeline",
            ExitReason::Lifetime => "lifetime",
            ExitReason::Idle => "idle",
            ExitReason::Transport => "transport",
        }
    }
}

/// When the last request arrived, for `idle_exit`.
#[derive(Debug)]
pub struct Activity {
    started: Instant,
    /// Milliseconds since `started` of the last request.
    last_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Activity {
            started: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }
}

impl Activity {
    /// Records activity now.
    pub fn touch(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Duration {
        Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// Starts the watchers; each sends its reason on `stop` once. `busy` tells whether requests are
/// in flight (an idle limit that falls due then looks again one idle period later).
pub fn spawn_watchers(
    lifecycle: &Lifecycle,
    activity: Arc<Activity>,
    busy: impl Fn() -> bool + Send + 'static,
    stop: mpsc::Sender<ExitReason>,
) {
    {
        use tokio::signal::unix::{signal, SignalKind};
        // Installed here, synchronously: the caller prints its readiness line after this.
        let handlers = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        );
        let stop = stop.clone();
        tokio::spawn(async move {
            let (Ok(mut term), Ok(mut int), Ok(mut hup)) = handlers else {
                tracing::error!("cannot install signal handlers");
                return;
            };
            loop {
                tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    // The configuration is read once, at start; a reload would have to re-check
                    // everything `config::load` checks. SIGHUP (a closed terminal, a supervisor's
                    // "reload") must not kill a bridge mid-request either: it is logged, ignored.
                    _ = hup.recv() => {
                        tracing::warn!("SIGHUP ignored: the configuration is read once, at start; restart to change it");
                    }
                }
            }
            let _ = stop.send(ExitReason::Signal).await;
        });
    }
    if lifecycle.lifeline == Lifeline::Stdin {
        let stop = stop.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 256];
            while let Ok(n) = stdin.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
            let _ = stop.send(ExitReason::Lifeline).await;
        });
    }
    if let Some(lifetime) = lifecycle.max_lifetime {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(lifetime).await;
            let _ = stop.send(ExitReason::Lifetime).await;
        });
    }
    if let Some(idle) = lifecycle.idle_exit {
        tokio::spawn(async move {
            loop {
                let last = activity.last();
                tokio::time::sleep_until((activity.started + last + idle).into()).await;
                if activity.last() == last {
                    if !busy() {
                        break;
                    }
                    // Busy with a long request: look again after another idle period.
                    activity.touch();
                }
            }
            let _ = stop.send(ExitReason::Idle).await;
        });
    }
}
