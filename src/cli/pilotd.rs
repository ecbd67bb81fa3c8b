//! `pilotd`: the daemon's command line.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::addr::Hostname;
use crate::daemon::{
    self, control, UpOptions, DEFAULT_INTERFACE, DEFAULT_LISTEN_PORT, DEFAULT_MTU,
};
use crate::identity::{self, Identity, NodeKey};
use crate::node::{PeerConfig, RendezvousConfig};

#[derive(Debug, Parser)]
#[command(name = "pilotd", version, about = "Pilot overlay network daemon")]
struct Cli {
    /// Log filter: error, warn, info, debug, trace, or a tracing directive list.
    #[arg(long, global = true, default_value = "info", env = "PILOT_LOG")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bring the node up: TUN interface, UDP socket, peers, control socket. Runs until SIGINT/SIGTERM.
    Up(UpArgs),
    /// Print this node's public key and address (creating the identity if there is none), then exit.
    Identity {
        #[command(flatten)]
        state: StateArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the rendezvous server: registry, endpoint discovery, punch coordination and relay
    Rendezvous(super::rendezvous::RendezvousArgs),
}

#[derive(Debug, clap::Args)]
struct StateArg {
    /// State directory holding identity.json [default: /var/lib/pilot for root, ~/.pilot otherwise]
    #[arg(long, env = "PILOT_STATE_DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    #[command(flatten)]
    state: StateArg,
    /// TUN interface name.
    #[arg(long, default_value = DEFAULT_INTERFACE)]
    interface: String,
    /// MTU of the TUN interface (1280..65455); the default leaves room for WireGuard and a relay
    /// header on a 1500-byte underlay.
    #[arg(long, default_value_t = DEFAULT_MTU)]
    mtu: u32,
    /// UDP port for all tunnel traffic (0 = any free port).
    #[arg(long, default_value_t = DEFAULT_LISTEN_PORT)]
    listen_port: u16,
    /// A static peer, KEY@HOST:PORT (repeatable). KEY is the peer's public key as printed by
    /// `pilotctl info`; HOST an IP address (IPv6 in brackets) or a name.
    #[arg(long = "peer", value_name = "KEY@HOST:PORT", value_parser = parse_peer)]
    peers: Vec<PeerConfig>,
    /// Rendezvous server, [KEY@]HOST:PORT: registration, NAT discovery, hole punching and
    /// relay. With KEY, its answers must be signed by that key; without, the first key that
    /// answers is pinned in the state directory and required from then on.
    #[arg(long, value_name = "[KEY@]HOST:PORT", value_parser = parse_rendezvous)]
    rendezvous: Option<RendezvousConfig>,
    /// The rendezvous' second UDP port, used to measure NAT behaviour [default: its port + 1]
    #[arg(long, value_name = "PORT", requires = "rendezvous")]
    rendezvous_alt_port: Option<u16>,
    /// Hostname to claim at the rendezvous (lowercase letters, digits and `-`, 1-63); peers then
    /// reach this node as NAME.pilot. The first node to claim a name keeps it.
    #[arg(long, value_name = "NAME", requires = "rendezvous", value_parser = parse_hostname)]
    hostname: Option<Hostname>,
    /// Approve every incoming trust request automatically (for public services; off by default).
    #[arg(long)]
    auto_approve: bool,
    /// Keep a managed block of trusted peers' NAME.pilot entries in a hosts file (for systems
    /// without systemd-resolved); given without a value, /etc/hosts.
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "/etc/hosts")]
    hosts_file: Option<PathBuf>,
    /// WireGuard persistent keepalive in seconds, to hold NAT mappings open (0 = off).
    #[arg(long, default_value_t = 25)]
    keepalive: u16,
    /// Control socket path [default: /run/pilot/pilotd.sock for root, $XDG_RUNTIME_DIR/pilot/pilotd.sock otherwise]
    #[arg(long, env = "PILOT_CONTROL")]
    control: Option<PathBuf>,
    /// Serve Prometheus metrics over HTTP at IP:PORT, path /metrics (e.g. 127.0.0.1:9187).
    #[arg(long, value_name = "IP:PORT")]
    metrics: Option<SocketAddr>,
}

/// Entry point of the `pilotd` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.log_level);
    let result = match cli.command {
        Command::Up(args) => up(args),
        Command::Identity { state, json } => show_identity(state, json),
        Command::Rendezvous(args) => super::rendezvous::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pilotd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn up(args: UpArgs) -> anyhow::Result<()> {
    daemon::check_mtu(args.mtu)?;
    let mut rendezvous = args.rendezvous;
    if let (Some(r), Some(alt)) = (&mut rendezvous, args.rendezvous_alt_port) {
        r.alt_port = alt;
    }
    daemon::run_up(UpOptions {
        state_dir: args
            .state
            .state_dir
            .unwrap_or_else(identity::default_state_dir),
        interface: args.interface,
        mtu: args.mtu,
        listen_port: args.listen_port,
        peers: args.peers,
        rendezvous,
        hostname: args.hostname,
        auto_approve: args.auto_approve,
        hosts_file: args.hosts_file,
        control: args.control.unwrap_or_else(control::default_socket_path),
        keepalive: args.keepalive,
        metrics: args.metrics,
    })
}

fn show_identity(state: StateArg, json: bool) -> anyhow::Result<()> {
    let dir = state.state_dir.unwrap_or_else(identity::default_state_dir);
    let id = Identity::load_or_create(&dir)?;
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

/// Parses `KEY@HOST:PORT`, resolving HOST once, now.
fn parse_hostname(s: &str) -> Result<Hostname, String> {
    s.parse()
        .map_err(|e: crate::addr::HostnameError| e.to_string())
}

fn parse_peer(text: &str) -> Result<PeerConfig, String> {
    let (key, endpoint) = text
        .split_once('@')
        .ok_or_else(|| format!("`{text}`: expected KEY@HOST:PORT"))?;
    let key: NodeKey = key.parse().map_err(|e| format!("{e}"))?;
    let endpoint = resolve_endpoint(endpoint)?;
    Ok(PeerConfig {
        key,
        endpoint: Some(endpoint),
    })
}

/// Parses `[KEY@]HOST:PORT` for `--rendezvous`; the alternate port defaults to PORT + 1.
fn parse_rendezvous(text: &str) -> Result<RendezvousConfig, String> {
    let (key, endpoint) = match text.split_once('@') {
        Some((key, endpoint)) => (
            Some(key.parse::<NodeKey>().map_err(|e| format!("{e}"))?),
            endpoint,
        ),
        None => (None, text),
    };
    let addr = resolve_endpoint(endpoint)?;
    let alt_port = addr.port().checked_add(1).ok_or_else(|| {
        format!("`{text}`: port 65535 leaves no room for the alternate port; give --rendezvous-alt-port")
    })?;
    Ok(RendezvousConfig {
        addr,
        alt_port,
        key,
    })
}

fn resolve_endpoint(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| format!("`{text}`: expected HOST:PORT ({e})"))?;
    addrs
        .next()
        .ok_or_else(|| format!("`{text}`: the name has no address"))
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|e| {
        eprintln!("pilotd: bad --log-level `{filter}` ({e}); using info");
        tracing_subscriber::EnvFilter::new("info")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_argument_forms() {
        let key = Identity::from_secret_bytes(&[3; 32]).public_key();
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
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
