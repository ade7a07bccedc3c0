//! The queue transport (docs/reference.md §6.1): a [`Sandbox`] is a test's working area holding the queue
//! directory; it starts the real gateway and relay on it and waits for their readiness lines.
//!
//! The gateway gets only what a sandbox would give it: the bridge token, the queue directory and
//! its own options, in an otherwise empty environment. The relay holds the upstream URL and
//! credential and reaches the queue through an exec prefix (`sh -c`, or a wrapper of it).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::client::Agent;
use super::process::{bridge_command_bare, Proc};
use super::{BRIDGE_TOKEN, RUN_ID, UPSTREAM_TOKEN};

/// A test's working area: the queue directory (the "sandbox") and the files around it.
pub struct Sandbox {
    pub tmp: tempfile::TempDir,
}

impl Default for Sandbox {
    fn default() -> Self {
        Self::new()
    }
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    pub fn queue(&self) -> PathBuf {
        self.tmp.path().join("queue")
    }

    pub fn queue_str(&self) -> String {
        self.queue().display().to_string()
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub fn requests(&self) -> PathBuf {
        self.queue().join("requests")
    }

    pub fn responses(&self) -> PathBuf {
        self.queue().join("responses")
    }

    /// Names in a directory, sorted (empty if it does not exist).
    pub fn list(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Starts `gateway --transport queue --queue-dir Q ARGS` with the bridge token
    /// [`BRIDGE_TOKEN`] and nothing else (no upstream, no credential); returns it and its
    /// agent-facing endpoint once its readiness line is printed.
    pub fn gateway(&self, args: &[&str]) -> (Proc, Agent) {
        self.gateway_env(args, &[])
    }

    /// [`Sandbox::gateway`] with additional environment variables (limits, log format).
    pub fn gateway_env(&self, args: &[&str], env: &[(&str, &str)]) -> (Proc, Agent) {
        let queue = self.queue_str();
        let mut full = vec![
            "gateway",
            "--transport",
            "queue",
            "--queue-dir",
            queue.as_str(),
        ];
        full.extend_from_slice(args);
        let mut all_env = vec![
            ("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN),
            ("CALLBACK_BRIDGE_LOG_FORMAT", "json"),
        ];
        all_env.extend_from_slice(env);
        let mut p = Proc::spawn(bridge_command_bare(&full, &all_env), "queue gateway");
        let ready = p.wait_event("ready");
        let url = ready["url"]
            .as_str()
            .unwrap_or_else(|| panic!("gateway readiness line without url: {ready}"));
        (p, Agent::at_url(url))
    }

    /// Starts `relay --transport queue --upstream UPSTREAM --queue-dir Q ARGS -- PREFIX…` with
    /// the upstream credential [`UPSTREAM_TOKEN`] and run id [`RUN_ID`] in its environment, and
    /// waits for its readiness line.
    pub fn relay(&self, upstream: &str, prefix: &[&str], args: &[&str]) -> Proc {
        self.relay_env(upstream, prefix, args, &[])
    }

    /// [`Sandbox::relay`] with additional environment variables.
    pub fn relay_env(
        &self,
        upstream: &str,
        prefix: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Proc {
        let mut p = Proc::spawn(
            self.relay_command(upstream, prefix, args, env),
            "queue relay",
        );
        p.wait_event("ready");
        p
    }

    /// The command [`Sandbox::relay_env`] spawns, for a test that spawns it itself.
    pub fn relay_command(
        &self,
        upstream: &str,
        prefix: &[&str],
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Command {
        let queue = self.queue_str();
        let mut full = vec![
            "relay",
            "--transport",
            "queue",
            "--upstream",
            upstream,
            "--queue-dir",
            queue.as_str(),
        ];
        full.extend_from_slice(args);
        full.push("--");
        full.extend_from_slice(prefix);
        let mut all_env = vec![
            ("CALLBACK_BRIDGE_UPSTREAM_TOKEN", UPSTREAM_TOKEN),
            ("PAPERCLIP_RUN_ID", RUN_ID),
            ("CALLBACK_BRIDGE_LOG_FORMAT", "json"),
        ];
        all_env.extend_from_slice(env);
        bridge_command_bare(&full, &all_env)
    }

    /// Writes a counting exec prefix (`count.sh -c`, used like `sh -c`): it logs each command's
    /// first line (the operation), the requests it took and the responses it wrote, its argv and
    /// environment, and runs the script with `sh -c`.
    pub fn counting_prefix(&self) -> Vec<String> {
        let log = self.path("commands.log");
        let env_log = self.path("commands.env");
        let script = format!(
            r#"#!/bin/sh
env >> '{env}'
printf 'ARGV %s\n' "$0" "$@" >> '{env}'
echo "S $$" >> '{order}'
[ "$1" = -c ] && shift
op=$(printf '%s\n' "$1" | sed -n 1p)
out=$(sh -c "$1"); rc=$?
taken=$(printf '%s\n' "$out" | grep -c '^:[FB] ')
written=$(printf '%s\n' "$out" | grep -c '^:W ')
printf '%s|%s|%s\n' "$op" "$taken" "$written" >> '{log}'
echo "E $$ $written" >> '{order}'
printf '%s\n' "$out"
exit $rc
"#,
            env = env_log.display(),
            log = log.display(),
            order = self.path("commands.order").display()
        );
        let path = self.path("count.sh");
        std::fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        vec![path.display().to_string(), "-c".to_owned()]
    }

    /// The counting prefix's log: (operation, entries carried: requests taken plus responses
    /// written) per command.
    pub fn commands(&self) -> Vec<(String, usize)> {
        self.command_log()
            .into_iter()
            .map(|c| (c.op, c.taken + c.written))
            .collect()
    }

    /// The counting prefix's start and end events in order: `(started, pid, responses
    /// written)` (`written` is 0 for a start).
    pub fn command_order(&self) -> Vec<(bool, u32, usize)> {
        std::fs::read_to_string(self.path("commands.order"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut f = l.split(' ');
                let started = f.next()? == "S";
                let pid = f.next()?.parse().ok()?;
                let written = f.next().map_or(Some(0), |w| w.parse().ok())?;
                Some((started, pid, written))
            })
            .collect()
    }

    /// The counting prefix's log, one entry per finished command.
    pub fn command_log(&self) -> Vec<CommandRun> {
        std::fs::read_to_string(self.path("commands.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let mut f = l.rsplitn(3, '|');
                let written = f.next()?.parse().ok()?;
                let taken = f.next()?.parse().ok()?;
                let op = f.next()?.trim_start_matches("# callback-bridge queue ");
                Some(CommandRun {
                    op: op.to_owned(),
                    taken,
                    written,
                })
            })
            .collect()
    }
}

/// One command run through the counting prefix: its operation (`take`, `put`, `put-take`,
/// `start`), the requests it took and the responses it wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRun {
    pub op: String,
    pub taken: usize,
    pub written: usize,
}
