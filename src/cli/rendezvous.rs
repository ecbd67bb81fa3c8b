//! `pilotd rendezvous`: the rendezvous server's command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;

use crate::daemon::rendezvous::{default_data_dir, run_rendezvous, RendezvousOptions};

#[derive(Debug, clap::Args)]
pub struct RendezvousArgs {
    /// Address and UDP port to serve on: registration, punching, relay and NAT probes
    /// (`0.0.0.0:PORT` or `[::]:PORT` for every address; port 0 = any free port).
    #[arg(long, value_name = "IP:PORT")]
    listen: SocketAddr,
    /// Second UDP port on the same address, answering NAT probes only, so nodes can tell
    /// endpoint-independent from endpoint-dependent NAT mapping [default: PORT+1]
    #[arg(long, value_name = "PORT")]
    alt_port: Option<u16>,
    /// Data directory holding identity.json and rendezvous.db [default:
    /// /var/lib/pilot-rendezvous for root, ~/.pilot-rendezvous otherwise]
    #[arg(long, env = "PILOT_RENDEZVOUS_DIR")]
    data_dir: Option<PathBuf>,
    /// Seconds between node re-registrations (told to nodes; holds their NAT mappings open).
    #[arg(long, value_name = "SECS", default_value_t = 25)]
    keepalive: u16,
    /// Seconds without a registration after which a node is no longer introduced or relayed
    /// to [default: 3 × keepalive + 5]
    #[arg(long, value_name = "SECS")]
    expiry: Option<u32>,
    /// Relay rate per node in Mbit/s (0 = relay nothing).
    #[arg(long, value_name = "MBIT", default_value_t = 100)]
    relay_rate: u64,
    /// Seconds between log lines with the counters (only when they changed).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    stats_interval: u32,
    /// Serve Prometheus metrics over HTTP at IP:PORT, path /metrics (e.g. 127.0.0.1:9188).
    #[arg(long, value_name = "IP:PORT")]
    metrics: Option<SocketAddr>,
}

/// Runs the rendezvous until SIGINT/SIGTERM.
pub fn run(args: RendezvousArgs) -> anyhow::Result<()> {
    run_rendezvous(options(args)?)
}

/// Checks the flags against each other and fills in the defaults.
fn options(args: RendezvousArgs) -> anyhow::Result<RendezvousOptions> {
    let port = args.listen.port();
    let alt_port = match args.alt_port {
        Some(alt) => alt,
        // Port 0 asks for any free port; so does its companion.
        None if port == 0 => 0,
        None => match port.checked_add(1) {
            Some(alt) => alt,
            None => {
                bail!("--listen port 65535 leaves no room for the default --alt-port; give one")
            }
        },
    };
    if alt_port == port && port != 0 {
        bail!("--alt-port {alt_port} is the --listen port; NAT detection needs a second port");
    }
    if args.keepalive == 0 {
        bail!("--keepalive must be at least 1 second");
    }
    let keepalive = u64::from(args.keepalive);
    let expiry = args.expiry.map_or(3 * keepalive + 5, u64::from);
    if expiry <= 2 * keepalive {
        bail!(
            "--expiry {expiry} must be more than twice --keepalive ({keepalive}), or one lost \
             keepalive would make nodes vanish"
        );
    }
    if args.stats_interval == 0 {
        bail!("--stats-interval must be at least 1 second");
    }
    let Some(relay_bytes_per_sec) = args.relay_rate.checked_mul(1_000_000 / 8) else {
        bail!("--relay-rate {} Mbit/s is too large", args.relay_rate);
    };
    Ok(RendezvousOptions {
        listen: args.listen,
        alt_port,
        data_dir: args.data_dir.unwrap_or_else(default_data_dir),
        keepalive: Duration::from_secs(keepalive),
        expiry: Duration::from_secs(expiry),
        relay_bytes_per_sec,
        stats_interval: Duration::from_secs(u64::from(args.stats_interval)),
        metrics: args.metrics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: RendezvousArgs,
    }

    fn parse(args: &[&str]) -> anyhow::Result<RendezvousOptions> {
        let cli = Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied()))?;
        options(cli.args)
    }

    #[test]
    fn defaults_follow_the_listen_port_and_keepalive() {
        let o = parse(&["--listen", "192.0.2.1:7400"]).unwrap();
        assert_eq!(o.alt_port, 7401);
        assert_eq!(o.keepalive, Duration::from_secs(25));
        assert_eq!(o.expiry, Duration::from_secs(80));
        assert_eq!(o.relay_bytes_per_sec, 12_500_000);
        let o = parse(&["--listen", "[::]:0", "--keepalive", "10"]).unwrap();
        assert_eq!((o.alt_port, o.expiry), (0, Duration::from_secs(35)));
    }

    #[test]
    fn inconsistent_flags_are_refused() {
        for (args, expected) in [
            (&["--listen", "192.0.2.1:65535"][..], "--alt-port"),
            (
                &["--listen", "192.0.2.1:7400", "--alt-port", "7400"],
                "second port",
            ),
            (&["--listen", "192.0.2.1:7400", "--expiry", "50"], "twice"),
            (
                &["--listen", "192.0.2.1:7400", "--keepalive", "0"],
                "at least",
            ),
        ] {
            let err = parse(args).unwrap_err().to_string();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
        assert!(parse(&["--listen", "nowhere"]).is_err());
    }
}
