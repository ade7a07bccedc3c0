//! Running one operation in the sandbox: `<exec prefix…> '<script>'`, capped in time and output.
//!
//! Promise: every command ends within [`COMMAND_TIMEOUT`] (it is killed otherwise); its stdout is
//! read up to a caller-given bound and never beyond; its environment is the relay's minus every
//! secret the relay knows of (the upstream credential's variable, the bridge token's, every
//! `CALLBACK_BRIDGE_*`), and nothing secret is ever in its argv. Attacks defended: a sandbox that
//! floods stdout or stderr, hangs, or reads the environment of the exec tool (`docker exec`,
//! `kubectl exec` and `ssh` may forward parts of it).

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

use super::scripts::{self, Flow};
use crate::config::Scrub;
use crate::transport::diag::{describe_argv, summarize_stderr, StderrTail};

/// Longest run of one command (docs/reference.md §6.1). The idle wait inside the sandbox is 5 s; the rest is
/// room for a slow exec channel (a `kubectl exec` through a busy API server) and large bodies.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of stdout read at a time and handed to the sink: the only stdout buffer the relay holds
/// for a running command.
const STDOUT_CHUNK: usize = 64 * 1024;

/// Why a command did not produce a usable result.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("command did not finish within {0:?}")]
    Timeout(Duration),
    #[error("command printed more than {0} bytes")]
    TooMuchOutput(usize),
    #[error("command printed nothing for {0:?} in the middle of its output")]
    Stalled(Duration),
    /// The reader of its output asked to stop it (reported as [`Output::stopped`]).
    #[error("command stopped by the reader of its output")]
    Stopped,
    #[error("command I/O failed: {0}")]
    Io(#[from] std::io::Error),
}

/// What a finished command left.
#[derive(Debug)]
pub struct Output {
    /// Its stdout ([`Runner::run`]); empty when a sink consumed it ([`Runner::run_streaming`]).
    pub stdout: Vec<u8>,
    /// The sink asked to stop: the command was killed before its end.
    pub stopped: bool,
    pub success: bool,
    /// How the command exited (`exit status: 1`, `signal: 9`).
    pub status: std::process::ExitStatus,
    /// The end of stderr, summarized for the log (`diag::summarize_stderr`: the last few lines,
    /// no shell trace, no echo of the script; sandbox-controlled text: log it, never trust it).
    pub stderr: String,
    /// The exec prefix as logged ([`Runner::describe`]).
    pub command: String,
}

/// Why a sandbox command gave the relay nothing usable.
#[derive(Debug, thiserror::Error)]
pub enum CommandFailure {
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// Its output carried a file beyond the envelope (refused) or broken base64: it was
    /// stopped before its end.
    #[error("the {what} command was stopped: its output carried a file beyond the envelope or broken base64")]
    Stopped { what: &'static str },
    /// It ran and failed, or its output ended early. `command` is the exec prefix as logged
    /// (never the script); `stderr` is sandbox-controlled text, summarized.
    #[error("the {what} command ({command}) {}", failure_text(.status, .stderr))]
    Failed {
        what: &'static str,
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// `failed (exit status: 1): <stderr>`, `failed (signal: 9 (SIGKILL); no stderr)`, or, for a
/// command that exited 0 without finishing its output, `ended its output early (…)`.
fn failure_text(status: &std::process::ExitStatus, stderr: &str) -> String {
    let what = if status.success() {
        "ended its output early"
    } else {
        "failed"
    };
    if stderr.is_empty() {
        format!("{what} ({status}; no stderr)")
    } else {
        format!("{what} ({status}): {stderr}")
    }
}

impl CommandFailure {
    pub fn failed(what: &'static str, out: &Output) -> CommandFailure {
        CommandFailure::Failed {
            what,
            command: out.command.clone(),
            status: out.status,
            stderr: out.stderr.clone(),
        }
    }

    /// Whether the command was ended by SIGTERM, SIGINT or SIGHUP: what a supervisor, `timeout`
    /// or Ctrl-C sends to the relay's whole process group when it stops the relay, so usually
    /// part of an ordinary stop (the relay itself only ever kills with SIGKILL).
    pub fn ended_by_stop_signal(&self) -> bool {
        use std::os::unix::process::ExitStatusExt;
        match self {
            CommandFailure::Failed { status, .. } => {
                matches!(status.signal(), Some(1) | Some(2) | Some(15))
            }
            _ => false,
        }
    }
}

/// What a command reads on its stdin.
#[derive(Debug, Default)]
pub enum Stdin {
    /// Nothing (`/dev/null`).
    #[default]
    None,
    /// These bytes, then end of file.
    Data(Vec<u8>),
    /// Bytes given later (a spare command, started before it has work): the pipe stays open,
    /// empty, until they come; if the sender is dropped instead, the command reads end of file.
    Later(tokio::sync::oneshot::Receiver<Vec<u8>>),
}

impl From<Option<Vec<u8>>> for Stdin {
    fn from(data: Option<Vec<u8>>) -> Stdin {
        data.map_or(Stdin::None, Stdin::Data)
    }
}

/// The exec prefix and the environment hygiene of every spawned command.
#[derive(Debug, Clone)]
pub struct Runner {
    prefix: Vec<String>,
    scrub: Scrub,
}

impl Runner {
    /// `prefix` is non-empty (clap requires the command after `--`).
    pub fn new(prefix: Vec<String>, scrub: Scrub) -> Runner {
        Runner { prefix, scrub }
    }

    /// The exec prefix for logs and error messages: its arguments (never the script appended
    /// to them), bounded, with the value of every `NAME=value` argument hidden (`-e KEY=…`,
    /// `env VAR=…`: the prefix may set variables, and their values are not the log's business).
    pub fn describe(&self) -> String {
        describe_argv(&self.prefix)
    }

    /// Runs `prefix… script` with `stdin` (or none), keeping at most `stdout_cap` bytes of stdout.
    pub async fn run(
        &self,
        script: String,
        stdin: Option<Vec<u8>>,
        stdout_cap: usize,
    ) -> Result<Output, ExecError> {
        let mut kept = Vec::new();
        let mut sink = |chunk: &[u8]| {
            kept.extend_from_slice(chunk);
            Flow::Continue
        };
        let mut out = self
            .run_streaming(script, stdin.into(), stdout_cap, None, &mut sink)
            .await?;
        out.stdout = kept;
        Ok(out)
    }

    /// Runs `prefix… script` with `stdin` (or none), handing its stdout to `sink` as it arrives
    /// (nothing is buffered here): at most `stdout_cap` bytes in all, and the command is killed
    /// as soon as `sink` answers [`Flow::Stop`] (the output then counts as cut off). With
    /// `stall`, once the command has printed something it must keep printing: a pause longer
    /// than `stall` kills it (a take whose read of a claimed file blocks, e.g. on a FIFO swapped
    /// in, costs `stall`, not the whole [`COMMAND_TIMEOUT`]).
    pub async fn run_streaming(
        &self,
        script: String,
        stdin: Stdin,
        stdout_cap: usize,
        stall: Option<Duration>,
        sink: &mut (dyn FnMut(&[u8]) -> Flow + Send),
    ) -> Result<Output, ExecError> {
        // Kept after the spawn to recognize an echo of it in stderr (`sh -v`), never logged.
        let script = scripts::for_prefix(&self.prefix, script);
        let (program, args) = self
            .prefix
            .split_first()
            .map(|(p, a)| (p.as_str(), a))
            .unwrap_or(("sh", &[]));
        let mut cmd = Command::new(program);
        cmd.args(args)
            .arg(&script)
            .stdin(if matches!(stdin, Stdin::None) {
                Stdio::null()
            } else {
                Stdio::piped()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        self.scrub.apply(&mut cmd);
        let mut child = cmd.spawn().map_err(|source| ExecError::Spawn {
            program: program.to_owned(),
            source,
        })?;
        let stdin_task = match (child.stdin.take(), stdin) {
            (Some(mut pipe), Stdin::Data(data)) => Some(tokio::spawn(async move {
                // A command that exits without reading its stdin is not an error here: its
                // output says what it did.
                let _ = pipe.write_all(&data).await;
                let _ = pipe.shutdown().await;
            })),
            (Some(mut pipe), Stdin::Later(rx)) => Some(tokio::spawn(async move {
                if let Ok(data) = rx.await {
                    let _ = pipe.write_all(&data).await;
                }
                let _ = pipe.shutdown().await;
            })),
            _ => None,
        };
        let mut stdout = child.stdout.take();
        let mut stderr = child.stderr.take();
        let work = async {
            let read_out = async {
                let mut total = 0usize;
                if let Some(out) = stdout.as_mut() {
                    let mut chunk = vec![0u8; STDOUT_CHUNK];
                    loop {
                        let n = match stall.filter(|_| total > 0) {
                            Some(d) => tokio::time::timeout(d, out.read(&mut chunk))
                                .await
                                .map_err(|_| ExecError::Stalled(d))??,
                            None => out.read(&mut chunk).await?,
                        };
                        if n == 0 {
                            break;
                        }
                        total += n;
                        if total > stdout_cap {
                            // Stop at once: the command is killed below, not waited for.
                            return Err(ExecError::TooMuchOutput(stdout_cap));
                        }
                        if sink(&chunk[..n]) == Flow::Stop {
                            // Like too much output: the command is killed below.
                            return Err(ExecError::Stopped);
                        }
                    }
                }
                Ok::<_, ExecError>(())
            };
            let read_err = async {
                let mut tail = StderrTail::default();
                if let Some(err) = stderr.as_mut() {
                    let mut chunk = [0u8; 1024];
                    loop {
                        let n = err.read(&mut chunk).await?;
                        if n == 0 {
                            break;
                        }
                        tail.push(&chunk[..n]);
                    }
                }
                Ok::<_, ExecError>(tail)
            };
            let ((), err) = tokio::try_join!(read_out, read_err)?;
            let status = child.wait().await?;
            Ok::<_, ExecError>((err, status))
        };
        let result = tokio::time::timeout(COMMAND_TIMEOUT, work).await;
        if let Some(task) = stdin_task {
            task.abort();
        }
        match result {
            Err(_) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                Err(ExecError::Timeout(COMMAND_TIMEOUT))
            }
            Ok(Err(ExecError::Stopped)) => {
                let _ = child.start_kill();
                let status = child.wait().await?;
                Ok(Output {
                    stdout: Vec::new(),
                    stopped: true,
                    success: false,
                    status,
                    stderr: String::new(),
                    command: self.describe(),
                })
            }
            Ok(Err(e)) => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                Err(e)
            }
            Ok(Ok((tail, status))) => Ok(Output {
                stdout: Vec::new(),
                stopped: false,
                success: status.success(),
                status,
                stderr: summarize_stderr(&tail, Some(&script)),
                command: self.describe(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh() -> Vec<String> {
        vec!["sh".to_owned(), "-c".to_owned()]
    }

    #[tokio::test]
    async fn runs_the_script_with_stdin_and_reports_failure() {
        let r = Runner::new(sh(), Scrub::default());
        let out = r
            .run(
                "cat; echo done; exit 3".into(),
                Some(b"in\n".to_vec()),
                1024,
            )
            .await
            .unwrap();
        assert_eq!(out.stdout, b"in\ndone\n");
        assert!(!out.success);
    }

    #[tokio::test]
    async fn stops_a_command_that_prints_too_much() {
        let r = Runner::new(sh(), Scrub::default());
        let started = std::time::Instant::now();
        let err = r
            .run("while :; do echo xxxxxxxxxxxxxxxx; done".into(), None, 1000)
            .await
            .unwrap_err();
        assert!(matches!(err, ExecError::TooMuchOutput(1000)), "{err}");
        assert!(
            started.elapsed() < COMMAND_TIMEOUT,
            "not left to the time cap"
        );
    }

    #[tokio::test]
    async fn removes_the_scrubbed_variables() {
        let r = Runner::new(sh(), Scrub::names(&["HOME", "PATH"]));
        // `env` shows what the command inherited (sh itself re-creates a default PATH).
        let out = r
            .run("/usr/bin/env; echo end".into(), None, 1 << 20)
            .await
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.ends_with("end\n"), "{text}");
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("HOME=") || l.starts_with("PATH=")),
            "{text}"
        );
    }
}
