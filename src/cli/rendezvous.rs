//! `pilotd rendezvous`: the rendezvous server's command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail};

use super::config::RendezvousFile;
use super::values::{check_period, parse_duration, parse_hostname, relay_bytes_per_sec};
use crate::addr::Hostname;
use crate::daemon::rendezvous::{default_data_dir, RegistryStore, RendezvousOptions};
use crate::rendezvous::DEFAULT_NAME_TTL;
use crate::store::postgres::{PasswordSources, Target};

/// Registration refresh interval told to nodes, seconds.
const DEFAULT_KEEPALIVE: u16 = 25;
/// Relay rate per node, Mbit/s.
const DEFAULT_RELAY_RATE: u64 = 100;
/// Seconds between counter log lines.
const DEFAULT_STATS_INTERVAL: u32 = 60;

/// `pilotd rendezvous`: serve, or one of the offline registry commands.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct RendezvousCommand {
    #[command(subcommand)]
    pub action: Option<RendezvousAction>,
    #[command(flatten)]
    pub serve: RendezvousArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum RendezvousAction {
    /// Free a hostname in the registry so any node may claim it
    ///
    /// For a box reinstalled with a new key, whose old key still holds its name. Refused while
    /// the rendezvous runs on the data directory (it holds the registry in memory): stop it,
    /// free the name, start it. A node still running with that hostname claims it again at
    /// its next registration; there, run `pilotctl release-name` instead. Names of keys that
    /// stopped registering are released on their own after the name TTL (--name-ttl).
    FreeName(FreeNameArgs),
}

#[derive(Debug, clap::Args)]
pub struct FreeNameArgs {
    /// The hostname to free.
    #[arg(value_name = "NAME", value_parser = parse_hostname)]
    pub name: Hostname,
    /// Config file of the rendezvous (only its `data_dir` and store settings are used).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory holding rendezvous.db [default: /var/lib/pilot-rendezvous for root,
    /// ~/.pilot-rendezvous otherwise]
    #[arg(long, env = "PILOT_RENDEZVOUS_DIR")]
    pub data_dir: Option<PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
}

impl FreeNameArgs {
    /// The data directory: the flag, else the config file's, else the default.
    pub fn data_dir(&self, file: &RendezvousFile) -> PathBuf {
        (self.data_dir.clone())
            .or_else(|| file.data_dir.clone())
            .unwrap_or_else(default_data_dir)
    }
}

/// Where the registry lives, for serving and for the offline commands.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Keep the registry in PostgreSQL instead of SQLite in the data directory:
    /// postgres://USER@HOST[:PORT]/DB (a Unix socket directory as HOST, percent-encoded:
    /// %2Frun%2Fpostgresql). No password here (`ps` shows flags): it comes from PGPASSWORD, a
    /// passfile (PGPASSFILE, ~/.pgpass) or --store-password-file. With PostgreSQL, stop every
    /// instance on the database before `free-name`.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
    /// A file holding the PostgreSQL password (its first line; mode 0600).
    #[arg(long, value_name = "FILE")]
    pub store_password_file: Option<PathBuf>,
}

impl StoreArgs {
    /// The flags' store, else the config file's, else SQLite.
    pub fn resolve(self, file: &RendezvousFile) -> anyhow::Result<RegistryStore> {
        let password_file = self
            .store_password_file
            .or_else(|| file.store_password_file.clone());
        let Some(url) = self.store.or_else(|| file.store.clone()) else {
            if password_file.is_some() {
                bail!(
                    "store_password_file is for a PostgreSQL store: give --store postgres://… too"
                );
            }
            return Ok(RegistryStore::Sqlite);
        };
        let sources = PasswordSources::from_env(password_file);
        let target = Target::parse(&url, &sources).map_err(|e| anyhow!("--store: {e}"))?;
        Ok(RegistryStore::Postgres(Box::new(target)))
    }
}

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
    /// How long a hostname stays with a key that no longer registers; then it is released
    /// for any node to claim. A duration: 30d, 12h, 90m, 45s (or combined, 1d12h)
    /// [default: 30d]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    name_ttl: Option<Duration>,
    /// Relay rate per node in Mbit/s (0 = relay nothing) [default: 100]
    #[arg(long, value_name = "MBIT")]
    relay_rate: Option<u64>,
    /// Seconds between log lines with the counters (only when they changed) [default: 60]
    #[arg(long, value_name = "SECS")]
    stats_interval: Option<u32>,
    /// Serve Prometheus metrics over HTTP at IP:PORT, path /metrics (e.g. 127.0.0.1:9188).
    #[arg(long, value_name = "IP:PORT")]
    metrics: Option<SocketAddr>,
    /// Also accept nodes over TLS on this TCP address, for networks that block UDP (443 is
    /// the port they let out: `0.0.0.0:443`). The TLS key is the rendezvous' own, which nodes
    /// pin. Off unless given.
    #[arg(long, value_name = "IP:PORT")]
    tcp_listen: Option<SocketAddr>,
    #[command(flatten)]
    store: StoreArgs,
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
    let name_ttl = args.name_ttl.or(file.name_ttl).unwrap_or(DEFAULT_NAME_TTL);
    if name_ttl <= Duration::from_secs(2 * keepalive) {
        bail!(
            "--name-ttl {}s must be more than twice --keepalive ({keepalive}), or a running \
             node would lose its hostname between two registrations",
            name_ttl.as_secs()
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
    let store = args.store.resolve(&file)?;
    Ok(RendezvousOptions {
        listen,
        alt_port,
        data_dir: args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(default_data_dir),
        keepalive: Duration::from_secs(keepalive),
        expiry: Duration::from_secs(expiry),
        name_ttl,
        relay_bytes_per_sec,
        stats_interval: Duration::from_secs(stats_interval),
        metrics: args.metrics.or(file.metrics),
        tcp_listen: args.tcp_listen.or(file.tcp_listen),
        store,
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
        options(cli.args, RendezvousFile::default())
    }

    #[test]
    fn defaults_follow_the_listen_port_and_keepalive() {
        let o = parse(&["--listen", "192.0.2.1:7400"]).unwrap();
        assert_eq!(o.alt_port, 7401);
        assert_eq!(o.keepalive, Duration::from_secs(25));
        assert_eq!(o.expiry, Duration::from_secs(80));
        assert_eq!(o.relay_bytes_per_sec, 12_500_000);
        assert_eq!(o.name_ttl, Duration::from_secs(30 * 24 * 3600));
        let o = parse(&["--listen", "[::]:0", "--keepalive", "10"]).unwrap();
        assert_eq!((o.alt_port, o.expiry), (0, Duration::from_secs(35)));
    }

    #[test]
    fn the_registry_is_sqlite_unless_a_postgres_store_is_given_without_a_password() {
        let o = parse(&["--listen", "192.0.2.1:7400"]).unwrap();
        assert!(matches!(o.store, RegistryStore::Sqlite));
        let o = parse(&[
            "--listen",
            "192.0.2.1:7400",
            "--store",
            "postgres://pilot@db:5433/reg",
        ])
        .unwrap();
        let RegistryStore::Postgres(target) = o.store else {
            panic!("not postgres");
        };
        assert_eq!(target.to_string(), "postgres://pilot@db:5433/reg");
        let e = parse(&[
            "--listen",
            "192.0.2.1:7400",
            "--store",
            "postgres://p:hunter2@db/r",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("PGPASSWORD") && !e.contains("hunter2"), "{e}");
        let e = parse(&["--listen", "192.0.2.1:7400", "--store-password-file", "/x"]).unwrap_err();
        assert!(e.to_string().contains("--store postgres://"), "{e}");
        let e = parse(&["--listen", "192.0.2.1:7400", "--store", "/var/lib/x.db"]).unwrap_err();
        assert!(e.to_string().contains("postgres://USER@HOST"), "{e}");
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

    #[test]
    fn name_ttls_are_human_durations() {
        for (text, secs) in [
            ("30d", 30 * 86400),
            ("12h", 43200),
            ("90m", 5400),
            ("45s", 45),
            ("1d12h", 129_600),
            ("3650d", 3650 * 86400),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(secs)),
                "{text}"
            );
        }
        for bad in [
            "",
            "30",
            "d",
            "-1d",
            "1.5d",
            "1w",
            "0s",
            "3651d",
            "99999999999999999999d",
            "1d 2h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        let o = parse(&[
            "--listen",
            "192.0.2.1:7400",
            "--keepalive",
            "1",
            "--name-ttl",
            "3s",
        ]);
        assert_eq!(o.unwrap().name_ttl, Duration::from_secs(3));
        // Shorter than two keepalives: a live node would lose its name between refreshes.
        let err = parse(&["--listen", "192.0.2.1:7400", "--name-ttl", "40s"]).unwrap_err();
        assert!(err.to_string().contains("twice --keepalive"), "{err}");
        assert!(parse(&["--listen", "192.0.2.1:7400", "--name-ttl", "soon"]).is_err());
    }

    #[derive(Parser)]
    struct Top {
        #[command(flatten)]
        command: RendezvousCommand,
    }

    #[test]
    fn free_name_is_a_subcommand_that_takes_a_hostname_and_a_data_dir() {
        let top =
            Top::try_parse_from(["x", "free-name", "alice", "--data-dir", "/srv/rdv"]).unwrap();
        let Some(RendezvousAction::FreeName(args)) = top.command.action else {
            panic!("not free-name")
        };
        assert_eq!(args.name.as_str(), "alice");
        assert_eq!(
            args.data_dir(&RendezvousFile::default()),
            PathBuf::from("/srv/rdv")
        );
        let file = RendezvousFile {
            data_dir: Some("/from/file".into()),
            ..RendezvousFile::default()
        };
        let top = Top::try_parse_from(["x", "free-name", "alice"]).unwrap();
        let Some(RendezvousAction::FreeName(args)) = top.command.action else {
            panic!("not free-name")
        };
        assert_eq!(args.data_dir(&file), PathBuf::from("/from/file"));
        // A bad hostname is refused when typed; serving flags do not mix with it.
        assert!(Top::try_parse_from(["x", "free-name", "Not_A_Name"]).is_err());
        assert!(Top::try_parse_from(["x", "--listen", "192.0.2.1:1", "free-name", "a"]).is_err());
        // Without a subcommand it serves, as before.
        let top = Top::try_parse_from(["x", "--listen", "192.0.2.1:7400"]).unwrap();
        assert!(top.command.action.is_none());
    }
}
