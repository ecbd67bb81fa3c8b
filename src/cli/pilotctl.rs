//! `pilotctl`: talks to the local daemon over its control socket.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use crate::api::{
    self, ClientError, HandshakeReply, PeerRef, PingReply, Request, RequestInfo, TrustReply,
};
use crate::node::HandshakeOutcome;
use crate::node::PeerStatus;

use super::control_call::{call, parse, print_json};
use super::peer_table::who;
use super::report_text::{info, netcheck, status};
use super::seed::{refuse_seed_ids, HINT_INFO, HINT_PENDING, HINT_TRUST};
use super::{streams, trust_text};

#[derive(Debug, Parser)]
#[command(name = "pilotctl", version, about = "Control a running pilotd")]
struct Cli {
    /// Control socket of the daemon [default: /run/pilot/pilotd.sock for root, $XDG_RUNTIME_DIR/pilot/pilotd.sock otherwise]
    #[arg(long, global = true, env = "PILOT_CONTROL")]
    control: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One-screen health check: uptime, rendezvous, NAT, peers by path, trust, drops.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// This node: address, key, interface, port, endpoint, NAT type.
    Info {
        #[arg(long)]
        json: bool,
    },
    /// Peers with their path, endpoint, traffic and last handshake.
    Peers {
        #[arg(long)]
        json: bool,
    },
    /// Public endpoint and NAT behaviour as measured against the rendezvous.
    Netcheck {
        #[arg(long)]
        json: bool,
    },
    /// Print the fd70 address of a hostname (asking the rendezvous if needed).
    Resolve {
        /// Hostname (NAME or NAME.pilot), node address or public key.
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Ask a peer for trust; packets flow once it approves. If it asked first, this approves.
    Handshake {
        /// Hostname, node address (xxxx.xxxx.xxxx), fd70:: address or public key.
        peer: String,
        /// Why, shown to the peer (at most 256 bytes).
        #[arg(default_value = "")]
        justification: String,
        #[arg(long)]
        json: bool,
    },
    /// Trust requests waiting for your approval.
    Pending {
        #[arg(long)]
        json: bool,
    },
    /// Approve a pending trust request.
    Approve {
        /// Hostname, node address, fd70:: address or public key of the requester, as
        /// `pilotctl pending` lists it (not a Pilot Protocol node number).
        peer: String,
        #[arg(long)]
        json: bool,
    },
    /// Reject a pending trust request, optionally telling the requester why.
    Reject {
        peer: String,
        #[arg(default_value = "")]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// End trust with a peer (or withdraw a request); its session closes on both sides.
    Untrust {
        peer: String,
        #[arg(long)]
        json: bool,
    },
    /// Prepare this node: create its identity (as `pilotd identity`) and record the settings
    /// given in the config file `pilotctl daemon start` reads; says what to run next.
    Init(super::init::InitArgs),
    /// Start, stop or check the local pilotd (through systemd when its unit is installed).
    Daemon {
        #[command(subcommand)]
        command: super::service::DaemonCommand,
    },
    /// Give up this node's hostname: the rendezvous frees it at once for any node to claim
    ///
    /// This node stops claiming it (its status shows no hostname), and `hostname` is commented
    /// out in the config file pilotd reads (--config), so a restart does not claim it again;
    /// a --hostname flag on pilotd's command line must be removed by hand. Fails, changing
    /// nothing, when the node is not registered with the rendezvous, the rendezvous does not
    /// answer, or says this node does not hold the name.
    ReleaseName(super::release_name::ReleaseNameArgs),
    /// Trusted peers, and requests and approvals in flight.
    Trust {
        #[arg(long)]
        json: bool,
    },
    /// Open a TCP stream to a peer's port (1000 when none is given): stdin to it, its answer
    /// to stdout (or send one message and print the reply). Works in kernel and userspace mode.
    Connect {
        /// Hostname, node address (xxxx.xxxx.xxxx), fd70:: address or public key.
        peer: String,
        /// The peer's TCP port [default: 1000, the seed's stdio port]
        port: Option<u16>,
        /// Send this, end the sending side, and print the reply.
        #[arg(long, value_name = "M")]
        message: Option<String>,
        /// Seconds to wait for the connection (and, with --message, for the reply).
        #[arg(long, value_name = "T", default_value_t = 10.0)]
        timeout: f64,
    },
    /// Send a message to a peer's inbox; it is acknowledged once the peer has stored it.
    SendMessage {
        /// Hostname, node address (xxxx.xxxx.xxxx), fd70:: address or public key.
        peer: String,
        /// The message (`-`: read it from stdin; at most 64 KiB).
        #[arg(long, value_name = "D")]
        data: String,
        /// text (UTF-8), json (checked to parse) or binary.
        #[arg(long = "type", value_name = "TYPE", default_value = "text")]
        kind: crate::wire::message::MessageKind,
        #[arg(long)]
        json: bool,
    },
    /// Messages peers sent to this node, oldest first.
    Inbox {
        #[arg(long)]
        json: bool,
        /// Remove the listed messages.
        #[arg(long)]
        clear: bool,
    },
    /// Send ICMPv6 echo requests through the tunnel and print each reply's RTT and path.
    Ping {
        /// Hostname, node address (xxxx.xxxx.xxxx), fd70:: address or public key.
        peer: String,
        /// Number of pings.
        #[arg(short = 'c', long, default_value_t = 4)]
        count: u32,
        /// Seconds between pings.
        #[arg(short = 'i', long, default_value_t = 1.0)]
        interval: f64,
        /// Seconds to wait for each reply.
        #[arg(short = 'W', long, default_value_t = 2.0)]
        timeout: f64,
        #[arg(long)]
        json: bool,
    },
}

/// The command line, for the generated completions and man pages.
#[cfg(test)]
pub(super) fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command()
}

/// Entry point of the `pilotctl` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let socket = cli.control.unwrap_or_else(api::default_socket_path);
    let result = match cli.command {
        Command::Status { json } => status(&socket, json),
        Command::Info { json } => info(&socket, json),
        Command::Peers { json } => peers(&socket, json),
        Command::Netcheck { json } => netcheck(&socket, json),
        Command::Resolve { name, json } => {
            refuse_seed_ids(&name.clone(), HINT_INFO, || resolve(&socket, name, json))
        }
        Command::Handshake {
            peer,
            justification,
            json,
        } => refuse_seed_ids(&peer.clone(), HINT_INFO, || {
            handshake(&socket, peer, justification, json)
        }),
        Command::Pending { json } => pending(&socket, json),
        Command::Approve { peer, json } => refuse_seed_ids(&peer.clone(), HINT_PENDING, || {
            verb(&socket, Request::Approve { peer }, json)
        }),
        Command::Reject { peer, reason, json } => {
            refuse_seed_ids(&peer.clone(), HINT_PENDING, || {
                verb(&socket, Request::Reject { peer, reason }, json)
            })
        }
        Command::Untrust { peer, json } => refuse_seed_ids(&peer.clone(), HINT_TRUST, || {
            verb(&socket, Request::Untrust { peer }, json)
        }),
        Command::Trust { json } => trust(&socket, json),
        Command::ReleaseName(args) => super::release_name::run(&socket, args),
        Command::Init(args) => super::init::run(&socket, args),
        Command::Daemon { command } => {
            super::service::run(&socket, command).map_err(ClientError::Daemon)
        }
        Command::Ping {
            peer,
            count,
            interval,
            timeout,
            json,
        } => refuse_seed_ids(&peer, HINT_TRUST, || {
            ping(&socket, &peer, count, interval, timeout, json)
        }),
        Command::Connect {
            peer,
            port,
            message,
            timeout,
        } => refuse_seed_ids(&peer, HINT_TRUST, || {
            streams::connect(&socket, &peer, port, message, timeout)
        }),
        Command::SendMessage {
            peer,
            data,
            kind,
            json,
        } => refuse_seed_ids(&peer, HINT_TRUST, || {
            streams::send_message(&socket, &peer, &data, kind, json)
        }),
        Command::Inbox { json, clear } => streams::inbox(&socket, json, clear),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pilotctl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn peers(socket: &Path, json: bool) -> Result<ExitCode, ClientError> {
    let value = call(socket, &Request::Peers {})?;
    if json {
        println!("{}", serde_json::to_string_pretty(&value).expect("json"));
        return Ok(ExitCode::SUCCESS);
    }
    let peers: Vec<PeerStatus> = parse(value)?;
    print!("{}", super::peer_table::peer_table(&peers));
    Ok(ExitCode::SUCCESS)
}

fn resolve(socket: &Path, name: String, json: bool) -> Result<ExitCode, ClientError> {
    let value = call(socket, &Request::Resolve { name })?;
    if json {
        print_json(&value);
    } else {
        let peer: PeerRef = parse(value)?;
        println!("{}", peer.addr.to_ipv6());
    }
    Ok(ExitCode::SUCCESS)
}

fn handshake(
    socket: &Path,
    peer: String,
    justification: String,
    json: bool,
) -> Result<ExitCode, ClientError> {
    let value = call(
        socket,
        &Request::Handshake {
            peer,
            justification,
        },
    )?;
    if json {
        print_json(&value);
        return Ok(ExitCode::SUCCESS);
    }
    let reply: HandshakeReply = parse(value)?;
    match reply.outcome {
        HandshakeOutcome::Requested => println!(
            "asked {} for trust; packets flow once it approves (`pilotctl approve` on its side)",
            who(&reply.peer)
        ),
        HandshakeOutcome::Approved => println!(
            "{} had asked already: approved; packets flow as soon as its node countersigns",
            who(&reply.peer)
        ),
        HandshakeOutcome::AlreadyTrusted => {
            println!("{} is already trusted; nothing to do", who(&reply.peer))
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// approve, reject, untrust: one peer in, one peer out.
fn verb(socket: &Path, request: Request, json: bool) -> Result<ExitCode, ClientError> {
    let value = call(socket, &request)?;
    if json {
        print_json(&value);
        return Ok(ExitCode::SUCCESS);
    }
    let peer: PeerRef = parse(value["peer"].clone())?;
    let peer = who(&peer);
    match request {
        Request::Approve { .. } => println!(
            "approved {peer}; packets flow as soon as its node countersigns (automatically)"
        ),
        Request::Reject { .. } => println!("rejected the request from {peer}"),
        _ => println!("no longer trusting {peer}; its session is closed"),
    }
    Ok(ExitCode::SUCCESS)
}

fn pending(socket: &Path, json: bool) -> Result<ExitCode, ClientError> {
    let value = call(socket, &Request::Pending {})?;
    if json {
        print_json(&value);
        return Ok(ExitCode::SUCCESS);
    }
    let requests: Vec<RequestInfo> = parse(value)?;
    print!("{}", trust_text::pending_text(&requests));
    Ok(ExitCode::SUCCESS)
}

fn trust(socket: &Path, json: bool) -> Result<ExitCode, ClientError> {
    let value = call(socket, &Request::Trust {})?;
    if json {
        print_json(&value);
        return Ok(ExitCode::SUCCESS);
    }
    let reply: TrustReply = parse(value)?;
    print!("{}", trust_text::trust_text(&reply));
    Ok(ExitCode::SUCCESS)
}

fn ping(
    socket: &Path,
    peer: &str,
    count: u32,
    interval: f64,
    timeout: f64,
    json: bool,
) -> Result<ExitCode, ClientError> {
    let interval = Duration::try_from_secs_f64(interval).unwrap_or(Duration::from_secs(1));
    let timeout_ms = (timeout.max(0.001) * 1000.0) as u64;
    let mut rtts = Vec::new();
    for i in 0..count {
        let started = Instant::now();
        let request = Request::Ping {
            peer: peer.to_owned(),
            timeout_ms,
        };
        match call(socket, &request) {
            Ok(value) => {
                let reply: PingReply = parse(value.clone())?;
                if json {
                    println!("{value}");
                } else {
                    println!(
                        "reply from {} ({}): seq={} time={:.2} ms path={}",
                        reply.address,
                        reply.node,
                        i + 1,
                        reply.rtt_ms,
                        reply.path
                    );
                }
                rtts.push(reply.rtt_ms);
            }
            // The daemon is gone or the peer is unknown: no point in trying again.
            Err(
                e
                @ (ClientError::NotRunning { .. } | ClientError::Io(_) | ClientError::Protocol(_)),
            ) => return Err(e),
            Err(ClientError::Daemon(e)) if !e.starts_with("no reply") => {
                return Err(ClientError::Daemon(e))
            }
            Err(e) => {
                if !json {
                    println!("seq={}: {e}", i + 1);
                }
            }
        }
        if i + 1 < count {
            std::thread::sleep(interval.saturating_sub(started.elapsed()));
        }
    }
    if !json {
        let lost = count as usize - rtts.len();
        let loss = if count == 0 {
            0.0
        } else {
            100.0 * lost as f64 / f64::from(count)
        };
        print!("{count} sent, {} received, {loss:.0}% loss", rtts.len());
        if !rtts.is_empty() {
            let min = rtts.iter().copied().fold(f64::INFINITY, f64::min);
            let max = rtts.iter().copied().fold(0.0, f64::max);
            let avg = rtts.iter().sum::<f64>() / rtts.len() as f64;
            print!(", rtt min/avg/max = {min:.2}/{avg:.2}/{max:.2} ms");
        }
        println!();
    }
    Ok(if rtts.is_empty() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
