//! `pilotd`: the daemon's command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use super::config::{self, RendezvousFile, UpFile};
use super::rendezvous::{RendezvousAction, RendezvousCommand};
use super::values::{
    log_filter, parse_endpoint, parse_hostname, parse_peer, parse_rendezvous, Socks5Addr,
};
use crate::addr::Hostname;
use crate::daemon::rendezvous::run_rendezvous;
use crate::daemon::services::Expose;
use crate::daemon::{
    self, UpOptions, Userspace, DEFAULT_INTERFACE, DEFAULT_LISTEN_PORT, DEFAULT_MTU, DEFAULT_SOCKS5,
};
use crate::identity;
use crate::node::{PeerConfig, RendezvousConfig};

/// Log filter when neither `--log-level`, `PILOT_LOG` nor a config file sets one.
const DEFAULT_LOG_LEVEL: &str = "info";
/// WireGuard persistent keepalive of `pilotd up`, seconds.
const DEFAULT_KEEPALIVE: u16 = 25;

#[derive(Debug, Parser)]
#[command(name = "pilotd", version, about = "Pilot overlay network daemon")]
struct Cli {
    /// Log level: error, warn, info, debug, trace or off; or directives TARGET=LEVEL such as
    /// pilot=debug,boringtun=warn [default: info]
    #[arg(long, global = true, env = "PILOT_LOG", value_name = "LEVEL", value_parser = parse_log_level)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bring the node up: TUN interface, UDP socket, peers, control socket. Runs until SIGINT/SIGTERM.
    Up(Box<UpArgs>),
    /// Print this node's public key and address (creating the identity if there is none), then exit.
    Identity {
        #[command(flatten)]
        state: StateArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the rendezvous server: registry, endpoint discovery, punch coordination and relay
    Rendezvous(Box<super::rendezvous::RendezvousCommand>),
}

#[derive(Debug, clap::Args)]
struct StateArg {
    /// State directory holding identity.json [default: /var/lib/pilot for root, ~/.pilot otherwise]
    #[arg(long, env = "PILOT_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Config file (TOML) with any of these settings, named like the flags (`listen_port`);
    /// flags given here override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    state: StateArg,
    /// TUN interface name [default: pilot0]
    #[arg(long)]
    interface: Option<String>,
    /// MTU of the TUN interface (1280..65455); the default leaves room for WireGuard and a relay
    /// header on a 1500-byte underlay [default: 1380]
    #[arg(long)]
    mtu: Option<u32>,
    /// UDP port for all tunnel traffic (0 = any free port) [default: 51870]
    #[arg(long)]
    listen_port: Option<u16>,
    /// A static peer, KEY@HOST:PORT (repeatable). KEY is the peer's public key as printed by
    /// `pilotctl info`; HOST an IP address (IPv6 in brackets) or a name.
    #[arg(long = "peer", value_name = "KEY@HOST:PORT", value_parser = parse_peer)]
    peers: Vec<PeerConfig>,
    /// Rendezvous server, [KEY@]HOST:PORT: registration, NAT discovery, hole punching and
    /// relay. With KEY, its answers must be signed by that key; without, the first key that
    /// answers is pinned in the state directory and required from then on. Repeatable, each
    /// as KEY@HOST:PORT: the node registers with the first that answers, in this order, and
    /// moves to the next when the one it uses stops answering.
    /// (`--registry` is accepted as well, the seed's word for it.)
    #[arg(long, alias = "registry", value_name = "[KEY@]HOST:PORT", value_parser = parse_rendezvous)]
    rendezvous: Vec<RendezvousConfig>,
    /// The rendezvous' second UDP port, used to measure NAT behaviour [default: its port + 1]
    #[arg(long, value_name = "PORT")]
    rendezvous_alt_port: Option<u16>,
    /// The TCP port where each rendezvous takes TLS, tried when UDP to it gets no answer (a
    /// network that blocks UDP); 0: never [default: 443]
    #[arg(long, value_name = "PORT")]
    rendezvous_tls_port: Option<u16>,
    /// The rendezvous given are instances of one service on one registry (`pilotd rendezvous
    /// --store postgres://…`): start at the one this node's key picks, which spreads a fleet
    /// over them, and stay where failover takes it (without it: the first, and back to it)
    #[arg(long)]
    shared_registry: bool,
    /// Hostname to claim at the rendezvous (lowercase letters, digits and `-`, 1-63); peers then
    /// reach this node as NAME.pilot. The first node to claim a name keeps it.
    #[arg(long, value_name = "NAME", value_parser = parse_hostname)]
    hostname: Option<Hostname>,
    /// This node's public endpoint, when it is known: a fixed public address, or a port
    /// forward to --listen-port. Peers are told it first, and NAT behaviour is not measured.
    /// Needs --rendezvous (peers learn it there).
    #[arg(long, value_name = "IP:PORT", value_parser = parse_endpoint)]
    endpoint: Option<SocketAddr>,
    /// Says that --endpoint is public (it is implied: accepted for the seed's habit). Alone it
    /// is refused: trust is always mutual, so no node is open to everyone.
    #[arg(long)]
    public: bool,
    /// Do not ask the router (PCP, NAT-PMP, UPnP-IGD) to map the UDP port; `port_mapping =
    /// false` in the config file does the same. On by default: a mapped port lets peers behind
    /// any NAT reach this node directly.
    #[arg(long = "no-port-mapping", action = clap::ArgAction::SetFalse)]
    port_mapping: bool,
    /// Approve every incoming trust request automatically (for public services; off by default).
    #[arg(long)]
    auto_approve: bool,
    /// Keep a managed block of trusted peers' NAME.pilot entries in a hosts file (for systems
    /// without systemd-resolved); given without a value, /etc/hosts.
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "/etc/hosts")]
    hosts_file: Option<PathBuf>,
    /// WireGuard persistent keepalive in seconds, to hold NAT mappings open (0 = off) [default: 25]
    #[arg(long)]
    keepalive: Option<u16>,
    /// Control socket path [default: /run/pilot/pilotd.sock for root, $XDG_RUNTIME_DIR/pilot/pilotd.sock otherwise]
    #[arg(long, env = "PILOT_CONTROL")]
    control: Option<PathBuf>,
    /// Serve Prometheus metrics over HTTP at IP:PORT, path /metrics (e.g. 127.0.0.1:9187).
    #[arg(long, value_name = "IP:PORT")]
    metrics: Option<SocketAddr>,
    /// Rootless mode: no TUN; the node's address lives in a userspace TCP/IP stack. Programs
    /// reach peers through the SOCKS5 proxy (--socks5) and peers reach local programs through
    /// exposed ports (--expose). Needs no root and no /dev/net/tun.
    #[arg(long)]
    userspace: bool,
    /// Userspace mode: where the SOCKS5 proxy to peers listens, or `off`. It resolves NAME.pilot
    /// itself (curl --socks5-hostname) [default: 127.0.0.1:1080]
    #[arg(long, value_name = "IP:PORT|off")]
    socks5: Option<Socks5Addr>,
    /// Userspace mode: let trusted peers connect to this node's overlay PORT, forwarded to
    /// 127.0.0.1:LOCALPORT (default: the same port). Repeatable.
    #[arg(long, value_name = "PORT[:LOCALPORT]")]
    expose: Vec<Expose>,
}

/// The command line, for the generated completions and man pages.
#[cfg(test)]
pub(super) fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command()
}

/// Entry point of the `pilotd` binary.
pub fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pilotd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Reads the command's config file and checks every setting before logging starts (the file
/// may set the log level) and before anything is created.
fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(args) => {
            let mut file: UpFile = config::load(args.config.as_deref())?;
            let log_level = cli.log_level.or(file.log_level.take());
            let options = up_options(*args, file)?;
            init_logging(log_level.as_deref());
            daemon::run_up(options)
        }
        Command::Identity { state, json } => {
            init_logging(cli.log_level.as_deref());
            show_identity(state, json)
        }
        Command::Rendezvous(command) => match *command {
            RendezvousCommand {
                action: Some(RendezvousAction::FreeName(args)),
                ..
            } => {
                let file: RendezvousFile = config::load(args.config.as_deref())?;
                init_logging(cli.log_level.as_deref().or(file.log_level.as_deref()));
                let data_dir = args.data_dir(&file);
                let store = args.store.clone().resolve(&file)?;
                let key = crate::daemon::rendezvous::free_name(&data_dir, &store, &args.name)?;
                println!(
                    "freed `{}` (held by {key}); any node may claim it now. If the node holding \
                     it still runs with that hostname, it claims it again at its next \
                     registration: run `pilotctl release-name` there or change its hostname",
                    args.name
                );
                Ok(())
            }
            RendezvousCommand {
                action: None,
                serve: args,
            } => {
                let mut file: RendezvousFile = config::load(args.config.as_deref())?;
                let log_level = cli.log_level.or(file.log_level.take());
                let options = super::rendezvous::options(args, file)?;
                init_logging(log_level.as_deref());
                run_rendezvous(options)
            }
        },
    }
}

/// The settings of `pilotd up`: each from its flag (or environment variable) if given, else
/// from the config file, else its default. `--peer` flags replace the file's `peers`.
fn up_options(args: UpArgs, file: UpFile) -> anyhow::Result<UpOptions> {
    let mtu = args.mtu.or(file.mtu).unwrap_or(DEFAULT_MTU);
    daemon::check_mtu(mtu)?;
    let peers = if args.peers.is_empty() {
        file.peers.unwrap_or_default()
    } else {
        args.peers
    };
    let list = if args.rendezvous.is_empty() {
        file.rendezvous.unwrap_or_default()
    } else {
        args.rendezvous
    };
    let alt_port = args.rendezvous_alt_port.or(file.rendezvous_alt_port);
    let mut list = list;
    if let Some(port) = args.rendezvous_tls_port.or(file.rendezvous_tls_port) {
        for r in &mut list {
            r.stream = (port != 0).then(|| SocketAddr::new(r.addr.ip(), port));
        }
    }
    let (mut rendezvous, standby_rendezvous) = rendezvous_list(list, alt_port)?;
    let shared_registry = args.shared_registry || file.shared_registry.unwrap_or(false);
    if shared_registry && standby_rendezvous.is_empty() {
        bail!(
            "--shared-registry spreads nodes over several rendezvous instances: give \
             --rendezvous KEY@HOST:PORT once for each (or a list in `rendezvous`)"
        );
    }
    let hostname = args.hostname.or(file.hostname);
    let endpoint = args.endpoint.or(file.endpoint);
    if args.public && endpoint.is_none() {
        bail!("{PUBLIC_ALONE}");
    }
    match &mut rendezvous {
        Some(r) => r.alt_port = alt_port.unwrap_or(r.alt_port),
        None if hostname.is_some() || alt_port.is_some() => bail!(
            "a hostname or rendezvous alternate port needs a rendezvous: give --rendezvous \
             [KEY@]HOST:PORT or set `rendezvous` in the config file"
        ),
        None if endpoint.is_some() => bail!(
            "--endpoint is told to peers through the rendezvous: give --rendezvous \
             [KEY@]HOST:PORT too, or set `rendezvous` in the config file (static peers name \
             this node's endpoint in their own --peer KEY@HOST:PORT)"
        ),
        None => {}
    }
    let socks5 = args.socks5.or(file.socks5);
    let expose = if args.expose.is_empty() {
        file.expose.unwrap_or_default()
    } else {
        args.expose
    };
    let userspace = if args.userspace || file.userspace.unwrap_or(false) {
        let default = DEFAULT_SOCKS5.parse().expect("a valid address");
        Some(Userspace {
            socks5: socks5.map_or(Some(default), |s| s.0),
            expose,
        })
    } else if socks5.is_some() || !expose.is_empty() {
        bail!(
            "--socks5 and --expose are for --userspace mode; in kernel mode programs reach peers \
             through the interface, and services bound to [::] are reachable from trusted peers"
        );
    } else {
        None
    };
    Ok(UpOptions {
        state_dir: args
            .state
            .state_dir
            .or(file.state_dir)
            .unwrap_or_else(identity::default_state_dir),
        interface: args
            .interface
            .or(file.interface)
            .unwrap_or_else(|| DEFAULT_INTERFACE.to_owned()),
        mtu,
        listen_port: args
            .listen_port
            .or(file.listen_port)
            .unwrap_or(DEFAULT_LISTEN_PORT),
        peers,
        rendezvous,
        standby_rendezvous,
        shared_registry,
        hostname,
        endpoint,
        auto_approve: args.auto_approve || file.auto_approve.unwrap_or(false),
        port_mapping: args.port_mapping && file.port_mapping.unwrap_or(true),
        hosts_file: args.hosts_file.or(file.hosts_file),
        control: args
            .control
            .or(file.control)
            .unwrap_or_else(crate::api::default_socket_path),
        keepalive: args
            .keepalive
            .or(file.keepalive)
            .unwrap_or(DEFAULT_KEEPALIVE),
        metrics: args.metrics.or(file.metrics),
        userspace,
    })
}

fn show_identity(state: StateArg, json: bool) -> anyhow::Result<()> {
    let dir = state.state_dir.unwrap_or_else(identity::default_state_dir);
    let id = crate::identity::load_or_create(&dir)?;
    let (key, addr) = (id.public_key(), id.address());
    if json {
        let value = serde_json::json!({
            "public_key": key.to_string(),
            "address": addr.to_ipv6().to_string(),
            "node": addr.to_string(),
        });
        println!("{value}");
    } else {
        println!(
            "public_key  {key}\naddress     {}\nnode        {addr}",
            addr.to_ipv6()
        );
    }
    Ok(())
}

/// Why `--public` alone is refused, and what to type instead.
pub(super) const PUBLIC_ALONE: &str = "--public only marks the --endpoint as public: give \
     this node's public address with it, `--endpoint IP:PORT --public` (or just --endpoint). \
     Nothing makes a node open to everyone: trust is always mutual; to approve every trust \
     request automatically, run pilotd with --auto-approve";

/// The rendezvous to use first and the ones to move to, from `--rendezvous` (or the config
/// file's `rendezvous`) in order. Several must each have a pinned key: a node moving between
/// them must not trust whichever key answers at the next address, and answers from one it
/// does not use (telling it the first is back) are believed only under a known key.
fn rendezvous_list(
    mut list: Vec<RendezvousConfig>,
    alt_port: Option<u16>,
) -> anyhow::Result<(Option<RendezvousConfig>, Vec<RendezvousConfig>)> {
    if list.len() > 1 {
        if alt_port.is_some() {
            bail!(
                "--rendezvous-alt-port is for a single rendezvous; with several, each one's \
                 alternate port is its port + 1"
            );
        }
        if let Some(r) = list.iter().find(|r| r.key.is_none()) {
            bail!(
                "rendezvous {} has no key: with several rendezvous give each as KEY@HOST:PORT \
                 (the key is printed by `pilotd rendezvous` at start)",
                r.addr
            );
        }
        for (i, r) in list.iter().enumerate() {
            if list[..i].iter().any(|o| o.addr == r.addr) {
                bail!("rendezvous {} is given twice", r.addr);
            }
        }
    }
    let standby = list.split_off(list.len().min(1));
    Ok((list.pop(), standby))
}

/// `--log-level`, checked when the command line is parsed.
fn parse_log_level(filter: &str) -> Result<String, String> {
    log_filter(filter).map(|_| filter.to_owned())
}

fn init_logging(filter: Option<&str>) {
    let filter = filter.unwrap_or(DEFAULT_LOG_LEVEL);
    let filter = log_filter(filter).unwrap_or_else(|e| {
        eprintln!("pilotd: bad --log-level: {e}; using {DEFAULT_LOG_LEVEL}");
        EnvFilter::new(DEFAULT_LOG_LEVEL)
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(test)]
#[path = "pilotd_config_tests.rs"]
mod config_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_argument_forms() {
        let key = identity::Identity::from_secret_bytes(&[3; 32]).public_key();
        let p = parse_peer(&format!("{key}@192.0.2.7:51870")).unwrap();
        assert_eq!(p.key, key);
        assert_eq!(p.endpoint, Some("192.0.2.7:51870".parse().unwrap()));
        let p = parse_peer(&format!("{key}@[2001:db8::1]:9")).unwrap();
        assert_eq!(p.endpoint, Some("[2001:db8::1]:9".parse().unwrap()));
        assert!(parse_peer(&format!("{key}"))
            .unwrap_err()
            .contains("KEY@HOST:PORT"));
        assert!(parse_peer("nothex@192.0.2.7:1")
            .unwrap_err()
            .contains("public key"));
        assert!(parse_peer(&format!("{key}@192.0.2.7")).is_err());
    }

    #[test]
    fn log_levels_that_would_silence_the_daemon_are_refused() {
        for good in [
            "info",
            "WARN",
            "off",
            "pilot=debug",
            "info,boringtun=warn",
            "debug,",
        ] {
            assert!(log_filter(good).is_ok(), "{good}");
        }
        for bad in ["verbose", "warning", "info,quiet", "3"] {
            let e = log_filter(bad).unwrap_err();
            assert!(
                e.ends_with(
                    "is not a log level: use one of error, warn, info, debug, trace, off, or \
                     directives TARGET=LEVEL such as pilot=debug,boringtun=warn"
                ),
                "{bad}: {e}"
            );
        }
        assert!(log_filter("pilot=lots")
            .unwrap_err()
            .contains("`pilot=lots` is not a log filter"));
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
