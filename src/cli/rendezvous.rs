//! `pilotd rendezvous`: the rendezvous server's command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail};

use super::config::RendezvousFile;
use crate::daemon::rendezvous::{default_data_dir, RendezvousOptions};

/// Registration refresh interval told to nodes, seconds.
const DEFAULT_KEEPALIVE: u16 = 25;
/// Relay rate per node, Mbit/s.
const DEFAULT_RELAY_RATE: u64 = 100;
/// Seconds between counter log lines.
const DEFAULT_STATS_INTERVAL: u32 = 60;

#[derive(Debug, clap::Args)]
pub struct RendezvousArgs {
    /// Config file (TOML) with any of these settings, named like the flags (`relay_rate`);
    /// flags given here override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address and UDP port to serve on: registration, punching, relay and NAT probes
    /// (`0.0.0.0:PORT` or `[::]:PORT` for every address; port 0 = any free port). Required,
    /// here or as `listen` in the config file.
    #[arg(long, value_name = "IP:PORT")]
    listen: Option<SocketAddr>,
    /// Second UDP port on the same address, answering NAT probes only, so nodes can tell
    /// endpoint-independent from endpoint-dependent NAT mapping [default: PORT+1]
    #[arg(long, value_name = "PORT")]
    alt_port: Option<u16>,
    /// Data directory holding identity.json and rendezvous.db [default:
    /// /var/lib/pilot-rendezvous for root, ~/.pilot-rendezvous otherwise]
    #[arg(long, env = "PILOT_RENDEZVOUS_DIR")]
    data_dir: Option<PathBuf>,
    /// Seconds between node re-registrations (told to nodes; holds their NAT mappings open)
    /// [default: 25]
    #[arg(long, value_name = "SECS")]
    keepalive: Option<u16>,
    /// Seconds without a registration after which a node is no longer introduced or relayed
    /// to [default: 3 × keepalive + 5]
    #[arg(long, value_name = "SECS")]
    expiry: Option<u32>,
    /// Relay rate per node in Mbit/s (0 = relay nothing) [default: 100]
    #[arg(long, value_name = "MBIT")]
    relay_rate: Option<u64>,
    /// Seconds between log lines with the counters (only when they changed) [default: 60]
    #[arg(long, value_name = "SECS")]
    stats_interval: Option<u32>,
    /// Serve Prometheus metrics over HTTP at IP:PORT, path /metrics (e.g. 127.0.0.1:9188).
    #[arg(long, value_name = "IP:PORT")]
    metrics: Option<SocketAddr>,
}

/// The rendezvous' settings: each from its flag if given, else from the config file, else its
/// default; then checked against each other.
pub(super) fn options(
    args: RendezvousArgs,
    file: RendezvousFile,
) -> anyhow::Result<RendezvousOptions> {
    let Some(listen) = args.listen.or(file.listen) else {
        bail!("no address to serve on: give --listen IP:PORT or set `listen` in the config file");
    };
    let port = listen.port();
    let alt_port = match args.alt_port.or(file.alt_port) {
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
    let keepalive = args
        .keepalive
        .or(file.keepalive)
        .unwrap_or(DEFAULT_KEEPALIVE);
    let keepalive = u64::from(keepalive);
    check_period(keepalive).map_err(|e| anyhow!("--keepalive {e}"))?;
    let expiry = args
        .expiry
        .or(file.expiry)
        .map_or(3 * keepalive + 5, u64::from);
    if expiry <= 2 * keepalive {
        bail!(
            "--expiry {expiry} must be more than twice --keepalive ({keepalive}), or one lost \
             keepalive would make nodes vanish"
        );
    }
    let stats_interval = args
        .stats_interval
        .or(file.stats_interval)
        .unwrap_or(DEFAULT_STATS_INTERVAL)
        .into();
    check_period(stats_interval).map_err(|e| anyhow!("--stats-interval {e}"))?;
    let relay_rate = args
        .relay_rate
        .or(file.relay_rate)
        .unwrap_or(DEFAULT_RELAY_RATE);
    let relay_bytes_per_sec = relay_bytes_per_sec(relay_rate)?;
    Ok(RendezvousOptions {
        listen,
        alt_port,
        data_dir: args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(default_data_dir),
        keepalive: Duration::from_secs(keepalive),
        expiry: Duration::from_secs(expiry),
        relay_bytes_per_sec,
        stats_interval: Duration::from_secs(stats_interval),
        metrics: args.metrics.or(file.metrics),
    })
}

/// `--keepalive` and `--stats-interval` are periods of at least a second (0 would spin).
pub(super) fn check_period(secs: u64) -> Result<(), &'static str> {
    match secs {
        0 => Err("must be at least 1 second"),
        _ => Ok(()),
    }
}

/// `--relay-rate` in bytes per second.
pub(super) fn relay_bytes_per_sec(mbit: u64) -> anyhow::Result<u64> {
    mbit.checked_mul(1_000_000 / 8)
        .ok_or_else(|| anyhow!("--relay-rate {mbit} Mbit/s is too large"))
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
        options(cli.args, RendezvousFile::default())
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
