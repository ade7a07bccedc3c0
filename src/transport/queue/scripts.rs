//! The sandbox side of the relay: the POSIX `sh` scripts (or `callback-bridge queue …` helper
//! command lines) the relay runs through its exec prefix, and the line protocol they print.
//!
//! Promise: the scripts need only `sh`, `mkdir`, `mv`, `rm`, `cat`, `ls`, `sleep` and `base64`;
//! every value spliced into a script is a number, a validated id or single-quoted; a request is
//! claimed by one `mv` (rename) in the same command that reads it; a response is published by
//! `mv` only while the `.claimed` file exists and no response exists yet. Attacks defended: file
//! names chosen by the sandbox (only `[A-Za-z0-9_-]` ids are touched, symlinks and other
//! non-regular files are skipped by the listing), symlinks planted at temp names (written with
//! `set -C`, i.e. `O_EXCL`), oversized files (never read, reported with `:B`), and a hostile
//! stdout (the parser accepts only its own markers and base64, and the runner caps the size).
//!
//! Output protocol, one marker per line:
//! `:F <id>` then base64 lines then `:E <status>` — a claimed request and its bytes;
//! `:B <id> <size>` — claimed but larger than the envelope, not read; `:M` — more requests wait;
//! `:R missing|other` — `relay.json` is not this relay's announcement, nothing more claimed;
//! `:W <id>` / `:S <id>` / `:X <id>` — response written / skipped (nobody waits, or already
//! answered) / failed; `:D` — the command finished its work.

use std::fmt::Write as _;

use base64::Engine;

use super::file::valid_id;

/// How the relay drives the sandbox side.
#[derive(Debug, Clone)]
pub enum Ops {
    /// POSIX `sh` scripts using only the tools of docs/reference.md §6.1.
    Sh,
    /// The `callback-bridge` binary at this path inside the sandbox (`--sandbox-helper`).
    Helper(String),
}

/// Quotes a string as one `sh` word.
pub fn sh_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Makes `script` run under POSIX `sh` whatever interprets the appended argument. A prefix that
/// ends in `-c` names a shell itself (`sh -c`, `docker exec -i C sh -c`); any other prefix (e.g.
/// `ssh -T HOST`, whose remote login shell may be zsh or fish) gets `exec sh -c '<script>'`.
pub fn for_prefix(prefix: &[String], script: String) -> String {
    if prefix.last().is_some_and(|a| a == "-c") {
        script
    } else {
        format!("exec sh -c {}", sh_quote(&script))
    }
}

/// The interval of the in-sandbox wait loop: the first request file is seen at most this long
/// after it appears. Each iteration forks one `sleep`, so 10 ms costs a few percent of a core
/// while waiting; shorter buys little latency for much more CPU.
pub const SH_POLL_MS: u64 = 10;

/// Settings of a take (or recovery) command.
#[derive(Debug, Clone)]
pub struct TakeParams {
    /// Longest wait for the first request file (0 = do not wait).
    pub wait_ms: u64,
    /// Most files claimed by one command.
    pub max_files: usize,
    /// Most bytes read by one command (the first file is always taken).
    pub max_bytes: u64,
    /// Files larger than this are claimed but not read (`:B`).
    pub envelope: u64,
    /// The claiming relay's `relay.json`: a take claims only while the file still says exactly
    /// this, so a command left running by a killed relay stops claiming once a new relay has
    /// announced itself (its requests would otherwise be claimed by nobody alive).
    pub relay: Option<String>,
}

/// Environment hygiene shared by every script: a fixed `ls -l` format, no noclobber surprises.
const SH_PRELUDE: &str =
    "LC_ALL=C; export LC_ALL; unset TIME_STYLE BLOCK_SIZE LS_BLOCK_SIZE 2>/dev/null\n";

/// The loop that claims (or, for recovery, re-reads) listed files: reads `ls -lntr` output,
/// keeps regular files named `<valid id><suffix>`, and either claims each by rename (`claim`)
/// or, for recovery, skips (and removes) claims that already have a response.
fn listing_loop(params: &TakeParams, suffix: &str, claim: bool) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"  t=0; b=0
  while read -r m l o g s x y z name; do
    case $m in -*) ;; *) continue ;; esac
    case $name in *{suffix}) ;; *) continue ;; esac
    id=${{name%{suffix}}}
    case $id in ''|*[!A-Za-z0-9_-]*) continue ;; esac
    [ ${{#id}} -le 128 ] || continue
    case $s in ''|*[!0-9]*) continue ;; esac
    if [ "$t" -ge {max_files} ]; then echo ':M'; break; fi
    big=0
    if [ ${{#s}} -gt 15 ] || [ "$s" -gt {envelope} ]; then big=1; fi
    if [ "$big" = 0 ] && [ "$t" -gt 0 ] && [ $((b + s)) -gt {max_bytes} ]; then echo ':M'; break; fi
"#,
        max_files = params.max_files,
        envelope = params.envelope,
        max_bytes = params.max_bytes,
    );
    if claim {
        if let Some(relay) = &params.relay {
            let _ = write!(
                s,
                r#"    cur=''; IFS= read -r cur < ../relay.json 2>/dev/null
    if [ "$cur" != {relay} ]; then if [ -z "$cur" ]; then echo ':R missing'; else echo ':R other'; fi; break; fi
"#,
                relay = sh_quote(relay)
            );
        }
        s.push_str("    mv -f -- \"$name\" \"$name.claimed\" 2>/dev/null || continue\n    f=\"$name.claimed\"\n");
    } else {
        s.push_str(
            "    if [ -e \"../responses/$id.json\" ]; then rm -f -- \"$name\"; continue; fi\n    f=\"$name\"\n",
        );
    }
    s.push_str(
        r#"    t=$((t + 1))
    if [ "$big" = 1 ]; then echo ":B $id $s"; continue; fi
    b=$((b + s))
    echo ":F $id"
    base64 < "$f"
    echo ":E $?"
  done
  echo ':D'
"#,
    );
    s
}

/// Claims waiting requests (`requests/<id>.json` → `.claimed`, oldest first by `ls -tr`) and
/// prints them; waits up to `wait_ms` for the first one.
pub fn take(ops: &Ops, dir: &str, p: &TakeParams) -> String {
    if let Ops::Helper(path) = ops {
        let mut s = format!(
            "# callback-bridge queue take\nexec {} queue take --dir {} --wait-ms {} --max-files {} --max-bytes {} --envelope {}",
            sh_quote(path),
            sh_quote(dir),
            p.wait_ms,
            p.max_files,
            p.max_bytes,
            p.envelope
        );
        if let Some(relay) = &p.relay {
            let _ = write!(s, " --relay-json {}", sh_quote(relay));
        }
        return s;
    }
    let polls = p.wait_ms / SH_POLL_MS;
    let mut s = String::from("# callback-bridge queue take\n");
    s.push_str(SH_PRELUDE);
    let _ = write!(
        s,
        r#"q={q}
cd "$q/requests" 2>/dev/null || {{ mkdir -p "$q/requests" "$q/responses" "$q/logs" && cd "$q/requests"; }} || {{ echo ':X no queue directory'; exit 3; }}
n={polls}; w=0
while :; do
  for f in *.json; do
    case ${{f%.json}} in ''|*[!A-Za-z0-9_-]*) continue ;; esac
    if [ -f "$f" ] && [ ! -h "$f" ]; then break 2; fi
  done
  if [ "$n" -le 0 ]; then echo ':D'; exit 0; fi
  if [ "$w" = 0 ] && sleep 0.0{poll:02} 2>/dev/null; then n=$((n - 1)); else w=1; sleep 1; n=$((n - {per_second})); fi
done
ls -lntr 2>/dev/null | {{
"#,
        q = sh_quote(dir),
        poll = SH_POLL_MS,
        per_second = 1000 / SH_POLL_MS,
    );
    s.push_str(&listing_loop(p, ".json", true));
    s.push_str("}\n");
    s
}

/// Prepares the queue, optionally announces the relay (`relay.json`, written atomically), and
/// prints requests left claimed by a previous relay (those with a response are just cleaned up).
pub fn start(ops: &Ops, dir: &str, announce: Option<&str>, p: &TakeParams) -> String {
    if let Ops::Helper(path) = ops {
        let mut s = format!(
            "# callback-bridge queue start\nexec {} queue start --dir {} --max-files {} --max-bytes {} --envelope {}",
            sh_quote(path),
            sh_quote(dir),
            p.max_files,
            p.max_bytes,
            p.envelope
        );
        if let Some(json) = announce {
            let _ = write!(s, " --announce {}", sh_quote(json));
        }
        return s;
    }
    let mut s = String::from("# callback-bridge queue start\n");
    s.push_str(SH_PRELUDE);
    let _ = writeln!(s, "q={}", sh_quote(dir));
    s.push_str(
        "mkdir -p \"$q/requests\" \"$q/responses\" \"$q/logs\" || exit 3\ncd \"$q\" || exit 3\n",
    );
    if let Some(json) = announce {
        let _ = writeln!(
            s,
            "set -C; rm -f relay.json.tmp; printf '%s' {} > relay.json.tmp && mv -f relay.json.tmp relay.json || exit 3; set +C",
            sh_quote(json)
        );
    }
    s.push_str("cd requests || exit 3\nls -lntr 2>/dev/null | {\n");
    s.push_str(&listing_loop(p, ".json.claimed", false));
    s.push_str("}\n");
    s
}

/// Responses are at most this large to travel inside the script (argv); larger ones go on the
/// command's stdin, one per command. Linux caps one argv string at 128 KiB (`MAX_ARG_STRLEN`).
pub const INLINE_RESPONSE_MAX: usize = 32 * 1024;
/// Total inline response bytes in one script: under `MAX_ARG_STRLEN` with room for the rest.
pub const INLINE_SCRIPT_BUDGET: usize = 96 * 1024;

/// Publishes responses: `inline` ones travel in the script; `stdin` (id, length), if any, is read
/// from the command's stdin and published only if all its bytes arrived (an exec channel without
/// stdin, e.g. `docker exec` without `-i`, must not publish an empty answer). Each is written
/// only while `requests/<id>.json.claimed` exists and no response exists; then the `.claimed`
/// files are removed.
pub fn put_sh(dir: &str, inline: &[(&str, &[u8])], stdin: Option<(&str, usize)>) -> String {
    let mut s = String::from("# callback-bridge queue put\n");
    let _ = write!(
        s,
        r#"q={q}
cd "$q" 2>/dev/null || {{ echo ':X no queue directory'; exit 3; }}
[ -d responses ] || mkdir -p responses || exit 3
set -C
d=''
ok() {{
  [ -e "requests/$1.json.claimed" ] && [ ! -e "responses/$1.json" ] && [ ! -h "responses/$1.json" ]
}}
pub() {{
  if ok "$1" && mv -f -- "responses/$1.json.tmp" "responses/$1.json"; then
    d="$d requests/$1.json.claimed"; echo ":W $1"
  else
    rm -f -- "responses/$1.json.tmp"
    if [ -e "responses/$1.json" ]; then d="$d requests/$1.json.claimed"; fi
    echo ":S $1"
  fi
}}
w() {{
  if ok "$1"; then
    rm -f -- "responses/$1.json.tmp"
    if printf '%s\n' "$2" > "responses/$1.json.tmp"; then pub "$1"; else rm -f -- "responses/$1.json.tmp"; echo ":X $1"; fi
  else
    if [ -e "responses/$1.json" ]; then d="$d requests/$1.json.claimed"; fi
    echo ":S $1"
  fi
}}
"#,
        q = sh_quote(dir)
    );
    if let Some((id, len)) = stdin {
        debug_assert!(valid_id(id));
        let _ = write!(
            s,
            r#"rm -f -- "responses/{id}.json.tmp"
if cat > "responses/{id}.json.tmp" && set -- $(ls -ln "responses/{id}.json.tmp") && [ "$5" = {len} ]; then pub {id}; else rm -f -- "responses/{id}.json.tmp"; echo ":X {id}"; fi
"#
        );
    }
    for (id, json) in inline {
        debug_assert!(valid_id(id));
        // Response JSON is compact (no raw newlines) and UTF-8; the trailing newline is added
        // by printf, as Paperclip writes it.
        let text = String::from_utf8_lossy(json);
        let text = text.trim_end_matches('\n');
        let _ = writeln!(s, "w {id} {}", sh_quote(text));
    }
    s.push_str("[ -z \"$d\" ] || rm -f $d\necho ':D'\n");
    s
}

/// The helper's put: every response travels on stdin as `<id> <len>\n<len bytes>\n`.
pub fn put_helper(path: &str, dir: &str) -> String {
    format!(
        "# callback-bridge queue put\nexec {} queue put --dir {}",
        sh_quote(path),
        sh_quote(dir)
    )
}

/// Frames responses for the helper's put.
pub fn put_helper_stdin(items: &[(&str, &[u8])]) -> Vec<u8> {
    let total: usize = items.iter().map(|(id, b)| id.len() + b.len() + 24).sum();
    let mut out = Vec::with_capacity(total);
    for (id, bytes) in items {
        out.extend_from_slice(format!("{id} {}\n", bytes.len()).as_bytes());
        out.extend_from_slice(bytes);
        out.push(b'\n');
    }
    out
}

/// One entry of a take or recovery listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// A claimed request and its bytes.
    File { id: String, bytes: Vec<u8> },
    /// A claimed request larger than the envelope; not read.
    TooLarge { id: String, size: u64 },
    /// Claimed, but it could not be read (the gateway withdrew it, or the output was cut off).
    Unreadable { id: String },
}

impl Taken {
    pub fn id(&self) -> &str {
        match self {
            Taken::File { id, .. } | Taken::TooLarge { id, .. } | Taken::Unreadable { id } => id,
        }
    }
}

/// A parsed take or recovery output.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TakeOutput {
    pub items: Vec<Taken>,
    /// `:M`: more requests were waiting than one command takes.
    pub more: bool,
    /// `:D`: the command got to its end (else it was cut off).
    pub complete: bool,
    /// `:R missing` / `:R other`: `relay.json` is gone / names another relay; nothing more
    /// was claimed.
    pub announcement: Option<Announcement>,
}

/// What a take found in `relay.json` when it was not this relay's announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announcement {
    Missing,
    Other,
}

/// Parses take/recovery output. Unknown lines are ignored; an entry without its `:E 0` is
/// reported as unreadable.
pub fn parse_take(out: &[u8]) -> TakeOutput {
    let mut result = TakeOutput::default();
    let mut current: Option<(String, Vec<u8>)> = None;
    let engine = &base64::engine::general_purpose::STANDARD;
    for line in out.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(rest) = line.strip_prefix(b":") {
            let text = String::from_utf8_lossy(rest);
            let mut words = text.split(' ');
            let tag = words.next().unwrap_or("");
            if tag == "E" {
                if let Some((id, b64)) = current.take() {
                    let ok = words.next() == Some("0");
                    match (ok, engine.decode(&b64)) {
                        (true, Ok(bytes)) => result.items.push(Taken::File { id, bytes }),
                        _ => result.items.push(Taken::Unreadable { id }),
                    }
                }
                continue;
            }
            if let Some((id, _)) = current.take() {
                result.items.push(Taken::Unreadable { id });
            }
            match tag {
                "F" => {
                    if let Some(id) = words.next().filter(|id| valid_id(id)) {
                        current = Some((id.to_owned(), Vec::new()));
                    }
                }
                "B" => {
                    let id = words.next().filter(|id| valid_id(id));
                    let size = words.next().and_then(|s| s.parse::<u64>().ok());
                    if let Some(id) = id {
                        result.items.push(Taken::TooLarge {
                            id: id.to_owned(),
                            size: size.unwrap_or(u64::MAX),
                        });
                    }
                }
                "M" => result.more = true,
                "R" => {
                    result.announcement = Some(if words.next() == Some("missing") {
                        Announcement::Missing
                    } else {
                        Announcement::Other
                    })
                }
                "D" => result.complete = true,
                _ => {}
            }
        } else if let Some((_, b64)) = current.as_mut() {
            b64.extend(line.iter().filter(|b| !b.is_ascii_whitespace()));
        }
    }
    if let Some((id, _)) = current {
        result.items.push(Taken::Unreadable { id });
    }
    // One id appears at most once: a hostile stdout could repeat an entry.
    let mut seen = std::collections::HashSet::new();
    result.items.retain(|t| seen.insert(t.id().to_owned()));
    result
}

/// A parsed put output.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PutOutput {
    pub written: Vec<String>,
    pub skipped: Vec<String>,
    pub failed: Vec<String>,
    pub complete: bool,
}

pub fn parse_put(out: &[u8]) -> PutOutput {
    let mut result = PutOutput::default();
    for line in out.split(|&b| b == b'\n') {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end();
        let mut words = text.split(' ');
        let (tag, id) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
        let id = id.to_owned();
        match tag {
            ":W" if valid_id(&id) => result.written.push(id),
            ":S" if valid_id(&id) => result.skipped.push(id),
            ":X" if valid_id(&id) => result.failed.push(id),
            ":D" => result.complete = true,
            _ => {}
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_single_quotes() {
        assert_eq!(sh_quote("a'b"), "'a'\\''b'");
        assert_eq!(sh_quote(""), "''");
    }

    #[test]
    fn wraps_only_prefixes_that_are_not_a_shell() {
        let sh = vec!["sh".to_owned(), "-c".to_owned()];
        assert_eq!(for_prefix(&sh, "echo".into()), "echo");
        let ssh = vec!["ssh".to_owned(), "-T".to_owned(), "h".to_owned()];
        assert_eq!(
            for_prefix(&ssh, "echo 'x'".into()),
            "exec sh -c 'echo '\\''x'\\'''"
        );
    }

    #[test]
    fn parses_take_output_and_ignores_noise() {
        let out =
            b"noise\n:F a-1\nAAEC\nAw==\n:E 0\n:B big 999\n:F gone\n:E 2\n:F cut\nAA\n:M\n:D\n";
        let parsed = parse_take(out);
        assert_eq!(
            parsed.items,
            vec![
                Taken::File {
                    id: "a-1".into(),
                    bytes: vec![0, 1, 2, 3]
                },
                Taken::TooLarge {
                    id: "big".into(),
                    size: 999
                },
                Taken::Unreadable { id: "gone".into() },
                Taken::Unreadable { id: "cut".into() },
            ]
        );
        assert!(parsed.more && parsed.complete);
    }

    #[test]
    fn take_output_refuses_bad_ids_and_repeats() {
        let out = b":F ../x\nAA==\n:E 0\n:F a\nAA==\n:E 0\n:F a\nAQ==\n:E 0\n";
        let parsed = parse_take(out);
        assert_eq!(
            parsed.items,
            vec![Taken::File {
                id: "a".into(),
                bytes: vec![0]
            }]
        );
        assert!(!parsed.complete);
    }

    fn sh(script: &str, stdin: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap().stdout
    }

    fn params(relay: Option<&str>) -> TakeParams {
        TakeParams {
            wait_ms: 0,
            max_files: 16,
            max_bytes: 1 << 20,
            envelope: 100,
            relay: relay.map(str::to_owned),
        }
    }

    fn queue() -> (tempfile::TempDir, String) {
        let d = tempfile::tempdir().unwrap();
        for sub in ["requests", "responses"] {
            std::fs::create_dir(d.path().join(sub)).unwrap();
        }
        let q = d.path().to_str().unwrap().to_owned();
        (d, q)
    }

    #[test]
    fn sh_take_claims_valid_regular_files_oldest_first() {
        let (d, q) = queue();
        let r = d.path().join("requests");
        std::fs::write(d.path().join("relay.json"), "{\"me\":1}").unwrap();
        std::fs::write(r.join("b.json"), "second").unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(120);
        std::fs::write(r.join("z.json"), "first").unwrap();
        std::fs::File::options()
            .write(true)
            .open(r.join("z.json"))
            .unwrap()
            .set_modified(old)
            .unwrap();
        std::fs::write(r.join("big.json"), vec![b'x'; 101]).unwrap();
        std::fs::write(r.join("bad name.json"), "x").unwrap();
        std::fs::write(r.join("c.json.tmp"), "x").unwrap();
        std::fs::create_dir(r.join("dir.json")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", r.join("link.json")).unwrap();
        let out = parse_take(&sh(&take(&Ops::Sh, &q, &params(Some("{\"me\":1}"))), b""));
        assert!(out.complete);
        let ids: Vec<&str> = out.items.iter().map(Taken::id).collect();
        assert_eq!(ids[0], "z", "oldest first: {ids:?}");
        assert_eq!(
            out.items[0],
            Taken::File {
                id: "z".into(),
                bytes: b"first".to_vec()
            }
        );
        assert!(out.items.contains(&Taken::TooLarge {
            id: "big".into(),
            size: 101
        }));
        assert!(out.items.contains(&Taken::File {
            id: "b".into(),
            bytes: b"second".to_vec()
        }));
        assert_eq!(out.items.len(), 3);
        assert!(r.join("z.json.claimed").exists() && r.join("big.json.claimed").exists());
        assert!(r.join("bad name.json").exists() && r.join("link.json").exists());
    }

    #[test]
    fn sh_take_stops_claiming_once_another_relay_announced_itself() {
        let (d, q) = queue();
        let r = d.path().join("requests");
        std::fs::write(r.join("a.json"), "x").unwrap();
        std::fs::write(d.path().join("relay.json"), "{\"new\":1}").unwrap();
        let out = parse_take(&sh(&take(&Ops::Sh, &q, &params(Some("{\"old\":1}"))), b""));
        assert_eq!(out.announcement, Some(Announcement::Other));
        assert!(out.items.is_empty());
        assert!(r.join("a.json").exists(), "not claimed");
        std::fs::remove_file(d.path().join("relay.json")).unwrap();
        let out = parse_take(&sh(&take(&Ops::Sh, &q, &params(Some("{\"old\":1}"))), b""));
        assert_eq!(out.announcement, Some(Announcement::Missing));
    }

    #[test]
    fn sh_take_waits_only_for_eligible_files() {
        let (d, q) = queue();
        // A directory and a badly named file must not end the wait early.
        std::fs::create_dir(d.path().join("requests/x.json")).unwrap();
        std::fs::write(d.path().join("requests/a b.json"), "x").unwrap();
        let mut p = params(None);
        p.wait_ms = 30;
        let out = parse_take(&sh(&take(&Ops::Sh, &q, &p), b""));
        assert!(out.complete && out.items.is_empty());
    }

    #[test]
    fn sh_start_announces_and_lists_unanswered_claims() {
        let (d, q) = queue();
        let r = d.path().join("requests");
        std::fs::write(r.join("open.json.claimed"), "o").unwrap();
        std::fs::write(r.join("done.json.claimed"), "d").unwrap();
        std::fs::write(d.path().join("responses/done.json"), "{}").unwrap();
        let out = parse_take(&sh(
            &start(&Ops::Sh, &q, Some("{\"a\":\"it's\"}"), &params(None)),
            b"",
        ));
        assert!(out.complete);
        assert_eq!(
            out.items,
            vec![Taken::File {
                id: "open".into(),
                bytes: b"o".to_vec()
            }]
        );
        assert!(
            !r.join("done.json.claimed").exists(),
            "answered claims are cleaned up"
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("relay.json")).unwrap(),
            "{\"a\":\"it's\"}"
        );
    }

    #[test]
    fn sh_put_writes_only_while_claimed_and_unanswered() {
        let (d, q) = queue();
        let r = d.path().join("requests");
        for id in ["a", "big", "c"] {
            std::fs::write(r.join(format!("{id}.json.claimed")), "x").unwrap();
        }
        std::fs::write(d.path().join("responses/c.json"), "earlier").unwrap();
        let big = format!("{{\"body\":\"{}\"}}", "y".repeat(50_000));
        let script = put_sh(
            &q,
            &[("a", b"{\"q\":\"it's\"}\n"), ("gone", b"{}"), ("c", b"{}")],
            Some(("big", big.len())),
        );
        let out = parse_put(&sh(&script, big.as_bytes()));
        assert!(out.complete);
        assert_eq!(out.written, vec!["big", "a"]);
        assert_eq!(out.skipped, vec!["gone", "c"]);
        let read = |n: &str| std::fs::read_to_string(d.path().join("responses").join(n)).unwrap();
        assert_eq!(read("a.json"), "{\"q\":\"it's\"}\n");
        assert_eq!(read("big.json"), big);
        assert_eq!(read("c.json"), "earlier");
        assert!(!d.path().join("responses/gone.json").exists());
        assert_eq!(std::fs::read_dir(&r).unwrap().count(), 0, "claims removed");

        // A response whose stdin did not arrive whole is not published.
        std::fs::write(r.join("cut.json.claimed"), "x").unwrap();
        let out = parse_put(&sh(&put_sh(&q, &[], Some(("cut", 1000))), b"{}"));
        assert_eq!(out.failed, vec!["cut"]);
        assert!(!d.path().join("responses/cut.json").exists());
        assert!(r.join("cut.json.claimed").exists());
    }

    #[test]
    fn parses_put_output() {
        let parsed = parse_put(b":W a\n:S b\n:X c\n:W ../x\n:D\n");
        assert_eq!(parsed.written, vec!["a"]);
        assert_eq!(parsed.skipped, vec!["b"]);
        assert_eq!(parsed.failed, vec!["c"]);
        assert!(parsed.complete);
    }
}
