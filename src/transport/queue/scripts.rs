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

/// Environment hygiene shared by every script: a fixed `ls -l` format, no noclobber surprises,
/// no pathname expansion of the `ls` output the scripts split into words.
const SH_PRELUDE: &str =
    "LC_ALL=C; export LC_ALL; unset TIME_STYLE BLOCK_SIZE LS_BLOCK_SIZE 2>/dev/null\n";

/// The queue directory as (parent, last component): the parent is the host's choice and is
/// entered as is; the last component and everything below it are the sandbox's and are entered
/// only through [`SH_ENTER`]'s check. A path without a last component (`/`, `..`) is entered
/// as a whole.
fn split_dir(dir: &str) -> (String, Option<String>) {
    let trimmed = dir.trim_end_matches('/');
    let path = std::path::Path::new(trimmed);
    match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        (Some(parent), Some(name)) if name != ".." && name != "." => {
            let parent = parent.to_str().unwrap_or(".");
            let parent = if parent.is_empty() { "." } else { parent };
            (parent.to_owned(), Some(name.to_owned()))
        }
        _ => (dir.to_owned(), None),
    }
}

/// Shell functions that enter a queue directory without following a symlink the sandbox
/// planted. `enter NAME` changes into the subdirectory NAME of the current (checked) directory
/// and then checks what it entered, not what the name pointed to a moment earlier: the inode of
/// `.` must be the one `../NAME` names now without following it (`ls -d` does not follow its
/// operands), and `..` must be the directory it came from. A symlink (or a swap of one) fails
/// both ways: `.` is then the link's target, whose inode is not the link's, and whose parent is
/// not ours. `up` returns to the queue root and checks it the same way. Failing either ends the
/// command (`exit 3`) with the reason on stderr.
const SH_ENTER: &str = r#"set -f
ino() { set -- $(ls -di . 2>/dev/null); here=$1; [ -n "$here" ]; }
enter() {
  [ -d "$1" ] && [ ! -h "$1" ] && cd -P -- "$1" 2>/dev/null || return 1
  set -- $(ls -di . .. "../$1" 2>/dev/null)
  [ -n "$5" ] && [ "$1" = "$5" ] && [ "$3" = "$here" ] || return 1
  here=$1
}
refuse() { echo "callback-bridge: queue directory $1 is a symbolic link or not a directory; refusing to use it" >&2; echo ':X refused'; exit 3; }
up() { cd -P .. 2>/dev/null && ino && [ "$here" = "$root" ] || refuse '(its root moved)'; }
"#;

/// Enters the queue root (creating it when `create`), leaving `$root` set to its inode.
fn enter_root(s: &mut String, dir: &str, create: bool) {
    s.push_str(SH_ENTER);
    let (parent, name) = split_dir(dir);
    let _ = writeln!(
        s,
        "cd -P -- {} 2>/dev/null && ino || {{ echo ':X no queue directory'; exit 3; }}",
        sh_quote(&parent)
    );
    if let Some(name) = name {
        let n = sh_quote(&name);
        if create {
            let _ = writeln!(
                s,
                "[ -e {n} ] || [ -h {n} ] || mkdir -- {n} 2>/dev/null; enter {n} || refuse {n}"
            );
        } else {
            let _ = writeln!(s, "enter {n} || refuse {n}");
        }
    }
    s.push_str("root=$here\n");
}

/// Enters subdirectory `sub` of the (checked) queue root, creating the three subdirectories
/// when it is missing and `create`.
fn enter_sub(s: &mut String, sub: &str, create: bool) {
    if create {
        let _ = writeln!(
            s,
            "enter {sub} || {{ mkdir -p requests responses logs 2>/dev/null; enter {sub}; }} || refuse {sub}"
        );
    } else {
        let _ = writeln!(s, "enter {sub} || refuse {sub}");
    }
}

/// Prints one claimed (or, for recovery, listed) file `$2` of id `$1`: checked on the opened
/// descriptor. Its type and size come from `ls -lni` of the name itself (after the claim, so
/// the size is the claimed file's own); it is opened as fd 4 and `/dev/fd/4` (what was opened,
/// followed by `ls -L`) must be a regular file with the same inode, so a symlink, a FIFO or a
/// device swapped in is never read. Without `/dev/fd` the name is checked again after the open
/// (a narrower race; see docs/queue-transport.md).
fn sh_read_fn(envelope: u64) -> String {
    format!(
        r#"if [ -e /dev/fd/0 ]; then fdl=/dev/fd/4; else fdl=''; fi
rd() {{
  set -- "$1" "$2" $(ls -lni -- "$2" 2>/dev/null)
  case $4 in -*) ;; *) echo ":F $1"; echo ':E 1'; return ;; esac
  case $8 in ''|*[!0-9]*) echo ":F $1"; echo ':E 1'; return ;; esac
  if [ ${{#8}} -gt 15 ] || [ "$8" -gt {envelope} ]; then echo ":B $1 $8"; return; fi
  b=$((b + $8))
  echo ":F $1"
  {{
    if [ -n "$fdl" ]; then set -- "$1" "$3" $(ls -lnLi "$fdl" 2>/dev/null); else set -- "$1" "$3" $(ls -lni -- "$2" 2>/dev/null); fi
    case $4 in -*) ;; *) set -- "$1" "$2" x ;; esac
    if [ -n "$3" ] && [ "$3" = "$2" ]; then base64 <&4; echo ":E $?"; else echo ':E 1'; fi
  }} 4< "$2" 2>/dev/null || echo ':E 1'
}}
"#
    )
}

/// The loop that claims (or, for recovery, re-reads) listed files: reads `ls -tr` output (one
/// name per line, read whole: `IFS=` keeps blanks, so `" a.json"` is not `a.json`), keeps names
/// `<valid id><suffix>` (exactly [`valid_id`]), and either claims each by rename (`claim`) or,
/// for recovery, skips (and removes) claims that already have a response.
fn listing_loop(params: &TakeParams, suffix: &str, claim: bool) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        r#"  echo ':L'
  t=0; b=0
  while IFS= read -r name; do
    case $name in *{suffix}) ;; *) continue ;; esac
    id=${{name%{suffix}}}
    case $id in ''|*[!A-Za-z0-9_-]*) continue ;; esac
    [ ${{#id}} -le {max_id} ] || continue
    [ -f "$name" ] && [ ! -h "$name" ] || continue
    if [ "$t" -ge {max_files} ] || [ "$b" -gt {max_bytes} ]; then echo ':M'; break; fi
"#,
        max_files = params.max_files,
        max_bytes = params.max_bytes,
        max_id = super::file::MAX_ID_LEN,
    );
    if claim {
        if let Some(relay) = &params.relay {
            let _ = write!(
                s,
                r#"    cur=''; if [ -f ../relay.json ] && [ ! -h ../relay.json ]; then IFS= read -r cur < ../relay.json 2>/dev/null; fi
    if [ "$cur" != {relay} ]; then if [ -z "$cur" ]; then echo ':R missing'; else echo ':R other'; fi; break; fi
"#,
                relay = sh_quote(relay)
            );
        }
        s.push_str("    mv -f -- \"$name\" \"$name.claimed\" 2>/dev/null || continue\n    f=\"$name.claimed\"\n");
    } else {
        s.push_str(
            "    if [ -e \"../responses/$id.json\" ] || [ -h \"../responses/$id.json\" ]; then rm -f -- \"$name\"; continue; fi\n    f=\"$name\"\n",
        );
    }
    s.push_str(
        r#"    t=$((t + 1))
    rd "$id" "$f"
  done
  echo ':D'
"#,
    );
    s
}

/// Claims waiting requests (`requests/<id>.json` → `.claimed`, oldest first by `ls -tr`) and
/// prints them; waits up to `wait_ms` for the first one. With `put`, the command first publishes
/// those responses (as [`put_sh`] does; its markers end with `:P`), so one command answers a
/// batch and takes the next; with `sweep`, it removes those ids' leftover claims and responses.
pub fn take(
    ops: &Ops,
    dir: &str,
    p: &TakeParams,
    put: Option<&PutPlan<'_>>,
    sweep: &[String],
) -> String {
    let label = if put.is_some() { "put-take" } else { "take" };
    if let Ops::Helper(path) = ops {
        let mut s = format!(
            "# callback-bridge queue {label}\nexec {} queue take --dir {} --wait-ms {} --max-files {} --max-bytes {} --envelope {}",
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
        if put.is_some() {
            s.push_str(" --put");
        }
        if !sweep.is_empty() {
            let _ = write!(s, " --sweep {}", sweep.join(","));
        }
        return s;
    }
    let polls = p.wait_ms / SH_POLL_MS;
    let mut s = format!("# callback-bridge queue {label}\n");
    s.push_str(SH_PRELUDE);
    enter_root(&mut s, dir, true);
    s.push_str(SH_MS);
    s.push_str("now=''\n");
    if let Some(plan) = put {
        put_sh_body(&mut s, plan, ":P");
    }
    sweep_sh_body(&mut s, sweep);
    // The sandbox clock, when the put read it (before the wait): the relay otherwise reckons
    // it from the offset it learnt at start-up, and no `date` runs on an agent's path.
    s.push_str("[ -n \"$now\" ] && echo \":T $now\"\n");
    enter_sub(&mut s, "requests", true);
    s.push_str(&sh_read_fn(p.envelope));
    let _ = write!(
        s,
        r#"n={polls}; w=0
while :; do
  set +f
  for f in *.json; do
    id=${{f%.json}}
    case $id in ''|*[!A-Za-z0-9_-]*) continue ;; esac
    [ ${{#id}} -le {max_id} ] || continue
    if [ -f "$f" ] && [ ! -h "$f" ]; then set -f; break 2; fi
  done
  set -f
  if [ "$n" -le 0 ]; then echo ':D'; exit 0; fi
  if [ "$w" = 0 ] && sleep 0.0{poll:02} 2>/dev/null; then n=$((n - 1)); else w=1; sleep 1; n=$((n - {per_second})); fi
done
ls -tr 2>/dev/null | {{
"#,
        poll = SH_POLL_MS,
        per_second = 1000 / SH_POLL_MS,
        max_id = super::file::MAX_ID_LEN,
    );
    s.push_str(&listing_loop(p, ".json", true));
    s.push_str("}\n");
    s
}

/// A spare command: started before it has work, it waits on its stdin for the script it runs
/// (docs/queue-transport.md, "Exec economy"). With `sh`, stdin is the whole script of a take or
/// put-take ([`take`]); with the helper, its first line is the helper's command line and the rest
/// the responses it publishes ([`put_helper_stdin`]). Empty stdin (the relay retired it): it
/// exits at once, printing nothing.
pub fn spare(ops: &Ops) -> String {
    match ops {
        Ops::Sh => "# callback-bridge queue spare\ns=$(cat) || exit 0\n[ -n \"$s\" ] || exit 0\neval \"$s\"\n".to_owned(),
        Ops::Helper(_) => "# callback-bridge queue spare\nIFS= read -r s || exit 0\neval \"$s\"\n".to_owned(),
    }
}

/// What a spare reads on its stdin to run `script` (a [`take`] script) with `stdin`: the `sh`
/// script as is (`None` when the script needs stdin of its own: not for a spare), the helper's
/// command line (the script without its comment line) followed by `stdin`.
pub fn spare_payload(ops: &Ops, script: &str, stdin: Option<&[u8]>) -> Option<Vec<u8>> {
    match ops {
        Ops::Sh => stdin.is_none().then(|| script.as_bytes().to_vec()),
        Ops::Helper(_) => {
            let line = script.lines().find(|l| !l.starts_with('#'))?;
            let mut out = Vec::with_capacity(line.len() + 1 + stdin.map_or(0, <[u8]>::len));
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
            out.extend_from_slice(stdin.unwrap_or_default());
            Some(out)
        }
    }
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
    enter_root(&mut s, dir, true);
    s.push_str("mkdir -p requests responses logs 2>/dev/null\n");
    // Each subdirectory must be a plain directory: checked by entering it.
    s.push_str("enter responses || refuse responses; up\nenter logs || refuse logs; up\n");
    if let Some(json) = announce {
        let _ = writeln!(
            s,
            "set -C; rm -f relay.json.tmp; printf '%s' {} > relay.json.tmp && mv -f relay.json.tmp relay.json || exit 3; set +C",
            sh_quote(json)
        );
    }
    enter_sub(&mut s, "requests", false);
    s.push_str(SH_MS);
    s.push_str("ms; [ -n \"$t\" ] && echo \":T $t\"\n");
    s.push_str(&sh_read_fn(p.envelope));
    s.push_str("ls -tr 2>/dev/null | {\n");
    s.push_str(&listing_loop(p, ".json.claimed", false));
    s.push_str("}\n");
    s
}

/// Responses are at most this large to travel inside the script (argv); larger ones go on the
/// command's stdin, one per command. Linux caps one argv string at 128 KiB (`MAX_ARG_STRLEN`).
pub const INLINE_RESPONSE_MAX: usize = 32 * 1024;
/// Total inline response bytes in one script: under `MAX_ARG_STRLEN` with room for the rest.
pub const INLINE_SCRIPT_BUDGET: usize = 96 * 1024;

/// One response a command publishes.
#[derive(Debug, Clone, Copy)]
pub struct PutItem<'a> {
    pub id: &'a str,
    /// The response file (compact JSON, UTF-8).
    pub json: &'a [u8],
    /// Sandbox time (ms since the epoch) after which the gateway no longer waits: the response
    /// is then not written, and the claim is removed (docs/queue-transport.md, "Nested timeouts").
    pub not_after: Option<u64>,
}

/// The responses one command publishes before anything else: `inline` ones travel in the
/// script, at most one (`stdin`) on the command's stdin (sh); the helper reads all from stdin.
#[derive(Debug, Default)]
pub struct PutPlan<'a> {
    pub inline: Vec<PutItem<'a>>,
    /// The response whose bytes are the command's stdin (sh only); its `json` is unused.
    pub stdin: Option<(PutItem<'a>, usize)>,
}

/// Shell function `ms`: sets `$t` to the sandbox clock in milliseconds since the epoch
/// (`date +%s%N`, else whole seconds), or empty when `date` is missing.
const SH_MS: &str = r#"ms() {
  t=$(date +%s%N 2>/dev/null)
  case $t in ''|*[!0-9]*) t=$(date +%s 2>/dev/null); case $t in ''|*[!0-9]*) t='' ;; *) t=${t}500 ;; esac ;;
  *) if [ ${#t} -ge 16 ]; then t=${t%??????}; else t=${t}500; fi ;; esac
}
"#;

/// Publishes responses: `inline` ones travel in the script; `stdin` (id, length), if any, is read
/// from the command's stdin and published only if all its bytes arrived (an exec channel without
/// stdin, e.g. `docker exec` without `-i`, must not publish an empty answer). Each is written
/// only if `requests/<id>.json.claimed` existed when the command looked, no response exists and
/// its `not_after` has not passed (then its claim is removed: nobody waits); then the `.claimed`
/// files of the published ones are removed. Every directory is entered with [`SH_ENTER`]'s check
/// and every file is named relative to it, so no planted symlink is written through.
pub fn put_sh(dir: &str, plan: &PutPlan<'_>) -> String {
    let mut s = String::from("# callback-bridge queue put\n");
    s.push_str(SH_PRELUDE);
    enter_root(&mut s, dir, false);
    s.push_str("now=''\n");
    put_sh_body(&mut s, plan, ":D");
    s
}

/// The put section: starts and ends in the (checked) queue root and prints `end` when done.
fn put_sh_body(s: &mut String, plan: &PutPlan<'_>, end: &str) {
    // Few processes before the first answer is published: it is on the agent's path.
    s.push_str("[ -d responses ] || mkdir -p responses 2>/dev/null\n");
    enter_sub(s, "responses", false);
    // The claims that exist now: answers are written only for these. (Only tested for
    // existence through `../requests`; they are removed below from the checked directory.)
    s.push_str("c=' '\n");
    let ids: Vec<&str> = plan
        .stdin
        .iter()
        .map(|(item, _)| item.id)
        .chain(plan.inline.iter().map(|item| item.id))
        .collect();
    for id in &ids {
        debug_assert!(valid_id(id));
        let _ = writeln!(
            s,
            "if [ -f ../requests/{id}.json.claimed ] && [ ! -h ../requests/{id}.json.claimed ]; then c=\"${{c}}{id} \"; fi"
        );
    }
    let timed = plan
        .stdin
        .iter()
        .map(|(item, _)| item)
        .chain(&plan.inline)
        .any(|item| item.not_after.is_some());
    if timed {
        s.push_str(SH_MS);
        s.push_str("ms; now=$t\n");
    }
    s.push_str(
        r#"set -C
d=''
late() { [ "$1" != 0 ] && [ -n "$now" ] && [ "$now" -gt "$1" ]; }
ok() {
  case $c in *" $1 "*) ;; *) return 1 ;; esac
  [ ! -e "$1.json" ] && [ ! -h "$1.json" ]
}
pub() {
  if ok "$1" && mv -f -- "$1.json.tmp" "$1.json"; then
    d="$d $1.json.claimed"; echo ":W $1"
  else
    rm -f -- "$1.json.tmp"
    if [ -e "$1.json" ]; then d="$d $1.json.claimed"; fi
    echo ":S $1"
  fi
}
w() {
  if late "$2"; then
    case $c in *" $1 "*) d="$d $1.json.claimed" ;; esac
    echo ":S $1"
  elif ok "$1"; then
    rm -f -- "$1.json.tmp"
    if printf '%s\n' "$3" > "$1.json.tmp"; then pub "$1"; else rm -f -- "$1.json.tmp"; echo ":X $1"; fi
  else
    if [ -e "$1.json" ]; then d="$d $1.json.claimed"; fi
    echo ":S $1"
  fi
}
"#,
    );
    if let Some((item, len)) = &plan.stdin {
        let id = item.id;
        let _ = write!(
            s,
            r#"rm -f -- "{id}.json.tmp"
if cat > "{id}.json.tmp" && set -- $(ls -ln "{id}.json.tmp") && [ "$5" = {len} ]; then if late {na}; then rm -f -- "{id}.json.tmp"; case $c in *" {id} "*) d="$d {id}.json.claimed" ;; esac; echo ":S {id}"; else pub {id}; fi; else rm -f -- "{id}.json.tmp"; echo ":X {id}"; fi
"#,
            na = item.not_after.unwrap_or(0),
        );
    }
    for item in &plan.inline {
        // Response JSON is compact (no raw newlines) and UTF-8; the trailing newline is added
        // by printf, as Paperclip writes it.
        let text = String::from_utf8_lossy(item.json);
        let text = text.trim_end_matches('\n');
        let _ = writeln!(
            s,
            "w {} {} {}",
            item.id,
            item.not_after.unwrap_or(0),
            sh_quote(text)
        );
    }
    let _ = write!(
        s,
        "if [ -n \"$d\" ]; then up; enter requests || refuse requests; rm -f $d; fi\nup\nset +C\necho '{end}'\n"
    );
}

/// The sweep section: removes the claims and responses of `ids` (nobody reads them any more);
/// starts and ends in the (checked) queue root.
fn sweep_sh_body(s: &mut String, ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    for (sub, suffix) in [("requests", ".json.claimed"), ("responses", ".json")] {
        let _ = write!(s, "enter {sub} || refuse {sub}; rm -f --");
        for id in ids {
            debug_assert!(valid_id(id));
            let _ = write!(s, " {id}{suffix}");
        }
        s.push_str("; up\n");
    }
}

/// The helper's put: every response travels on stdin as `<id> <len>\n<len bytes>\n`.
pub fn put_helper(path: &str, dir: &str) -> String {
    format!(
        "# callback-bridge queue put\nexec {} queue put --dir {}",
        sh_quote(path),
        sh_quote(dir)
    )
}

/// Frames responses for the helper's put: `<id> <len> <not_after or 0>\n<bytes>\n` each.
pub fn put_helper_stdin(items: &[PutItem<'_>]) -> Vec<u8> {
    let total: usize = items.iter().map(|i| i.id.len() + i.json.len() + 48).sum();
    let mut out = Vec::with_capacity(total);
    for item in items {
        let header = format!(
            "{} {} {}\n",
            item.id,
            item.json.len(),
            item.not_after.unwrap_or(0)
        );
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(item.json);
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
    /// `:T <ms>`: the sandbox clock when the take began to look (sh: before its wait; the
    /// helper: when the listing began).
    pub sandbox_ms: Option<u64>,
    /// The markers of the responses the command published first (`:W`/`:S`/`:X`, then `:P`).
    pub put: PutOutput,
}

/// What a take found in `relay.json` when it was not this relay's announcement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announcement {
    Missing,
    Other,
}

/// Longest marker line (`:F <id>`, `:B <id> <size>`, …) the parser keeps; a longer one is no
/// marker of ours and is dropped, so a hostile stdout cannot grow a line buffer without bound.
const MARKER_LINE_MAX: usize = 512;
/// Base64 characters collected before they are decoded: keeps the undecoded text of a file
/// small whatever its size (the helper prints a file as one line).
const DECODE_CHUNK: usize = 64 * 1024;

/// Whether the command's output should still be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// A file grew beyond the envelope or its base64 broke: the command is stopped; its entry
    /// has been reported (too large / unreadable) and the rest of its output is not needed.
    Stop,
}

/// The file being received between `:F <id>` and `:E <status>`.
struct Receiving {
    id: String,
    /// Base64 characters not decoded yet (fewer than [`DECODE_CHUNK`] + one line's worth).
    pending: Vec<u8>,
    /// Decoded bytes, at most the envelope.
    bytes: Vec<u8>,
    /// A padded group was decoded: nothing may follow.
    ended: bool,
}

/// What kind of line the parser is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineKind {
    Start,
    Marker,
    Content,
    Ignored,
}

/// Parses take/recovery output incrementally, as the command prints it: each entry is handed to
/// `on_item` as soon as it is complete, and a file's bytes are decoded as they arrive, so the
/// parser holds at most one file (at most `envelope` bytes) whatever the command prints. A file
/// whose decoded bytes pass the envelope is reported as [`Taken::TooLarge`] at once and the
/// parser asks for the command to be stopped. Unknown lines are ignored; an entry without its
/// `:E 0` is reported as unreadable; an id is reported at most once.
pub struct TakeParser<F: FnMut(Taken)> {
    envelope: u64,
    on_item: F,
    kind: LineKind,
    marker: Vec<u8>,
    current: Option<Receiving>,
    seen: std::collections::HashSet<String>,
    stopped: bool,
    /// What the output said besides its entries (`items` stays empty here).
    pub summary: TakeOutput,
}

impl<F: FnMut(Taken)> TakeParser<F> {
    pub fn new(envelope: u64, on_item: F) -> Self {
        TakeParser {
            envelope,
            on_item,
            kind: LineKind::Start,
            marker: Vec::new(),
            current: None,
            seen: std::collections::HashSet::new(),
            stopped: false,
            summary: TakeOutput::default(),
        }
    }

    fn emit(&mut self, item: Taken) {
        if self.seen.insert(item.id().to_owned()) {
            (self.on_item)(item);
        }
    }

    /// Feeds the next bytes of the output.
    pub fn feed(&mut self, mut chunk: &[u8]) -> Flow {
        while !chunk.is_empty() && !self.stopped {
            let (segment, newline) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (&chunk[..i], true),
                None => (chunk, false),
            };
            chunk = &chunk[segment.len() + usize::from(newline)..];
            if self.kind == LineKind::Start && !segment.is_empty() {
                self.kind = if segment[0] == b':' {
                    LineKind::Marker
                } else if self.current.is_some() {
                    LineKind::Content
                } else {
                    LineKind::Ignored
                };
            }
            match self.kind {
                LineKind::Marker => {
                    if self.marker.len() + segment.len() <= MARKER_LINE_MAX {
                        self.marker.extend_from_slice(segment);
                    } else {
                        self.marker.clear();
                        self.kind = LineKind::Ignored;
                    }
                }
                LineKind::Content => self.content(segment),
                LineKind::Start | LineKind::Ignored => {}
            }
            if newline {
                if self.kind == LineKind::Marker {
                    let line = std::mem::take(&mut self.marker);
                    self.marker_line(&line);
                }
                self.kind = LineKind::Start;
            }
        }
        if self.stopped {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }

    /// Ends the output: a last line without newline counts; an entry still open is unreadable.
    pub fn finish(mut self) -> TakeOutput {
        if self.kind == LineKind::Marker && !self.stopped {
            let line = std::mem::take(&mut self.marker);
            self.marker_line(&line);
        }
        if let Some(r) = self.current.take() {
            self.emit(Taken::Unreadable { id: r.id });
        }
        self.summary
    }

    fn content(&mut self, segment: &[u8]) {
        let Some(r) = self.current.as_mut() else {
            return;
        };
        r.pending
            .extend(segment.iter().filter(|b| !b.is_ascii_whitespace()));
        if r.pending.len() >= DECODE_CHUNK {
            self.decode(false);
        }
    }

    /// Decodes the complete groups received so far (all of them when `last`); reports the file
    /// and stops on broken base64 or once the envelope is passed.
    fn decode(&mut self, last: bool) -> bool {
        let Some(r) = self.current.as_mut() else {
            return false;
        };
        let n = if last {
            r.pending.len()
        } else {
            r.pending.len() / 4 * 4
        };
        if n == 0 {
            return true;
        }
        let engine = &base64::engine::general_purpose::STANDARD;
        let ok = !r.ended && engine.decode_vec(&r.pending[..n], &mut r.bytes).is_ok();
        r.ended = r.pending[..n].ends_with(b"=");
        r.pending.drain(..n);
        let size = r.bytes.len() as u64;
        if !ok || size > self.envelope {
            let r = self.current.take().expect("receiving");
            let item = if ok {
                Taken::TooLarge { id: r.id, size }
            } else {
                Taken::Unreadable { id: r.id }
            };
            self.emit(item);
            self.stopped = true;
            return false;
        }
        true
    }

    fn marker_line(&mut self, line: &[u8]) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(rest) = line.strip_prefix(b":") else {
            return;
        };
        let text = String::from_utf8_lossy(rest);
        let mut words = text.split(' ');
        let tag = words.next().unwrap_or("");
        if tag == "E" {
            if self.current.is_some() {
                let ok = words.next() == Some("0");
                if self.decode(true) {
                    let r = self.current.take().expect("receiving");
                    self.emit(if ok {
                        Taken::File {
                            id: r.id,
                            bytes: r.bytes,
                        }
                    } else {
                        Taken::Unreadable { id: r.id }
                    });
                }
            }
            return;
        }
        if let Some(r) = self.current.take() {
            self.emit(Taken::Unreadable { id: r.id });
        }
        match tag {
            "F" => {
                if let Some(id) = words.next().filter(|id| valid_id(id)) {
                    if !self.seen.contains(id) {
                        self.current = Some(Receiving {
                            id: id.to_owned(),
                            pending: Vec::new(),
                            bytes: Vec::new(),
                            ended: false,
                        });
                    }
                }
            }
            "B" => {
                let id = words.next().filter(|id| valid_id(id));
                let size = words.next().and_then(|s| s.parse::<u64>().ok());
                if let Some(id) = id {
                    self.emit(Taken::TooLarge {
                        id: id.to_owned(),
                        size: size.unwrap_or(u64::MAX),
                    });
                }
            }
            "M" => self.summary.more = true,
            "T" => self.summary.sandbox_ms = words.next().and_then(|t| t.parse().ok()),
            "W" | "S" | "X" => {
                if let Some(id) = words.next().filter(|id| valid_id(id)) {
                    let put = &mut self.summary.put;
                    match tag {
                        "W" => put.written.push(id.to_owned()),
                        "S" => put.skipped.push(id.to_owned()),
                        _ => put.failed.push(id.to_owned()),
                    }
                }
            }
            "P" => self.summary.put.complete = true,
            "R" => {
                self.summary.announcement = Some(if words.next() == Some("missing") {
                    Announcement::Missing
                } else {
                    Announcement::Other
                })
            }
            "D" => self.summary.complete = true,
            _ => {}
        }
    }
}

/// Parses a whole take/recovery output at once (see [`TakeParser`]; no envelope bound).
#[cfg(test)]
pub fn parse_take(out: &[u8]) -> TakeOutput {
    let mut items = Vec::new();
    let mut parser = TakeParser::new(u64::MAX, |item| items.push(item));
    parser.feed(out);
    let mut result = parser.finish();
    result.items = items;
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

    fn parse_with(envelope: u64, chunks: &[&[u8]]) -> (Vec<Taken>, TakeOutput, Vec<Flow>) {
        let mut items = Vec::new();
        let mut parser = TakeParser::new(envelope, |i| items.push(i));
        let flows: Vec<Flow> = chunks.iter().map(|c| parser.feed(c)).collect();
        let summary = parser.finish();
        (items, summary, flows)
    }

    #[test]
    fn take_output_parses_the_same_whatever_the_chunking() {
        let out: &[u8] = b":F a\nAAEC\nAw==\n:E 0\n:B big 9\n:F b\nAA==\n:E 0\n:D\n";
        let whole = parse_take(out);
        let bytes: Vec<&[u8]> = out.chunks(1).collect();
        let (items, summary, _) = parse_with(u64::MAX, &bytes);
        assert_eq!(items, whole.items);
        assert!(summary.complete && whole.complete);
    }

    #[test]
    fn a_file_beyond_the_envelope_is_refused_as_soon_as_it_passes_it() {
        // 9 bytes decoded, the envelope is 6: refused, and nothing after it is read.
        let (items, summary, flows) =
            parse_with(6, &[b":F a\nAAAAAAAAAAAA\n", b":E 0\n:D\n", b":F b\n"]);
        assert_eq!(
            items,
            vec![Taken::TooLarge {
                id: "a".into(),
                size: 9
            }]
        );
        assert_eq!(flows[1], Flow::Stop);
        assert!(!summary.complete);
        // An endless line (the helper prints a file as one line) is cut at the envelope too.
        let mut parser = TakeParser::new(1 << 20, |_| {});
        parser.feed(b":F a\n");
        let line = vec![b'A'; 64 * 1024];
        let fed = (0..100)
            .take_while(|_| parser.feed(&line) == Flow::Continue)
            .count();
        assert!(
            fed < 30,
            "stopped after about 1 MiB decoded, not {fed} chunks"
        );
    }

    #[test]
    fn broken_base64_or_data_after_padding_is_unreadable() {
        for out in [
            &b":F a\nAA=A\n:E 0\n"[..],
            b":F a\nAA==\nAAAA\n:E 0\n",
            b":F a\nAAA\n:E 0\n",
        ] {
            let (items, _, _) = parse_with(100, &[out]);
            assert_eq!(items, vec![Taken::Unreadable { id: "a".into() }], "{out:?}");
        }
    }

    #[test]
    fn overlong_marker_lines_are_ignored() {
        let mut out = b":B ".to_vec();
        out.extend(vec![b'a'; 1000]);
        out.extend_from_slice(b" 5\n:D\n");
        let (items, summary, _) = parse_with(100, &[&out]);
        assert!(items.is_empty() && summary.complete);
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
        let out = parse_take(&sh(
            &take(&Ops::Sh, &q, &params(Some("{\"me\":1}")), None, &[]),
            b"",
        ));
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
        let out = parse_take(&sh(
            &take(&Ops::Sh, &q, &params(Some("{\"old\":1}")), None, &[]),
            b"",
        ));
        assert_eq!(out.announcement, Some(Announcement::Other));
        assert!(out.items.is_empty());
        assert!(r.join("a.json").exists(), "not claimed");
        std::fs::remove_file(d.path().join("relay.json")).unwrap();
        let out = parse_take(&sh(
            &take(&Ops::Sh, &q, &params(Some("{\"old\":1}")), None, &[]),
            b"",
        ));
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
        let out = parse_take(&sh(&take(&Ops::Sh, &q, &p, None, &[]), b""));
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

    fn item<'a>(id: &'a str, json: &'a [u8]) -> PutItem<'a> {
        PutItem {
            id,
            json,
            not_after: None,
        }
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
        let plan = PutPlan {
            inline: vec![
                item("a", b"{\"q\":\"it's\"}\n"),
                item("gone", b"{}"),
                item("c", b"{}"),
            ],
            stdin: Some((item("big", b""), big.len())),
        };
        let script = put_sh(&q, &plan);
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
        let plan = PutPlan {
            inline: Vec::new(),
            stdin: Some((item("cut", b""), 1000)),
        };
        let out = parse_put(&sh(&put_sh(&q, &plan), b"{}"));
        assert_eq!(out.failed, vec!["cut"]);
        assert!(!d.path().join("responses/cut.json").exists());
        assert!(r.join("cut.json.claimed").exists());
    }

    #[test]
    fn sh_put_take_answers_then_takes_in_one_command() {
        let (d, q) = queue();
        let r = d.path().join("requests");
        std::fs::write(r.join("a.json.claimed"), "x").unwrap();
        std::fs::write(r.join("late.json.claimed"), "x").unwrap();
        std::fs::write(r.join("next.json"), "n").unwrap();
        // Leftovers of an earlier request the relay sweeps.
        std::fs::write(r.join("old.json.claimed"), "x").unwrap();
        std::fs::write(d.path().join("responses/old.json"), "{}").unwrap();
        let future = crate::transport::queue::file::now_epoch_ms() + 60_000;
        let plan = PutPlan {
            inline: vec![
                PutItem {
                    id: "a",
                    json: b"{\"id\":\"a\"}",
                    not_after: Some(future),
                },
                PutItem {
                    id: "late",
                    json: b"{}",
                    not_after: Some(1),
                },
            ],
            stdin: None,
        };
        let script = take(
            &Ops::Sh,
            &q,
            &params(None),
            Some(&plan),
            &["old".to_owned()],
        );
        assert!(script.starts_with("# callback-bridge queue put-take\n"));
        let out = parse_take(&sh(&script, b""));
        assert!(out.complete && out.put.complete, "{out:?}");
        assert_eq!(out.put.written, vec!["a"]);
        assert_eq!(out.put.skipped, vec!["late"]);
        assert!(out.sandbox_ms.is_some_and(|t| t + 60_000 <= future + 1000));
        assert_eq!(
            out.items,
            vec![Taken::File {
                id: "next".into(),
                bytes: b"n".to_vec()
            }]
        );
        let responses = d.path().join("responses");
        assert_eq!(
            std::fs::read_to_string(responses.join("a.json")).unwrap(),
            "{\"id\":\"a\"}\n"
        );
        assert!(
            !responses.join("late.json").exists(),
            "too late: not written"
        );
        assert!(!responses.join("old.json").exists(), "swept");
        let mut left: Vec<String> = std::fs::read_dir(&r)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec!["next.json.claimed"],
            "answered, late and swept claims gone"
        );
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
