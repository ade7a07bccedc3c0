//! Logs, metrics and the exit summary.
//!
//! Promise: logs go to stderr only and never carry the bridge token, the upstream credential,
//! bodies or query values (only query keys). Metrics are plain atomics and one small map, rendered
//! as Prometheus text on demand; the exit summary is one JSON line on stdout.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crate::cli::LogFormat;
use crate::config::LogConfig;
use crate::policy::DenyCode;

/// Starts the tracing subscriber on stderr. `RUST_LOG` wins over the configured level.
pub fn init_logging(cfg: &LogConfig) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let result = match cfg.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
    // A second init (tests, repeated calls) keeps the first subscriber.
    let _ = result;
}

/// Upper bounds (seconds) of the upstream latency histogram buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

/// Process-wide counters. Cheap to update from any task.
#[derive(Debug, Default)]
pub struct Metrics {
    pub requests: AtomicU64,
    pub forwarded: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub in_flight: AtomicU64,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Count per (route id or "-", status, deny code or "").
    by_outcome: Mutex<BTreeMap<(String, u16, &'static str), u64>>,
    denied: Mutex<BTreeMap<&'static str, u64>>,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_us: AtomicU64,
}

impl Metrics {
    pub fn record_outcome(&self, route: &str, status: u16, code: Option<DenyCode>) {
        let code_str = code.map(DenyCode::as_str).unwrap_or("");
        let mut map = self.by_outcome.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry((route.to_owned(), status, code_str)).or_insert(0) += 1;
        drop(map);
        if let Some(code) = code {
            let mut denied = self.denied.lock().unwrap_or_else(|e| e.into_inner());
            *denied.entry(code.as_str()).or_insert(0) += 1;
        }
    }

    pub fn record_upstream_latency(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(2048);
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let _ = writeln!(out, "# HELP callback_bridge_requests_total Requests received, by route id, status and deny code.");
        let _ = writeln!(out, "# TYPE callback_bridge_requests_total counter");
        for ((route, status, code), n) in self
            .by_outcome
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "callback_bridge_requests_total{{route=\"{}\",status=\"{status}\",code=\"{code}\"}} {n}",
                escape_label(route)
            );
        }
        let _ = writeln!(
            out,
            "# HELP callback_bridge_forwarded_total Requests forwarded upstream."
        );
        let _ = writeln!(out, "# TYPE callback_bridge_forwarded_total counter");
        let _ = writeln!(
            out,
            "callback_bridge_forwarded_total {}",
            g(&self.forwarded)
        );
        let _ = writeln!(out, "# HELP callback_bridge_upstream_errors_total Forwarded requests that got no usable upstream response.");
        let _ = writeln!(out, "# TYPE callback_bridge_upstream_errors_total counter");
        let _ = writeln!(
            out,
            "callback_bridge_upstream_errors_total {}",
            g(&self.upstream_errors)
        );
        let _ = writeln!(
            out,
            "# HELP callback_bridge_in_flight Requests being handled now."
        );
        let _ = writeln!(out, "# TYPE callback_bridge_in_flight gauge");
        let _ = writeln!(out, "callback_bridge_in_flight {}", g(&self.in_flight));
        let _ = writeln!(
            out,
            "# HELP callback_bridge_bytes_in_total Request body bytes received from agents."
        );
        let _ = writeln!(out, "# TYPE callback_bridge_bytes_in_total counter");
        let _ = writeln!(out, "callback_bridge_bytes_in_total {}", g(&self.bytes_in));
        let _ = writeln!(
            out,
            "# HELP callback_bridge_bytes_out_total Response body bytes sent to agents."
        );
        let _ = writeln!(out, "# TYPE callback_bridge_bytes_out_total counter");
        let _ = writeln!(
            out,
            "callback_bridge_bytes_out_total {}",
            g(&self.bytes_out)
        );
        let _ = writeln!(out, "# HELP callback_bridge_upstream_latency_seconds Time from forwarding to the upstream response head.");
        let _ = writeln!(
            out,
            "# TYPE callback_bridge_upstream_latency_seconds histogram"
        );
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "callback_bridge_upstream_latency_seconds_bucket{{le=\"{bound}\"}} {}",
                g(&self.latency_buckets[i])
            );
        }
        let count = g(&self.latency_count);
        let _ = writeln!(
            out,
            "callback_bridge_upstream_latency_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "callback_bridge_upstream_latency_seconds_sum {}",
            g(&self.latency_sum_us) as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "callback_bridge_upstream_latency_seconds_count {count}"
        );
        out
    }

    /// The exit-summary line of SPEC §3.
    pub fn exit_line(&self, reason: &str) -> String {
        #[derive(serde::Serialize)]
        struct ExitLine<'a> {
            event: &'static str,
            reason: &'a str,
            requests: u64,
            forwarded: u64,
            denied: BTreeMap<&'static str, u64>,
            upstream_errors: u64,
        }
        let line = ExitLine {
            event: "exit",
            reason,
            requests: self.requests.load(Ordering::Relaxed),
            forwarded: self.forwarded.load(Ordering::Relaxed),
            denied: self
                .denied
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            upstream_errors: self.upstream_errors.load(Ordering::Relaxed),
        };
        serde_json::to_string(&line).unwrap_or_default()
    }
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The keys of a query string, for the access log (values are never logged).
pub fn query_keys(target: &str) -> String {
    let Some((_, query)) = target.split_once('?') else {
        return String::new();
    };
    let mut keys = String::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let key = pair.split_once('=').map_or(pair, |(k, _)| k);
        if !keys.is_empty() {
            keys.push(',');
        }
        // Keys are untrusted too: keep them short and printable.
        keys.extend(key.chars().take(64).filter(|c| c.is_ascii_graphic()));
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_keys_drop_values() {
        assert_eq!(query_keys("/a?x=secret&y=2&flag"), "x,y,flag");
        assert_eq!(query_keys("/a"), "");
        assert_eq!(query_keys("/a?"), "");
    }

    #[test]
    fn exit_line_counts_denials_by_code() {
        let m = Metrics::default();
        m.requests.fetch_add(2, Ordering::Relaxed);
        m.record_outcome("-", 401, Some(DenyCode::InvalidToken));
        m.record_outcome("agents.me", 200, None);
        let v: serde_json::Value = serde_json::from_str(&m.exit_line("signal")).unwrap();
        assert_eq!(v["reason"], "signal");
        assert_eq!(v["requests"], 2);
        assert_eq!(v["denied"]["invalid_token"], 1);
        assert!(m.render().contains("code=\"invalid_token\"} 1"));
    }
}
