//! The agent-facing Unix socket (`listen = "unix:PATH"`): created private, left-over sockets
//! replaced, live ones and non-sockets never touched, removed on exit.
//!
//! Promise: the socket file never exists with looser permissions than asked for (umask 0177
//! around `bind`, then at most widened to the configured 0660); a path holding anything but a
//! socket is refused, as is a socket some process accepts on or one we cannot prove dead (only a
//! connection refused by the kernel proves it: nobody listens); the socket is removed when the
//! listener is dropped, but only while the path still names our own socket. Attacks defended:
//! another local user connecting (mode), a planted file or symlink at the path being deleted or
//! written through (`bind` never follows or replaces a path), and a second bridge silently
//! stealing a live bridge's socket.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::Mode;
use tokio::net::{UnixListener, UnixSocket};

/// Pending connections the kernel queues before `accept`, as for TCP: a client whose connect
/// finds the queue full gets `EAGAIN` (non-blocking clients such as Node fail at once).
const LISTEN_BACKLOG: u32 = 1024;
/// Masks every group and other bit while the socket is created: `bind` creates the file with
/// `0777 & !umask`, so it is born 0600 at most.
const PRIVATE_UMASK: u32 = 0o177;
/// How long the probe of an existing socket may take; a live listener answers at once, and a
/// listener that does not is not provably dead.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// A path that changes between our look and our bind (another process racing for it) is looked
/// at again this many times, then refused.
const BIND_ATTEMPTS: usize = 3;

/// Why the socket could not be created (exit 1: a condition of the machine, like a TCP port in
/// use; docs/reference.md §1.8).
#[derive(Debug, thiserror::Error)]
pub enum UnixBindError {
    #[error("cannot listen on unix:{}: a process is accepting connections on it", path.display())]
    Live { path: PathBuf },
    #[error("cannot listen on unix:{}: the path exists and is not a socket; not replacing it", path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot listen on unix:{}: cannot tell whether the socket there is in use ({source}); not replacing it", path.display())]
    Unprovable { path: PathBuf, source: io::Error },
    #[error("cannot listen on unix:{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// What a path holds, as far as a new listener is concerned.
#[derive(Debug)]
pub enum Occupant {
    Nothing,
    /// A socket nobody accepts on (its process died without removing it): may be replaced.
    Stale(Identity),
    /// A socket a process accepts on.
    Live,
    NotASocket,
    /// A socket whose probe failed otherwise (permission denied, backlog full, timeout).
    Unknown(io::Error),
}

/// A file's identity: device and inode. The socket is removed only while the path still has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    dev: u64,
    ino: u64,
}

impl Identity {
    fn of(meta: &std::fs::Metadata) -> Identity {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// Looks at `path` without changing it: a connection attempt tells a live socket from a stale
/// one.
pub async fn probe(path: &Path) -> Occupant {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Occupant::Nothing,
        Err(e) => return Occupant::Unknown(e),
    };
    if !meta.file_type().is_socket() {
        return Occupant::NotASocket;
    }
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::UnixStream::connect(path)).await {
        Ok(Ok(_)) => Occupant::Live,
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            Occupant::Stale(Identity::of(&meta))
        }
        Ok(Err(e)) if e.kind() == io::ErrorKind::NotFound => Occupant::Nothing,
        Ok(Err(e)) => Occupant::Unknown(e),
        Err(_) => Occupant::Unknown(io::Error::new(
            io::ErrorKind::TimedOut,
            "the socket did not answer a connection attempt",
        )),
    }
}

/// Removes `path` if it still is the socket `identity` names. The window between this look and
/// the unlink is the only race left (two bridges started on one path at the same instant).
fn remove_if_same(path: &Path, identity: Identity) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() && Identity::of(&meta) == identity => {
            std::fs::remove_file(path)
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// A bound, listening Unix socket; dropping it removes the socket file (if the path is still
/// ours).
#[derive(Debug)]
pub struct BoundSocket {
    listener: Option<UnixListener>,
    path: PathBuf,
    identity: Identity,
}

impl BoundSocket {
    pub fn listener(&self) -> &UnixListener {
        self.listener.as_ref().expect("listener present until drop")
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BoundSocket {
    fn drop(&mut self) {
        // Stop accepting first, then unlink: no new connection can arrive at a removed name.
        drop(self.listener.take());
        if let Err(e) = remove_if_same(&self.path, self.identity) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the socket");
        }
    }
}

/// Creates the socket at `path` with `mode`, replacing a stale socket, refusing anything else.
pub async fn bind(path: &Path, mode: u32) -> Result<BoundSocket, UnixBindError> {
    let io_err = |source| UnixBindError::Io {
        path: path.to_owned(),
        source,
    };
    let mut last_race = None;
    for _ in 0..BIND_ATTEMPTS {
        match bind_private(path) {
            Ok(listener) => return finish(listener, path, mode).map_err(io_err),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {}
            Err(e) => return Err(io_err(e)),
        }
        // Something is at the path: bind never replaces it. Decide whether we may.
        match probe(path).await {
            Occupant::Nothing => {}
            Occupant::Stale(identity) => {
                tracing::info!(path = %path.display(), "replacing a stale socket");
                remove_if_same(path, identity).map_err(io_err)?;
            }
            Occupant::Live => {
                return Err(UnixBindError::Live {
                    path: path.to_owned(),
                })
            }
            Occupant::NotASocket => {
                return Err(UnixBindError::NotASocket {
                    path: path.to_owned(),
                })
            }
            Occupant::Unknown(source) => {
                return Err(UnixBindError::Unprovable {
                    path: path.to_owned(),
                    source,
                })
            }
        }
        last_race = Some(io::Error::new(
            io::ErrorKind::AddrInUse,
            "the path kept changing while the socket was created",
        ));
    }
    Err(io_err(last_race.unwrap_or_else(|| {
        io::Error::from(io::ErrorKind::AddrInUse)
    })))
}

/// `bind` with the private umask. umask is process-wide: the few microseconds it is held only
/// make a file another thread creates meanwhile stricter, never looser, and at start-up no other
/// thread creates files.
fn bind_private(path: &Path) -> io::Result<UnixListener> {
    let socket = UnixSocket::new_stream()?;
    let previous = rustix::process::umask(Mode::from_raw_mode(PRIVATE_UMASK));
    let bound = socket.bind(path);
    rustix::process::umask(previous);
    bound?;
    socket.listen(LISTEN_BACKLOG)
}

/// Sets the final mode (0600 already, or widened to 0660) and records the socket's identity.
fn finish(listener: UnixListener, path: &Path, mode: u32) -> io::Result<BoundSocket> {
    let meta = std::fs::symlink_metadata(path)?;
    let identity = Identity::of(&meta);
    let socket = BoundSocket {
        listener: Some(listener),
        path: path.to_owned(),
        identity,
    };
    if meta.permissions().mode() & 0o777 != mode {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(socket)
}
