//! `natlab`: builds, checks and removes NAT labs of network namespaces (see the library's
//! documentation for the topology). Needs root.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

use pilot_lab::natlab::INTERRUPTED;
use pilot_lab::{Delay, Host, Loss, NatKind, NatLab, Options, Router, V6Kind};

/// A NAT test lab built from network namespaces: two LANs behind NAT routers of the kinds you
/// choose, an "internet" router and a rendezvous host, all addresses from the documentation
/// ranges, nothing routed to this machine's uplink. Labs with different names run side by
/// side; state lives in $NATLAB_RUN_DIR/NAME (default /run/natlab/NAME).
///
///   rdv 203.0.113.10 -- inet 203.0.113.254 -- nat1 203.0.113.1 -- LAN1 198.51.100.0/24: a .10, a2 .11
///                                          \-- nat2 203.0.113.2 -- LAN2 192.0.2.0/24: b .10
///
/// NAT kinds: none (routed), cone (full cone), prc (Linux masquerade: endpoint-independent
/// mapping, port-restricted filtering), sym (a new random port per destination).
#[derive(Parser)]
#[command(name = "natlab", verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Verb,
}

#[derive(Subcommand)]
enum Verb {
    /// Builds lab NAME (rolled back if it fails or is interrupted).
    Up {
        name: String,
        /// NAT kind of nat1, in front of a and a2: none, cone, prc, sym.
        #[arg(long, default_value = "prc")]
        nat1: NatKind,
        /// NAT kind of nat2, in front of b.
        #[arg(long, default_value = "prc")]
        nat2: NatKind,
        /// Random loss on each NAT router's public link, each way, in percent (two decimals).
        #[arg(long, default_value = "0")]
        loss: Loss,
        /// Delay on each NAT router's public link, each way, in milliseconds.
        #[arg(long, default_value = "0")]
        delay: Delay,
        /// IPv6 on LAN1: off, open (routed), fw (stateful firewall).
        #[arg(long = "v6-1", default_value = "off")]
        v6_1: V6Kind,
        /// IPv6 on LAN2.
        #[arg(long = "v6-2", default_value = "off")]
        v6_2: V6Kind,
        /// Takes IPv4 beyond the LAN from LAN 1 or 2 (IPv6-only hosts); may be repeated.
        #[arg(long = "no-v4", value_parser = ["1", "2"])]
        no_v4: Vec<String>,
    },
    /// Removes everything of lab NAME, stopping what still runs in it (idempotent).
    Down { name: String },
    /// Namespaces, addresses, NAT kinds, impairment.
    Status { name: String },
    /// Measures that each NAT behaves as its kind says: one PASS/FAIL line per property,
    /// non-zero exit on any FAIL (about 5 s).
    Check { name: String },
    /// Runs a command inside a host's namespace (a, a2, b, rdv, nat1, nat2, inet).
    Exec {
        name: String,
        host: Host,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<OsString>,
    },
    /// A host's own address.
    Addr { name: String, host: Host },
    /// The address the internet sees for a host.
    Public { name: String, host: Host },
    /// Flushes a router's conntrack table (all its NAT mappings).
    Flush { name: String, router: Router },
    /// Runs a throwaway PostgreSQL cluster (Debian's server programs, a temp dir, a Unix
    /// socket there, no TCP port) with database DB until interrupted, then removes it. Prints
    /// three lines once it is up: the database's URL, the lab-only password, and the server's
    /// process id.
    Postgres { db: String },
}

extern "C" fn on_signal(_: std::ffi::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Ctrl-C or TERM during `up` or `down` finishes the step under way and cleans up instead of
/// leaving half a lab behind.
fn catch_interrupts() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }.context("installing a signal handler")?;
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("natlab: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(verb: Verb) -> Result<ExitCode> {
    match verb {
        Verb::Up {
            name,
            nat1,
            nat2,
            loss,
            delay,
            v6_1,
            v6_2,
            no_v4,
        } => {
            catch_interrupts()?;
            let mut options = Options::new(nat1, nat2)
                .v6(Router::Nat1, v6_1)
                .v6(Router::Nat2, v6_2);
            options.loss = loss;
            options.delay = delay;
            for lan in no_v4 {
                options = options.no_v4(if lan == "1" {
                    Router::Nat1
                } else {
                    Router::Nat2
                });
            }
            let lab = NatLab::up(&name, &options)?;
            let o = lab.options();
            let no_v4: String = ["1", "2"]
                .iter()
                .zip(o.no_v4)
                .filter(|(_, on)| *on)
                .map(|(n, _)| *n)
                .collect();
            println!(
                "lab {name} up: nat1={} nat2={} loss={}% delay={}ms ipv6={}/{}{} (namespaces {name}-*)",
                o.nat[0], o.nat[1], o.loss, o.delay, o.v6[0], o.v6[1],
                if no_v4.is_empty() { String::new() } else { format!(" no-v4={no_v4}") }
            );
        }
        Verb::Down { name } => {
            catch_interrupts()?; // half a teardown helps nobody: finish it
            if NatLab::down(&name)? {
                println!("lab {name} removed");
            } else {
                println!("lab {name}: nothing to remove");
            }
        }
        Verb::Status { name } => print!("{}", NatLab::open(&name)?.status()),
        Verb::Check { name } => {
            let lab = NatLab::open(&name)?;
            let o = lab.options();
            println!(
                "check lab {name}: nat1={} nat2={} loss={}% delay={}ms",
                o.nat[0], o.nat[1], o.loss, o.delay
            );
            let verdict = pilot_lab::check(&lab, &mut |ok, text| {
                println!("{} {text}", if ok { "PASS" } else { "FAIL" });
            })?;
            println!(
                "check lab {name}: {} passed, {} failed",
                verdict.passed, verdict.failed
            );
            if verdict.failed > 0 {
                return Ok(ExitCode::FAILURE);
            }
        }
        Verb::Exec {
            name,
            host,
            command,
        } => {
            let lab = NatLab::open(&name)?;
            let error = Command::new("ip")
                .args(["netns", "exec"])
                .arg(lab.ns(host))
                .args(&command)
                .exec();
            return Err(error).context("running ip netns exec");
        }
        Verb::Addr { name, host } => {
            NatLab::open(&name)?;
            println!("{}", host.addr());
        }
        Verb::Public { name, host } => println!("{}", NatLab::open(&name)?.options().public(host)),
        Verb::Flush { name, router } => {
            let lab = NatLab::open(&name)?;
            println!("lab {name}: {router}: {}", lab.flush(router)?);
        }
        Verb::Postgres { db } => {
            catch_interrupts()?;
            let cluster = pilot_lab::postgres::Cluster::start()?;
            cluster.create_db(&db)?;
            println!("{}", cluster.url(&db));
            println!("{}", pilot_lab::postgres::Cluster::PASSWORD);
            println!("{}", cluster.server_pid()?);
            std::io::Write::flush(&mut std::io::stdout())?;
            while !INTERRUPTED.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            drop(cluster);
        }
    }
    Ok(ExitCode::SUCCESS)
}
