//! `callback-bridge queue take|start|put` (hidden): the sandbox side of the relay when
//! `--sandbox-helper PATH` names this binary inside the sandbox. Same semantics and the same
//! output protocol as the `sh` scripts of [`super::scripts`], without forking a process per file.
//!
//! Promise: a request is claimed by one `rename` before it is read, only regular files with a
//! valid id are touched, nothing larger than the envelope is read, and a response is published
//! by `rename` only while the `.claimed` file exists and no response does. Attacks defended:
//! planted or swapped-in symlinks at any level (every directory is a handle opened with
//! `O_NOFOLLOW`, every file is named relative to one and opened with `O_NOFOLLOW`, temp files
//! with `O_EXCL`; a symlinked queue root or subdirectory is refused with an error), FIFOs and
//! devices (opened `O_NONBLOCK`, and only a handle that `fstat` shows regular is read), hostile
//! names (exactly the ids of `file::valid_id`), oversized or growing files (size taken from the
//! opened handle, reading capped at the envelope).

use std::fs;
use std::io::{self, BufRead, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};

use super::file::{valid_id, CLAIMED_SUFFIX, JSON_SUFFIX, TMP_SUFFIX};
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
    /// `take --put`: publish the responses framed on stdin first.
    put: bool,
    /// `take --sweep ID,…`: remove these ids' claims and responses first.
    sweep: Vec<String>,
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
            "--put" => o.put = true,
            "--sweep" => {
                for id in value()?.split(',') {
                    if !valid_id(id) {
                        return Err(usage(format!("--sweep: {id:?} is not a request id")));
                    }
                    o.sweep.push(id.to_owned());
                }
            }
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
        "take" => take(&opts, &mut io::stdin().lock(), &mut out),
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

/// A queue directory opened without following symlinks: the root and its subdirectories are
/// handles (`O_DIRECTORY | O_NOFOLLOW`), and every file is named relative to one of them, so a
/// symlink the sandbox plants (or swaps in) at any level is refused, never followed.
struct Queue {
    root: OwnedFd,
    requests: OwnedFd,
    responses: OwnedFd,
}

/// Why a queue directory was refused.
fn not_plain(name: &str) -> io::Error {
    io::Error::other(format!(
        "queue directory {name} is a symbolic link or not a directory; refusing to use it"
    ))
}

/// Opens directory `name` in `dir`, creating it first when `create`; a symlink is refused.
fn open_dir(dir: impl AsFd, name: &str, create: bool) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if create {
        match rfs::mkdirat(&dir, name, Mode::from_raw_mode(0o777)) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::EXIST => {}
            Err(e) => return Err(e.into()),
        }
    }
    rfs::openat(&dir, name, flags, Mode::empty()).map_err(|e| {
        if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR {
            not_plain(name)
        } else {
            e.into()
        }
    })
}

impl Queue {
    /// Opens the queue at `path`: its parent is the host's choice and is opened as named; the
    /// last component and everything below are opened without following symlinks.
    fn open(path: &Path, create: bool) -> io::Result<Queue> {
        let (parent, name) = match (path.parent(), path.file_name().and_then(|n| n.to_str())) {
            (Some(p), Some(n)) => (
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                },
                n,
            ),
            _ => (path, "."),
        };
        let parent = rfs::open(
            parent,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let root = open_dir(&parent, name, create)?;
        let requests = open_dir(&root, "requests", create)?;
        let responses = open_dir(&root, "responses", create)?;
        if create {
            open_dir(&root, "logs", true)?;
        }
        Ok(Queue {
            root,
            requests,
            responses,
        })
    }
}

/// Opens regular file `name` in `dir` for reading without following a symlink and without
/// blocking on a FIFO (`O_NONBLOCK`); what was opened must be a regular file (`fstat` on the
/// handle). Returns the file and its size.
fn open_regular(dir: impl AsFd, name: &str) -> io::Result<(fs::File, u64)> {
    let fd = rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rfs::fstat(&fd)?;
    if rfs::FileType::from_raw_mode(st.st_mode) != rfs::FileType::RegularFile {
        return Err(io::Error::other("not a regular file"));
    }
    Ok((fs::File::from(fd), st.st_size.max(0) as u64))
}

/// Whether `name` exists in `dir` (a symlink counts; nothing is followed).
fn exists(dir: impl AsFd, name: &str) -> bool {
    rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok()
}

/// Regular files in `dir` named `<valid id><suffix>` (exactly [`valid_id`]), oldest first
/// (mtime, then name).
fn listing(dir: &OwnedFd, suffix: &str) -> io::Result<Vec<String>> {
    let mut found = Vec::new();
    for entry in rfs::Dir::read_from(dir)? {
        let entry = entry?;
        let Ok(name) = entry.file_name().to_str() else {
            continue;
        };
        let Some(id) = name.strip_suffix(suffix) else {
            continue;
        };
        if !valid_id(id) {
            continue;
        }
        let Ok(st) = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
            continue;
        };
        if rfs::FileType::from_raw_mode(st.st_mode) != rfs::FileType::RegularFile {
            continue;
        }
        found.push(((st.st_mtime, st.st_mtime_nsec), id.to_owned()));
    }
    found.sort();
    Ok(found.into_iter().map(|(_, id)| id).collect())
}

/// Longest `relay.json` compared: the relay's announcement is far shorter.
const RELAY_JSON_MAX: u64 = 4096;

/// Prints the entries of a listing in the take protocol, claiming them first when `claim`.
fn emit(
    q: &Queue,
    entries: Vec<String>,
    suffix: &str,
    claim: bool,
    o: &Opts,
    out: &mut impl Write,
) -> io::Result<()> {
    let (mut taken, mut bytes) = (0usize, 0u64);
    writeln!(out, ":T {}", super::file::now_epoch_ms())?;
    for id in entries {
        if taken >= o.max_files || (taken > 0 && bytes > o.max_bytes) {
            writeln!(out, ":M")?;
            break;
        }
        if claim {
            if let Some(expected) = &o.relay_json {
                let mut cur = Vec::new();
                let read = open_regular(&q.root, "relay.json")
                    .and_then(|(f, _)| f.take(RELAY_JSON_MAX).read_to_end(&mut cur));
                match read {
                    Ok(_) if cur == expected.as_bytes() => {}
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
        let name = format!("{id}{suffix}");
        let name = if claim {
            let claimed = format!("{id}{CLAIMED_SUFFIX}");
            if rfs::renameat(&q.requests, &name, &q.requests, &claimed).is_err() {
                continue;
            }
            claimed
        } else {
            name
        };
        taken += 1;
        // Type and size are those of what was opened (after the claim), never of a name.
        let (file, size) = match open_regular(&q.requests, &name) {
            Ok(f) => f,
            Err(_) => {
                writeln!(out, ":F {id}\n:E 1")?;
                continue;
            }
        };
        if size > o.envelope {
            writeln!(out, ":B {id} {size}")?;
            continue;
        }
        bytes += size;
        writeln!(out, ":F {id}")?;
        let mut data = Vec::new();
        match file
            .take(o.envelope.saturating_add(1))
            .read_to_end(&mut data)
        {
            Ok(_) => {
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

fn take(o: &Opts, input: &mut impl BufRead, out: &mut impl Write) -> io::Result<()> {
    let q = Queue::open(queue_dir(o), true)?;
    if o.put {
        put_frames(&q, o, input, out)?;
        writeln!(out, ":P")?;
    }
    for id in &o.sweep {
        let _ = rfs::unlinkat(
            &q.requests,
            format!("{id}{CLAIMED_SUFFIX}"),
            AtFlags::empty(),
        );
        let _ = rfs::unlinkat(&q.responses, format!("{id}{JSON_SUFFIX}"), AtFlags::empty());
    }
    let deadline = Instant::now() + Duration::from_millis(o.wait_ms);
    let entries = loop {
        let entries = listing(&q.requests, JSON_SUFFIX)?;
        if !entries.is_empty() || Instant::now() >= deadline {
            break entries;
        }
        std::thread::sleep(HELPER_POLL);
    };
    emit(&q, entries, JSON_SUFFIX, true, o, out)
}

/// Writes `bytes` to `name` in `dir` atomically: a fresh temp name created with `O_EXCL`
/// (a symlink planted there makes it fail), then renamed.
fn publish(dir: &OwnedFd, tmp: &str, name: &str, bytes: &[u8]) -> io::Result<()> {
    let _ = rfs::unlinkat(dir, tmp, AtFlags::empty());
    let fd = rfs::openat(
        dir,
        tmp,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o666),
    )?;
    let written = fs::File::from(fd).write_all(bytes);
    let result = written.and_then(|()| Ok(rfs::renameat(dir, tmp, dir, name)?));
    if result.is_err() {
        let _ = rfs::unlinkat(dir, tmp, AtFlags::empty());
    }
    result
}

fn start(o: &Opts, out: &mut impl Write) -> io::Result<()> {
    let q = Queue::open(queue_dir(o), true)?;
    if let Some(json) = &o.announce {
        publish(&q.root, "relay.json.tmp", "relay.json", json.as_bytes())?;
    }
    let mut entries = Vec::new();
    for id in listing(&q.requests, CLAIMED_SUFFIX)? {
        if exists(&q.responses, &format!("{id}{JSON_SUFFIX}")) {
            let _ = rfs::unlinkat(
                &q.requests,
                format!("{id}{CLAIMED_SUFFIX}"),
                AtFlags::empty(),
            );
        } else {
            entries.push(id);
        }
    }
    emit(&q, entries, CLAIMED_SUFFIX, false, o, out)
}

/// Publishes the responses framed on stdin (`<id> <len>\n<bytes>\n`, each at most the envelope
/// limit): each only while its `.claimed` file exists and no response does; then removes the
/// claims of the published ones. A malformed frame ends the input.
fn put(o: &Opts, input: &mut impl BufRead, out: &mut impl Write) -> io::Result<()> {
    let q = Queue::open(queue_dir(o), false)?;
    put_frames(&q, o, input, out)?;
    writeln!(out, ":D")
}

/// Publishes the frames `<id> <len> <not_after>\n<bytes>\n` (`not_after`, optional: sandbox ms
/// after which nobody waits; 0 = no limit): each only while its `.claimed` file exists, no
/// response does and `not_after` has not passed; then removes the claims of the published ones
/// and of the late ones. A malformed frame ends the input.
fn put_frames(
    q: &Queue,
    o: &Opts,
    input: &mut impl BufRead,
    out: &mut impl Write,
) -> io::Result<()> {
    let mut done = Vec::new();
    let mut header = String::new();
    loop {
        header.clear();
        if input.read_line(&mut header)? == 0 {
            break;
        }
        let mut words = header.trim_end().split(' ');
        let (Some(id), Some(len)) = (words.next(), words.next()) else {
            break;
        };
        let not_after = match words.next().map(str::parse::<u64>) {
            None => 0,
            Some(Ok(n)) => n,
            Some(Err(_)) => break,
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
        let claimed = format!("{id}{CLAIMED_SUFFIX}");
        let target = format!("{id}{JSON_SUFFIX}");
        let tmp = format!("{id}{TMP_SUFFIX}");
        let writable = || exists(&q.requests, &claimed) && !exists(&q.responses, &target);
        if not_after != 0 && super::file::now_epoch_ms() > not_after {
            // The gateway no longer waits: no answer, and its claim goes.
            done.push(claimed);
            writeln!(out, ":S {id}")?;
            continue;
        }
        if !writable() {
            if exists(&q.responses, &target) {
                done.push(claimed);
            }
            writeln!(out, ":S {id}")?;
            continue;
        }
        body.push(b'\n');
        let _ = rfs::unlinkat(&q.responses, &tmp, AtFlags::empty());
        let created = rfs::openat(
            &q.responses,
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o666),
        );
        let written = match created {
            Ok(fd) => fs::File::from(fd).write_all(&body),
            Err(e) => Err(e.into()),
        };
        if written.is_err() {
            let _ = rfs::unlinkat(&q.responses, &tmp, AtFlags::empty());
            writeln!(out, ":X {id}")?;
        } else if writable() && rfs::renameat(&q.responses, &tmp, &q.responses, &target).is_ok() {
            done.push(claimed);
            writeln!(out, ":W {id}")?;
        } else {
            let _ = rfs::unlinkat(&q.responses, &tmp, AtFlags::empty());
            writeln!(out, ":S {id}")?;
        }
    }
    for claimed in done {
        let _ = rfs::unlinkat(&q.requests, claimed, AtFlags::empty());
    }
    Ok(())
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
            put: false,
            sweep: Vec::new(),
        }
    }

    #[test]
    fn take_claims_regular_files_and_skips_the_rest() {
        let d = tempfile::tempdir().unwrap();
        Queue::open(d.path(), true).unwrap();
        let r = d.path().join("requests");
        fs::write(r.join("a.json"), b"{}").unwrap();
        fs::write(r.join("bad name.json"), b"{}").unwrap();
        fs::write(r.join("b.json.tmp"), b"{}").unwrap();
        fs::create_dir(r.join("dir.json")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", r.join("link.json")).unwrap();
        let mut out = Vec::new();
        take(&opts(d.path()), &mut &b""[..], &mut out).unwrap();
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
    fn take_with_put_answers_sweeps_then_takes() {
        use crate::transport::queue::scripts::{put_helper_stdin, PutItem};
        let d = tempfile::tempdir().unwrap();
        Queue::open(d.path(), true).unwrap();
        let r = d.path().join("requests");
        fs::write(r.join("a.json.claimed"), b"{}").unwrap();
        fs::write(r.join("late.json.claimed"), b"{}").unwrap();
        fs::write(r.join("old.json.claimed"), b"{}").unwrap();
        fs::write(d.path().join("responses/old.json"), b"{}").unwrap();
        fs::write(r.join("next.json"), b"n").unwrap();
        let input = put_helper_stdin(&[
            PutItem {
                id: "a",
                json: b"{\"id\":\"a\"}",
                not_after: Some(crate::transport::queue::file::now_epoch_ms() + 60_000),
            },
            PutItem {
                id: "late",
                json: b"{}",
                not_after: Some(1),
            },
        ]);
        let mut o = opts(d.path());
        o.put = true;
        o.sweep = vec!["old".into()];
        let mut out = Vec::new();
        take(&o, &mut &input[..], &mut out).unwrap();
        let parsed = parse_take(&out);
        assert!(parsed.put.complete && parsed.complete);
        assert_eq!(parsed.put.written, vec!["a"]);
        assert_eq!(parsed.put.skipped, vec!["late"]);
        assert!(parsed.sandbox_ms.is_some());
        assert_eq!(
            parsed.items,
            vec![Taken::File {
                id: "next".into(),
                bytes: b"n".to_vec()
            }]
        );
        assert!(d.path().join("responses/a.json").exists());
        assert!(!d.path().join("responses/late.json").exists());
        assert!(!d.path().join("responses/old.json").exists());
        let mut left: Vec<String> = fs::read_dir(&r)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, vec!["next.json.claimed"]);
    }

    #[test]
    fn put_writes_only_for_claimed_requests() {
        let d = tempfile::tempdir().unwrap();
        Queue::open(d.path(), true).unwrap();
        let r = d.path().join("requests");
        fs::write(r.join("a.json.claimed"), b"{}").unwrap();
        let item = |id, json| crate::transport::queue::scripts::PutItem {
            id,
            json,
            not_after: None,
        };
        let input = crate::transport::queue::scripts::put_helper_stdin(&[
            item("a", b"{\"id\":\"a\"}"),
            item("b", b"{\"id\":\"b\"}"),
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
