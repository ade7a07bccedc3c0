//! The agent-facing listen address: loopback TCP (`IP:PORT`) or a Unix socket (`unix:PATH`), the
//! socket's mode, and the optional peer allow-list.
//!
//! Promise: a TCP address that is not loopback is refused unless allowed; a socket path is made
//! absolute (the readiness line names it for readers in other directories) and must fit the
//! kernel's limit; the socket mode is owner-only or owner+group, never world-accessible; the
//! socket-only settings (`listen_mode`, `allow_peer_uid`, `allow_peer_gid`) are refused on TCP,
//! where they could only give a false sense of protection. Every refusal is a `ConfigError` (exit 2).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::{invalid, ConfigError};

/// The prefix that selects a Unix socket in `listen`.
pub const UNIX_PREFIX: &str = "unix:";
/// `sun_path` holds 108 bytes on Linux, one of them the terminating NUL.
pub const MAX_SOCKET_PATH_BYTES: usize = 107;
/// The default socket mode: only the bridge's own user may connect.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;
/// The one wider mode offered: the owner's group may connect too (an agent running as another
/// user of a shared group). Anything world-accessible is refused: the bridge token would then be
/// the only barrier against every local user.
pub const GROUP_SOCKET_MODE: u32 = 0o660;

/// Where the agent-facing listener listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(UnixListen),
}

/// A `unix:` listen address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixListen {
    /// Absolute path of the socket.
    pub path: PathBuf,
    /// Permission bits of the socket file (0600 or 0660).
    pub mode: u32,
    /// Who may connect, beyond what the mode lets through.
    pub peers: PeerCheck,
}

/// The optional peer allow-list of a Unix socket: the kernel's credentials of the connecting
/// process (`SO_PEERCRED`: effective uid and gid at `connect` time) must be in every list that
/// is set. Unset lists admit anyone the socket's mode lets connect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCheck {
    pub uids: Option<Vec<u32>>,
    pub gids: Option<Vec<u32>>,
}

impl PeerCheck {
    /// Whether a peer with this uid and gid may talk to the bridge.
    pub fn allows(&self, uid: u32, gid: u32) -> bool {
        let admits =
            |list: &Option<Vec<u32>>, id: u32| list.as_ref().map_or(true, |l| l.contains(&id));
        admits(&self.uids, uid) && admits(&self.gids, gid)
    }

    pub fn is_set(&self) -> bool {
        self.uids.is_some() || self.gids.is_some()
    }
}

impl ListenAddr {
    /// A spawner can tell the agent this address before the listener runs: a TCP port other
    /// than 0, or any socket path (the stdio gateway needs one, [`super::load`]).
    pub fn is_fixed(&self) -> bool {
        match self {
            ListenAddr::Tcp(addr) => addr.port() != 0,
            ListenAddr::Unix(_) => true,
        }
    }
}

impl std::fmt::Display for ListenAddr {
    /// As `check` prints it: `127.0.0.1:0`, or `unix:/run/a.sock (mode 0600, peer uid 1000)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => addr.fmt(f),
            ListenAddr::Unix(u) => {
                write!(f, "{UNIX_PREFIX}{} (mode {:04o}", u.path.display(), u.mode)?;
                for (what, ids) in [("uid", &u.peers.uids), ("gid", &u.peers.gids)] {
                    if let Some(ids) = ids {
                        let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
                        write!(f, ", peer {what} {}", ids.join(","))?;
                    }
                }
                f.write_str(")")
            }
        }
    }
}

/// The socket-related options as given (before validation).
pub struct RawListen<'a> {
    pub listen: &'a str,
    pub allow_non_loopback: bool,
    pub mode: Option<&'a str>,
    pub allow_peer_uid: Option<&'a [u32]>,
    pub allow_peer_gid: Option<&'a [u32]>,
}

/// Parses and validates the listen address and the socket options that go with it.
pub fn parse(raw: RawListen<'_>) -> Result<ListenAddr, ConfigError> {
    let Some(path) = raw.listen.strip_prefix(UNIX_PREFIX) else {
        for (key, given, why) in [
            (
                "listen_mode",
                raw.mode.is_some(),
                "a TCP port has no file mode",
            ),
            (
                "allow_peer_uid",
                raw.allow_peer_uid.is_some(),
                "TCP carries no peer identity",
            ),
            (
                "allow_peer_gid",
                raw.allow_peer_gid.is_some(),
                "TCP carries no peer identity",
            ),
        ] {
            if given {
                return Err(invalid(
                    key,
                    format!("applies only to a unix: listen address ({why})"),
                ));
            }
        }
        return parse_tcp(raw.listen, raw.allow_non_loopback).map(ListenAddr::Tcp);
    };
    Ok(ListenAddr::Unix(UnixListen {
        path: socket_path(path)?,
        mode: raw.mode.map_or(Ok(DEFAULT_SOCKET_MODE), socket_mode)?,
        peers: PeerCheck {
            uids: id_list("allow_peer_uid", raw.allow_peer_uid)?,
            gids: id_list("allow_peer_gid", raw.allow_peer_gid)?,
        },
    }))
}

fn socket_path(raw: &str) -> Result<PathBuf, ConfigError> {
    let key = "listen";
    if raw.is_empty() {
        return Err(invalid(
            key,
            "unix: needs a socket path, e.g. unix:/run/agent/bridge.sock",
        ));
    }
    if raw.contains('\0') {
        return Err(invalid(key, "the socket path contains a NUL byte"));
    }
    let path = std::path::absolute(raw)
        .map_err(|e| invalid(key, format!("cannot make {raw:?} absolute: {e}")))?;
    let len = path.as_os_str().as_bytes().len();
    if len > MAX_SOCKET_PATH_BYTES {
        return Err(invalid(
            key,
            format!(
                "the socket path {} is {len} bytes; the kernel allows {MAX_SOCKET_PATH_BYTES}",
                path.display()
            ),
        ));
    }
    Ok(path)
}

fn socket_mode(raw: &str) -> Result<u32, ConfigError> {
    match raw.trim() {
        "0600" | "600" => Ok(DEFAULT_SOCKET_MODE),
        "0660" | "660" => Ok(GROUP_SOCKET_MODE),
        other => Err(invalid(
            "listen_mode",
            format!("{other:?} is not allowed: use 0600 (owner only) or 0660 (owner and group)"),
        )),
    }
}

fn id_list(key: &'static str, ids: Option<&[u32]>) -> Result<Option<Vec<u32>>, ConfigError> {
    match ids {
        Some([]) => Err(invalid(key, "needs at least one id")),
        Some(ids) => Ok(Some(ids.to_vec())),
        None => Ok(None),
    }
}

/// `IP:PORT` or `localhost:PORT`; loopback only unless `allow_non_loopback`.
pub fn parse_tcp(raw: &str, allow_non_loopback: bool) -> Result<SocketAddr, ConfigError> {
    parse_tcp_for("listen", raw, allow_non_loopback)
}

/// [`parse_tcp`] for the setting `key` (`listen`, `admin_listen`).
pub fn parse_tcp_for(
    key: &'static str,
    raw: &str,
    allow_non_loopback: bool,
) -> Result<SocketAddr, ConfigError> {
    let addr = match raw.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => match raw.rsplit_once(':') {
            Some(("localhost", port)) => {
                let port: u16 = port
                    .parse()
                    .map_err(|_| invalid(key, format!("{raw:?} has an invalid port")))?;
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
            }
            _ => {
                let forms = if key == "listen" {
                    "an IP:PORT address or unix:PATH"
                } else {
                    "an IP:PORT address"
                };
                return Err(invalid(
                    key,
                    format!("{raw:?} is not {forms} (e.g. 127.0.0.1:0)"),
                ));
            }
        },
    };
    if !addr.ip().is_loopback() && !allow_non_loopback {
        return Err(invalid(
            key,
            format!("{addr} is not a loopback address; set allow_non_loopback = true to permit it"),
        ));
    }
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix(listen: &str) -> RawListen<'_> {
        RawListen {
            listen,
            allow_non_loopback: false,
            mode: None,
            allow_peer_uid: None,
            allow_peer_gid: None,
        }
    }

    #[test]
    fn unix_address_is_absolute_owner_only_and_fixed() {
        let ListenAddr::Unix(u) = parse(unix("unix:/run/a.sock")).unwrap() else {
            panic!("not unix")
        };
        assert_eq!(u.path, PathBuf::from("/run/a.sock"));
        assert_eq!(u.mode, 0o600);
        assert!(!u.peers.is_set());
        let relative = parse(unix("unix:a.sock")).unwrap();
        let ListenAddr::Unix(u) = &relative else {
            panic!()
        };
        assert!(u.path.is_absolute());
        assert!(relative.is_fixed());
    }

    #[test]
    fn refuses_empty_overlong_and_nul_socket_paths() {
        assert!(parse(unix("unix:")).is_err());
        assert!(parse(unix("unix:/tmp/a\0b")).is_err());
        let long = format!("unix:/{}", "x".repeat(MAX_SOCKET_PATH_BYTES));
        let err = parse(unix(&long)).unwrap_err().to_string();
        assert!(err.contains("107"), "{err}");
        let fits = format!("unix:/{}", "x".repeat(MAX_SOCKET_PATH_BYTES - 1));
        assert!(parse(unix(&fits)).is_ok());
    }

    #[test]
    fn socket_mode_is_owner_or_group_never_world() {
        for (given, mode) in [("0600", 0o600), ("0660", 0o660), ("660", 0o660)] {
            let raw = RawListen {
                mode: Some(given),
                ..unix("unix:/s")
            };
            let ListenAddr::Unix(u) = parse(raw).unwrap() else {
                panic!()
            };
            assert_eq!(u.mode, mode, "{given}");
        }
        for bad in ["0666", "0777", "0644", "0700", "rw", ""] {
            let raw = RawListen {
                mode: Some(bad),
                ..unix("unix:/s")
            };
            assert!(parse(raw).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn socket_options_are_refused_on_tcp() {
        let raw = RawListen {
            mode: Some("0600"),
            ..unix("127.0.0.1:0")
        };
        assert!(parse(raw).unwrap_err().to_string().contains("listen_mode"));
        let raw = RawListen {
            allow_peer_uid: Some(&[0]),
            ..unix("127.0.0.1:0")
        };
        assert!(parse(raw)
            .unwrap_err()
            .to_string()
            .contains("allow_peer_uid"));
        let raw = RawListen {
            allow_peer_gid: Some(&[0]),
            ..unix("127.0.0.1:0")
        };
        assert!(parse(raw)
            .unwrap_err()
            .to_string()
            .contains("allow_peer_gid"));
    }

    #[test]
    fn peer_check_needs_every_set_list_to_admit_the_peer() {
        let open = PeerCheck::default();
        assert!(open.allows(1000, 1000));
        let uid = PeerCheck {
            uids: Some(vec![1000, 1001]),
            gids: None,
        };
        assert!(uid.allows(1001, 5) && !uid.allows(0, 0));
        let both = PeerCheck {
            uids: Some(vec![1000]),
            gids: Some(vec![50]),
        };
        assert!(both.allows(1000, 50));
        assert!(!both.allows(1000, 51) && !both.allows(999, 50));
        let raw = RawListen {
            allow_peer_uid: Some(&[]),
            ..unix("unix:/s")
        };
        assert!(parse(raw).is_err());
    }
}
