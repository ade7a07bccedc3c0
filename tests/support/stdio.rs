//! The stdio transport (docs/reference.md §6.2): a [`Relay`] is `relay --transport stdio -- <the gateway>`,
//! the relay holding the upstream URL and credential, the gateway (its child) given only its
//! `--listen` address; the token and nonce reach it through the relay's handshake.

use std::process::{Command, ExitStatus};

use serde_json::Value;

use super::client::{Agent, Endpoint};
use super::process::{bridge_binary_str, bridge_command, children_of, Proc};
use super::upstream::MockUpstream;
use super::{closed_port, BRIDGE_TOKEN, UPSTREAM_TOKEN};

/// A relay (or `serve`) command for the stdio tests: the mock upstream and its credential in the
/// environment, JSON logs, and no rate limit (the concurrency tests would otherwise hit the
/// burst). `args` are the command line (subcommand included).
pub fn relay_command(upstream: &MockUpstream, args: &[&str]) -> Command {
    relay_command_url(&upstream.url(), args)
}

/// [`relay_command`] forwarding to `upstream_url` (e.g. one where nothing listens).
pub fn relay_command_url(upstream_url: &str, args: &[&str]) -> Command {
    bridge_command(
        args,
        &[
            ("CALLBACK_BRIDGE_UPSTREAM", upstream_url),
            ("CALLBACK_BRIDGE_UPSTREAM_TOKEN", UPSTREAM_TOKEN),
            ("CALLBACK_BRIDGE_LOG_FORMAT", "json"),
            ("CALLBACK_BRIDGE_RATE_LIMIT_PER_SECOND", "0"),
        ],
    )
}

/// A running relay and the agent-facing address of its gateway.
pub struct Relay {
    pub proc: Proc,
    /// The gateway's `--listen` address, where the agent connects.
    pub addr: Endpoint,
    pub token: String,
    pub ready: Value,
}

/// How a relay test starts its gateway.
#[derive(Default)]
pub struct RelayOptions<'a> {
    /// Extra relay arguments before `--` (e.g. `--handshake stdin`).
    pub relay_args: &'a [&'a str],
    /// Extra relay environment (limits, `PAPERCLIP_RUN_ID`).
    pub relay_env: &'a [(&'a str, &'a str)],
    /// Extra gateway arguments.
    pub gateway_args: &'a [&'a str],
    /// Supply the bridge token [`BRIDGE_TOKEN`] (else the relay generates and prints it).
    pub supplied_token: bool,
    /// Wrap the gateway in `sh -c '<prefix>; exec "$0" "$@"'`.
    pub shell_prefix: Option<&'a str>,
    /// The gateway listens on this Unix socket instead of a loopback port.
    pub unix_socket: Option<&'a std::path::Path>,
}

impl Relay {
    /// `relay --transport stdio -- callback-bridge gateway --transport stdio --listen
    /// 127.0.0.1:PORT` (or `unix:PATH`), waiting for the relay's readiness line (printed once the gateway's READY
    /// line was accepted, after the gateway bound its port).
    pub fn start(upstream: &MockUpstream, opts: RelayOptions<'_>) -> Relay {
        Self::start_url(&upstream.url(), opts)
    }

    /// [`Relay::start`] forwarding to `upstream_url`.
    pub fn start_url(upstream_url: &str, opts: RelayOptions<'_>) -> Relay {
        let (listen, addr) = match opts.unix_socket {
            Some(path) => (format!("unix:{}", path.display()), Endpoint::unix(path)),
            None => {
                let addr = std::net::SocketAddr::from(([127, 0, 0, 1], closed_port()));
                (addr.to_string(), Endpoint::Tcp(addr))
            }
        };
        let mut cmd = relay_command_url(upstream_url, &["relay", "--transport", "stdio"]);
        cmd.args(opts.relay_args).arg("--");
        if opts.supplied_token {
            cmd.env("CALLBACK_BRIDGE_TOKEN", BRIDGE_TOKEN);
        }
        for (k, v) in opts.relay_env {
            cmd.env(k, v);
        }
        if let Some(prefix) = opts.shell_prefix {
            cmd.args(["sh", "-c", &format!("{prefix}; exec \"$0\" \"$@\"")]);
        }
        cmd.arg(bridge_binary_str())
            .args(["gateway", "--transport", "stdio", "--listen", &listen])
            .args(opts.gateway_args);
        let mut proc = Proc::spawn(cmd, "stdio relay");
        let ready = proc.next_json().expect("relay readiness line");
        assert_eq!(ready["event"], "ready", "{ready}");
        let token = if opts.supplied_token {
            assert!(ready.get("token").is_none(), "supplied token printed");
            BRIDGE_TOKEN.to_owned()
        } else {
            ready["token"].as_str().expect("generated token").to_owned()
        };
        Relay {
            proc,
            addr,
            token,
            ready,
        }
    }

    /// The agent-facing endpoint (the gateway's address and the token).
    pub fn agent(&self) -> Agent {
        Agent {
            addr: self.addr,
            token: self.token.clone(),
        }
    }

    pub fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// The gateway process (the relay's only child when spawned without a shell).
    pub fn gateway_pid(&self) -> u32 {
        let children = children_of(self.proc.pid());
        assert_eq!(children.len(), 1, "relay children: {children:?}");
        children[0]
    }

    /// SIGTERM, then the exit-summary line and the exit status.
    pub fn stop(mut self) -> (Value, ExitStatus) {
        self.proc.signal("TERM");
        let exit = self.proc.next_json().expect("exit line");
        let status = self.proc.wait_exit();
        (exit, status)
    }
}
