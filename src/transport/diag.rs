//! What a relay logs about the commands it runs (the queue relay's sandbox commands, the stdio
//! relay's gateway command): the command as an operator recognizes it, without the values it may
//! set, and the end of its stderr, bounded, without the relay's own script.
//!
//! Promise: a log line about a command carries at most a few hundred bytes of it, never the
//! script the relay appended to the exec prefix (not even as a shell's trace or echo of it) and
//! never the value of a `NAME=value` argument.

/// Stderr kept while a command runs: its last bytes (older ones are read and dropped), for the
/// failure message.
const STDERR_TAIL: usize = 4096;
/// What a failure message carries of that tail ([`summarize_stderr`]): its last lines, at most
/// this many, each cut at [`STDERR_LINE_MAX`] bytes.
const STDERR_REPORT_LINES: usize = 3;
const STDERR_LINE_MAX: usize = 160;
/// The exec prefix as logged ([`Runner::describe`]): each argument cut at this many bytes, at
/// most [`PREFIX_ARGS_MAX`] arguments.
const PREFIX_ARG_MAX: usize = 48;
const PREFIX_ARGS_MAX: usize = 8;

/// The last [`STDERR_TAIL`] bytes of a command's stderr, and how much it wrote in all.
#[derive(Debug, Default)]
pub struct StderrTail {
    kept: std::collections::VecDeque<u8>,
    total: u64,
}

impl StderrTail {
    pub fn push(&mut self, bytes: &[u8]) {
        self.total += bytes.len() as u64;
        let bytes = &bytes[bytes.len().saturating_sub(STDERR_TAIL)..];
        let excess = (self.kept.len() + bytes.len()).saturating_sub(STDERR_TAIL);
        self.kept.drain(..excess);
        self.kept.extend(bytes);
    }

    /// Whether older bytes were dropped.
    fn cut(&self) -> bool {
        self.total > self.kept.len() as u64
    }
}

/// What a log line carries of a command's stderr: its last [`STDERR_REPORT_LINES`] lines, each
/// at most [`STDERR_LINE_MAX`] bytes, control characters blanked, joined with ` | ` into one
/// line. Never logged: shell trace lines (`+ …`: an exec prefix like `sh -x -c` traces every
/// line of the relay's script into stderr) and lines of `script` itself (`sh -v` echoes it);
/// how many were left out is said instead.
pub fn summarize_stderr(tail: &StderrTail, script: Option<&str>) -> String {
    let (front, back) = tail.kept.as_slices();
    let bytes = [front, back].concat();
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    if tail.cut() && !lines.is_empty() {
        // The first line kept may be the end of a longer one.
        lines.remove(0);
    }
    let mut hidden = 0usize;
    let mut shown: Vec<&str> = Vec::new();
    for line in lines {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        let echo = script.is_some_and(|s| s.lines().any(|l| l.trim() == trimmed));
        if trimmed.starts_with('+') || echo {
            hidden += 1;
            continue;
        }
        shown.push(trimmed);
    }
    let earlier = shown.len().saturating_sub(STDERR_REPORT_LINES);
    let mut out: Vec<String> = shown[earlier..]
        .iter()
        .map(|l| {
            let mut end = l.len().min(STDERR_LINE_MAX);
            while !l.is_char_boundary(end) {
                end -= 1;
            }
            let mut line: String = l[..end]
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            if end < l.len() {
                line.push('…');
            }
            line
        })
        .collect();
    if earlier > 0 || (tail.cut() && !out.is_empty()) {
        out.insert(0, "…".to_owned());
    }
    if hidden > 0 {
        out.push(format!(
            "({hidden} lines of shell trace or script echo not logged)"
        ));
    }
    out.join(" | ")
}

/// An argv for logs: at most [`PREFIX_ARGS_MAX`] arguments, each cut at [`PREFIX_ARG_MAX`]
/// bytes, `NAME=value` shown as `NAME=…`, shell-quoted where needed.
pub fn describe_argv(argv: &[String]) -> String {
    let mut words: Vec<String> = argv
        .iter()
        .take(PREFIX_ARGS_MAX)
        .map(|arg| {
            let mut arg = match arg.split_once('=') {
                Some((name, _)) => format!("{name}=…"),
                None => arg.clone(),
            };
            if arg.len() > PREFIX_ARG_MAX {
                let mut end = PREFIX_ARG_MAX;
                while !arg.is_char_boundary(end) {
                    end -= 1;
                }
                arg.truncate(end);
                arg.push('…');
            }
            let plain = !arg.is_empty()
                && arg
                    .chars()
                    .all(|c| c.is_alphanumeric() || "-_./:,@%+=…".contains(c));
            if plain {
                arg
            } else {
                crate::transport::queue::scripts::sh_quote(
                    &arg.replace(|c: char| c.is_control(), " "),
                )
            }
        })
        .collect();
    if argv.len() > PREFIX_ARGS_MAX {
        words.push(format!(
            "… ({} more arguments)",
            argv.len() - PREFIX_ARGS_MAX
        ));
    }
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tail(bytes: &[u8]) -> StderrTail {
        let mut t = StderrTail::default();
        for chunk in bytes.chunks(700) {
            t.push(chunk);
        }
        t
    }

    #[test]
    fn keeps_the_last_lines_one_line_bounded() {
        let text = "first\nsecond\nthird\nfourth\x1b[31m red\n";
        let s = summarize_stderr(&tail(text.as_bytes()), None);
        assert_eq!(s, "… | second | third | fourth [31m red");
        assert_eq!(summarize_stderr(&tail(b""), None), "");
        let long = "x".repeat(10 * STDERR_TAIL);
        let s = summarize_stderr(&tail(format!("{long}\nthe end\n").as_bytes()), None);
        assert_eq!(s, "… | the end");
        let s = summarize_stderr(&tail(long.as_bytes()), None);
        assert!(s.len() < STDERR_LINE_MAX + 16, "{s}");
    }

    #[test]
    fn shell_trace_and_script_echo_are_counted_not_logged() {
        let script = "cd -P -- '/q' || exit 3\nrefuse() { echo 'a distinctive line'; }\n";
        let stderr = "+ cd -P -- /q\n++ ls -di .\ncd -P -- '/q' || exit 3\nrefuse() { echo 'a distinctive line'; }\nsh: 1: cannot open: Permission denied\n";
        let s = summarize_stderr(&tail(stderr.as_bytes()), Some(script));
        assert_eq!(
            s,
            "sh: 1: cannot open: Permission denied | (4 lines of shell trace or script echo not logged)"
        );
    }

    #[test]
    fn argv_values_of_assignments_are_hidden_and_the_argv_bounded() {
        let argv: Vec<String> = [
            "docker",
            "exec",
            "-e",
            "KEY=s3cret",
            "--env=TOKEN=s3cret",
            "my container",
            "sh",
            "-c",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            describe_argv(&argv),
            "docker exec -e KEY=… --env=… 'my container' sh -c"
        );
        let many: Vec<String> = (0..20).map(|i| format!("a{i}")).collect();
        assert!(describe_argv(&many).ends_with("a7 … (12 more arguments)"));
        let long = vec!["y".repeat(500)];
        assert_eq!(describe_argv(&long).len(), PREFIX_ARG_MAX + '…'.len_utf8());
    }
}
