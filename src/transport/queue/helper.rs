//! `callback-bridge queue take|start|put` (hidden): the sandbox side of the relay when
//! `--sandbox-helper PATH` names this binary inside the sandbox. Same semantics and the same
//! output protocol as the `sh` scripts of [`super::scripts`], without forking a process per file.
//!
//! Promise: a request is claimed by one `rename` before it is read, only regular files with a
//! valid id are touched, nothing larger than the envelope is read, and a response is published
//! by `rename` only while the `.claimed` file exists and no response does. Attacks defended:
//! planted symlinks and directories (never followed or written through: temp files are created
//! with `O_EXCL`), hostile names, oversized files.

use std::fs;
use std::io::{self, BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;

use super::file::{valid_id, CLAIMED_SUFFIX, JSON_SUFFIX};
use crate::transport::TransportError;

/// Poll interval of the helper's wait for the first request: a `readdir` costs microseconds, so
/// it can poll faster than the `sh` loop (which forks `sleep` each time).
const HELPER_POLL: Duration = Duration::from_millis(5);

#[derive(Debug, Default)]
struct Opts {
    dir: Option<PathBuf>,
    wait_ms: u64,
    max_files: usize,
    max_bytes: u64,
    envelope: u64,
    announce: Option<String>,
    relay_json: Option<String>,
}

fn usage(msg: impl Into<String>) -> TransportError {
    TransportError::HelperUsage(msg.into())
}

fn parse(args: &[String]) -> Result<Opts, TransportError> {
    let mut o = Opts {
        max_files: 16,
        max_bytes: 8 << 20,
        envelope: u64::MAX,
        ..Opts::default()
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .ok_or_else(|| usage(format!("{flag} needs a value")))
        };
        let num = |v: String| {
            v.parse::<u64>()
                .map_err(|_| usage(format!("{flag}: {v:?} is not a number")))
        };
        match flag.as_str() {
            "--dir" => o.dir = Some(PathBuf::from(value()?)),
            "--wait-ms" => o.wait_ms = num(value()?)?,
            "--max-files" => o.max_files = num(value()?)? as usize,
            "--max-bytes" => o.max_bytes = num(value()?)?,
            "--envelope" => o.envelope = num(value()?)?,
            "--announce" => o.announce = Some(value()?),
            "--relay-json" => o.relay_json = Some(value()?),
            other => return Err(usage(format!("unknown option {other:?}"))),
        }
    }
    if o.dir.is_none() {
        return Err(usage("--dir is required"));
    }
    Ok(o)
}

/// Runs one helper operation: `take`, `start` or `put`.
pub fn run(args: &[String]) -> Result<(), TransportError> {
    let (op, rest) = args
        .split_first()
        .ok_or_else(|| usage("expected take, start or put"))?;
    let opts = parse(rest)?;
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let result = match op.as_str() {
        "take" => take(&opts, &mut out),
        "start" => start(&opts, &mut out),
        "put" => put(&opts, &mut io::stdin().lock(), &mut out),
        other => return Err(usage(format!("unknown operation {other:?}"))),
    };
    result
        .and_then(|()| out.flush())
        .map_err(|source| TransportError::Helper {
            op: op.clone(),
            source,
        })
}

/// Regular files in `dir` named `<valid id><suffix>`, oldest first (mtime, then name).
fn listing(dir: &Path, suffix: &str) -> io::Result<Vec<(String, u64)>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(id) = name.strip_suffix(suffix) else {
            continue;
        };
        if !valid_id(id) {
            continue;
        }
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        if !meta.is_file() {
            continue;
        }
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        found.push((mtime, id.to_owned(), meta.len()));
    }
    found.sort();
    Ok(found.into_iter().map(|(_, id, len)| (id, len)).collect())
}

/// Reads a claimed file, at most `limit` bytes (the listing already checked its size).
fn read_capped(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    fs::File::open(path)?
        .take(limit + 1)
        .read_to_end(&mut buf)?;
    Ok(buf)
}

/// Prints the entries of a listing in the take protocol, claiming them first when `claim`.
fn emit(
    dir: &Path,
    entries: Vec<(String, u64)>,
    suffix: &str,
    claim: bool,
    o: &Opts,
    out: &mut impl Write,
) -> io::Result<()> {
    let (mut taken, mut bytes) = (0usize, 0u64);
    for (id, size) in entries {
        if taken >= o.max_files {
            writeln!(out, ":M")?;
            break;
        }
        let big = size > o.envelope;
        if !big && taken > 0 && bytes.saturating_add(size) > o.max_bytes {
            writeln!(out, ":M")?;
            break;
        }
        if claim {
            if let Some(expected) = &o.relay_json {
                match fs::read(dir.join("..").join("relay.json")) {
                    Ok(cur) if cur == expected.as_bytes() => {}
                    Ok(_) => {
                        writeln!(out, ":R other")?;
                        break;
                    }
                    Err(_) => {
                        writeln!(out, ":R missing")?;
                        break;
                    }
                }
            }
        }
        let path = dir.join(format!("{id}{suffix}"));
        let file = if claim {
            let claimed = dir.join(format!("{id}{CLAIMED_SUFFIX}"));
            if fs::rename(&path, &claimed).is_err() {
                continue;
            }
            claimed
        } else {
            path
        };
        taken += 1;
        if big {
            writeln!(out, ":B {id} {size}")?;
            continue;
        }
        bytes += size;
        writeln!(out, ":F {id}")?;
        match read_capped(&file, o.envelope) {
            Ok(data) => {
                out.write_all(
                    base64::engine::general_purpose::STANDARD
                        .encode(data)
                        .as_bytes(),
                )?;
                writeln!(out, "\n:E 0")?;
            }
            Err(_) => writeln!(out, ":E 1")?,
        }
    }
    writeln!(out, ":D")
}

fn queue_dir(o: &Opts) -> &Path {
    o.dir.as_deref().unwrap_or(Path::new("."))
}

fn take(o: &Opts, out: &mut impl Write) -> io::Result<()> {
    let requests = queue_dir(o).join("requests");
    let deadline = Instant::now() + Duration::from_millis(o.wait_ms);
    let entries = loop {
        let entries = match listing(&requests, JSON_SUFFIX) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                make_dirs(queue_dir(o))?;
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        if !entries.is_empty() || Instant::now() >= deadline {
            break entries;
        }
        std::thread::sleep(HELPER_POLL);
    };
    emit(&requests, entries, JSON_SUFFIX, true, o, out)
}

fn make_dirs(q: &Path) -> io::Result<()> {
    for sub in ["requests", "responses", "logs"] {
        fs::create_dir_all(q.join(sub))?;
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically: a fresh temp name created with `O_EXCL`, then rename.
fn publish(tmp: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let _ = fs::remove_file(tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(tmp)?;
    f.write_all(bytes)?;
    drop(f);
    fs::rename(tmp, path)
}

fn start(o: &Opts, out: &mut impl Write) -> io::Result<()> {
    let q = queue_dir(o);
    make_dirs(q)?;
    if let Some(json) = &o.announce {
        publish(
            &q.join("relay.json.tmp"),
            &q.join("relay.json"),
            json.as_bytes(),
        )?;
    }
    let requests = q.join("requests");
    let responses = q.join("responses");
    let mut entries = Vec::new();
    for (id, size) in listing(&requests, CLAIMED_SUFFIX)? {
        if responses
            .join(format!("{id}{JSON_SUFFIX}"))
            .symlink_metadata()
            .is_ok()
        {
            let _ = fs::remove_file(requests.join(format!("{id}{CLAIMED_SUFFIX}")));
        } else {
            entries.push((id, size));
        }
    }
    emit(&requests, entries, CLAIMED_SUFFIX, false, o, out)
}

/// Publishes the responses framed on stdin (`<id> <len>\n<bytes>\n`, each at most the envelope
/// limit): each only while its `.claimed` file exists and no response does; then removes the
/// claims of the published ones. A malformed frame ends the input.
fn put(o: &Opts, input: &mut impl BufRead, out: &mut impl Write) -> io::Result<()> {
    let q = queue_dir(o);
    let requests = q.join("requests");
    let responses = q.join("responses");
    fs::create_dir_all(&responses)?;
    let mut done = Vec::new();
    let mut header = String::new();
    loop {
        header.clear();
        if input.read_line(&mut header)? == 0 {
            break;
        }
        let Some((id, len)) = header.trim_end().split_once(' ') else {
            break;
        };
        let (Ok(len), true) = (len.parse::<u64>(), valid_id(id)) else {
            break;
        };
        if len > o.envelope {
            break;
        }
        let mut body = Vec::new();
        input.take(len + 1).read_to_end(&mut body)?;
        body.truncate(len as usize);
        let claimed = requests.join(format!("{id}{CLAIMED_SUFFIX}"));
        let target = responses.join(format!("{id}{JSON_SUFFIX}"));
        let tmp = responses.join(format!("{id}.json.tmp"));
        let writable = |claimed: &Path, target: &Path| {
            claimed.symlink_metadata().is_ok() && target.symlink_metadata().is_err()
        };
        if !writable(&claimed, &target) {
            if target.symlink_metadata().is_ok() {
                done.push(claimed);
            }
            writeln!(out, ":S {id}")?;
            continue;
        }
        body.push(b'\n');
        let _ = fs::remove_file(&tmp);
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&body));
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
            writeln!(out, ":X {id}")?;
        } else if writable(&claimed, &target) && fs::rename(&tmp, &target).is_ok() {
            done.push(claimed);
            writeln!(out, ":W {id}")?;
        } else {
            let _ = fs::remove_file(&tmp);
            writeln!(out, ":S {id}")?;
        }
    }
    for claimed in done {
        let _ = fs::remove_file(claimed);
    }
    writeln!(out, ":D")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::queue::scripts::{parse_put, parse_take, Taken};

    fn opts(dir: &Path) -> Opts {
        Opts {
            dir: Some(dir.to_owned()),
            wait_ms: 0,
            max_files: 16,
            max_bytes: 1 << 20,
            envelope: 1 << 20,
            announce: None,
            relay_json: None,
        }
    }

    #[test]
    fn take_claims_regular_files_and_skips_the_rest() {
        let d = tempfile::tempdir().unwrap();
        make_dirs(d.path()).unwrap();
        let r = d.path().join("requests");
        fs::write(r.join("a.json"), b"{}").unwrap();
        fs::write(r.join("bad name.json"), b"{}").unwrap();
        fs::write(r.join("b.json.tmp"), b"{}").unwrap();
        fs::create_dir(r.join("dir.json")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", r.join("link.json")).unwrap();
        let mut out = Vec::new();
        take(&opts(d.path()), &mut out).unwrap();
        let parsed = parse_take(&out);
        assert_eq!(
            parsed.items,
            vec![Taken::File {
                id: "a".into(),
                bytes: b"{}".to_vec()
            }]
        );
        assert!(parsed.complete);
        assert!(r.join("a.json.claimed").exists());
        assert!(!r.join("a.json").exists());
    }

    #[test]
    fn put_writes_only_for_claimed_requests() {
        let d = tempfile::tempdir().unwrap();
        make_dirs(d.path()).unwrap();
        let r = d.path().join("requests");
        fs::write(r.join("a.json.claimed"), b"{}").unwrap();
        let input = crate::transport::queue::scripts::put_helper_stdin(&[
            ("a", b"{\"id\":\"a\"}"),
            ("b", b"{\"id\":\"b\"}"),
        ]);
        let mut out = Vec::new();
        put(&opts(d.path()), &mut &input[..], &mut out).unwrap();
        let parsed = parse_put(&out);
        assert_eq!(parsed.written, vec!["a"]);
        assert_eq!(parsed.skipped, vec!["b"]);
        assert_eq!(
            fs::read(d.path().join("responses/a.json")).unwrap(),
            b"{\"id\":\"a\"}\n"
        );
        assert!(!r.join("a.json.claimed").exists());
        assert!(!d.path().join("responses/b.json").exists());
    }
}
