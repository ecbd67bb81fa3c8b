//! Load generator for the rendezvous (issue 14): N simulated nodes, each with its own Ed25519
//! key and its own source address, register with a real `pilotd rendezvous` (or several
//! instances sharing a database, `--rendezvous` given once per instance: node i registers
//! with instance i mod k) over real UDP
//! (first contact, the address cookie's challenge, the registration with it) and refresh every
//! `--refresh` seconds, as nodes do. Prints, every `--report` seconds and at the end,
//! registrations answered per second, refreshes among them, p50/p99/max latency from a
//! `Register` to its `Registered`, timeouts and refusals, and the servers' CPU and RSS (read
//! from /proc with `--server-pid`, once per instance) and the database's CPU (`--db-pid`: the
//! PostgreSQL server and its backends).
//!
//! The answers' signatures are not verified (a node does; here the CPU goes to signing, the
//! nodes' part of the load on the server).
//!
//! One socket per source port serves many nodes: each node sends from its own IPv4 address
//! (IP_PKTINFO), and replies are told apart by the address they were sent to. The addresses
//! must be local: `scripts/loadgen.sh` runs this in a namespace where a whole prefix is
//! routed to `lo` (`ip route add local 10.80.0.0/14 dev lo`), so no address has to be added one
//! by one, and the rendezvous' namespace routes that prefix back. With at most two nodes per
//! address the rendezvous' limit on new keys per source address (2/s, burst 64) is not what
//! is measured.
//!
//!     cargo run --release --example loadgen -- --rendezvous 10.76.0.1:7000 --nodes 100000 \
//!         --sources 10.80.0.0/14 --duration 120 --server-pid PID

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use ed25519_dalek::SigningKey;

use pilot::identity::NodeKey;
use pilot::io::udp::{RecvBatch, SendBatch, UdpSocket, MAX_BATCH};
use pilot::wire::control::{Message, RefusalCode, COOKIE_LEN};
use pilot::wire::envelope;
use pilot::wire::trust::TrustLedger;

#[derive(Parser)]
#[command(about = "Drives N simulated nodes' registrations against a pilotd rendezvous")]
struct Args {
    /// The rendezvous' main port, IP:PORT; once per instance of a service.
    #[arg(long, required = true)]
    rendezvous: Vec<SocketAddr>,
    /// Simulated nodes.
    #[arg(long)]
    nodes: u32,
    /// Source addresses, an IPv4 prefix routed to this host (see the module documentation).
    #[arg(long, default_value = "10.80.0.0/14")]
    sources: String,
    /// First source port; a node beyond the number of addresses uses the next port.
    #[arg(long, default_value_t = 40000)]
    port: u16,
    /// Seconds between a node's refreshes (the rendezvous' keepalive).
    #[arg(long, default_value_t = 25)]
    refresh: u64,
    /// Seconds over which the nodes' first registrations are spread [default: --refresh].
    #[arg(long)]
    ramp: Option<u64>,
    /// Seconds to run in all.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 10)]
    report: u64,
    /// The rendezvous' process, for its CPU and RSS; once per instance.
    #[arg(long)]
    server_pid: Vec<u32>,
    /// The database server's process (PostgreSQL's postmaster), for its and its backends' CPU.
    #[arg(long)]
    db_pid: Option<u32>,
}

/// An unanswered registration is sent again after this long (as a node does).
const RETRY: Duration = Duration::from_secs(2);

struct SimNode {
    key: SigningKey,
    /// Index into the sockets, and the source address.
    socket: usize,
    ip: Ipv4Addr,
    cookie: Option<[u8; COOKIE_LEN]>,
    /// The nonce of the registration awaiting its answer, and when it went.
    pending: Option<(u64, Instant)>,
    registered: bool,
    /// When the node next registers (a refresh, or a retry); queue entries for other times
    /// are stale.
    next_at: Instant,
}

#[derive(Default)]
struct Window {
    answered: u64,
    first: u64,
    refreshes: u64,
    challenges: u64,
    timeouts: u64,
    refused: u64,
    latencies_us: Vec<u32>,
}

impl Window {
    fn percentile(sorted: &[u32], p: f64) -> f64 {
        if sorted.is_empty() {
            return 0.0;
        }
        let i = ((sorted.len() - 1) as f64 * p).round() as usize;
        f64::from(sorted[i]) / 1000.0
    }
}

/// CPU seconds and RSS (KiB) of the servers together, and CPU seconds of the database.
#[derive(Clone, Copy)]
struct Usage {
    servers: Option<(f64, u64)>,
    db: Option<f64>,
}

fn usage(servers: &[u32], db: Option<u32>) -> Usage {
    let each: Option<Vec<(f64, u64)>> = servers.iter().map(|p| proc_usage(*p)).collect();
    let servers = each
        .filter(|e| !e.is_empty())
        .map(|e| e.iter().fold((0.0, 0), |(c, r), (c1, r1)| (c + c1, r + r1)));
    let db = db.and_then(|pid| {
        let own = proc_usage(pid)?.0;
        Some(
            own + children(pid)
                .iter()
                .filter_map(|c| proc_usage(*c))
                .map(|u| u.0)
                .sum::<f64>(),
        )
    });
    Usage { servers, db }
}

/// The processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let fields: Vec<&str> = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            fields.get(1).and_then(|pp| pp.parse::<u32>().ok()) == Some(pid)
        })
        .collect()
}

/// CPU seconds (user + system) and RSS in KiB of a process, from /proc.
fn proc_usage(pid: u32) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let hz = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some((ticks as f64 / hz as f64, rss))
}

fn parse_prefix(text: &str) -> anyhow::Result<(u32, u32)> {
    let (ip, bits) = text
        .split_once('/')
        .context("--sources: expected A.B.C.D/LEN")?;
    let ip: Ipv4Addr = ip.parse().context("--sources address")?;
    let bits: u32 = bits.parse().context("--sources prefix length")?;
    if !(8..=30).contains(&bits) {
        bail!("--sources: a prefix of 8 to 30 bits");
    }
    // Skip the network's first address; the rest are all usable (routed to lo, no broadcast).
    Ok((u32::from(ip) + 1, (1u32 << (32 - bits)) - 2))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (base, count) = parse_prefix(&args.sources)?;
    let ports = args.nodes.div_ceil(count) as usize;
    let mut sockets = Vec::new();
    for p in 0..ports {
        let port = args.port + p as u16;
        let sock = UdpSocket::bind_addr(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))
            .with_context(|| format!("binding 0.0.0.0:{port}"))?;
        if !sock.report_destinations()? {
            bail!("the socket does not report destinations");
        }
        sockets.push(sock);
    }
    let ramp = Duration::from_secs(args.ramp.unwrap_or(args.refresh));
    let refresh = Duration::from_secs(args.refresh);
    let mut nodes = Vec::with_capacity(args.nodes as usize);
    let mut due = BinaryHeap::with_capacity(args.nodes as usize);
    // Which node a reply is for: by (socket, destination address).
    let per_port = count as usize;
    for i in 0..args.nodes {
        let mut seed = [0x5au8; 32];
        seed[..4].copy_from_slice(&i.to_be_bytes());
        let socket = i as usize / per_port;
        let ip = Ipv4Addr::from(base + (i % count));
        nodes.push(SimNode {
            key: SigningKey::from_bytes(&seed),
            socket,
            ip,
            cookie: None,
            pending: None,
            registered: false,
            next_at: Instant::now(),
        });
    }
    // The clock starts once the keys exist: making 100,000 takes over a second, and a ramp
    // timed from before would open with that second's nodes all at once.
    let started = Instant::now();
    for (i, n) in (0..).zip(nodes.iter_mut()) {
        n.next_at = started + ramp.mul_f64(f64::from(i) / f64::from(args.nodes.max(1)));
        due.push(Reverse((n.next_at, i)));
    }
    let empty_digest =
        |key: &SigningKey| TrustLedger::new().digest_of(&NodeKey(key.verifying_key().to_bytes()));

    let mut recv = RecvBatch::new(MAX_BATCH, 2048);
    let mut sends: Vec<SendBatch> = (0..ports).map(|_| SendBatch::new(MAX_BATCH, 512)).collect();
    let mut body = Vec::with_capacity(512);
    let mut sealed = vec![0u8; 1024];
    let mut nonce: u64 = 1;
    let mut window = Window::default();
    let mut total = Window::default();
    let server_start = usage(&args.server_pid, args.db_pid);
    let me = std::process::id();
    let mut last_report = (started, server_start, proc_usage(me));
    let end = started + Duration::from_secs(args.duration);
    let report = Duration::from_secs(args.report);
    println!(
        "{} nodes from {} addresses x {} ports, refresh {} s, ramp {} s, {} s",
        args.nodes,
        count.min(args.nodes),
        ports,
        args.refresh,
        ramp.as_secs(),
        args.duration
    );

    // Sends node `i`'s registration now and queues its retry.
    let mut send_register =
        |n: &mut SimNode,
         i: u32,
         now: Instant,
         sends: &mut Vec<SendBatch>,
         due: &mut BinaryHeap<Reverse<(Instant, u32)>>| {
            body.clear();
            Message::Register {
                lan: Vec::new(),
                hostname: None,
                trust_digest: empty_digest(&n.key),
                cookie: n.cookie,
            }
            .encode(&mut body);
            nonce += 1;
            let len = envelope::seal(
                &mut sealed,
                pilot::wire::control::REGISTER,
                &n.key,
                unix_ms(),
                nonce,
                &body,
            )
            .expect("a register fits");
            n.pending = Some((nonce, now));
            n.next_at = now + RETRY;
            due.push(Reverse((n.next_at, i)));
            let batch = &mut sends[n.socket];
            if batch.is_full() {
                // A socket buffer that stays full loses the rest, as a node's would.
                let _ = batch.flush(&sockets[n.socket]);
                batch.clear();
            }
            let to = args.rendezvous[i as usize % args.rendezvous.len()];
            batch.push_from(&sealed[..len], Some(IpAddr::V4(n.ip)), to);
        };

    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        // Registrations due (first ones, refreshes, retries), a batch per socket at most.
        while let Some(&Reverse((at, i))) = due.peek() {
            if at > now || sends.iter().any(SendBatch::is_full) {
                break;
            }
            due.pop();
            let n = &mut nodes[i as usize];
            if n.next_at != at {
                continue;
            }
            if n.pending.is_some() {
                window.timeouts += 1;
            }
            send_register(n, i, now, &mut sends, &mut due);
        }
        for (s, sock) in sends.iter_mut().zip(&sockets) {
            if !s.is_empty() {
                let _ = s.flush(sock);
            }
        }
        // Answers. Idle, the loop naps 100 µs: latencies are read that much late at most.
        let mut idle = true;
        for (k, sock) in sockets.iter().enumerate() {
            while let Ok(got) = recv.recv(sock) {
                idle = false;
                let now = Instant::now();
                for d in 0..got {
                    let Some(IpAddr::V4(to)) = recv.destination(d) else {
                        continue;
                    };
                    let offset = u32::from(to).wrapping_sub(base);
                    if offset >= count {
                        continue;
                    }
                    let i = (k * per_port) as u32 + offset;
                    let Some(n) = nodes.get_mut(i as usize) else {
                        continue;
                    };
                    let (_, datagram) = recv.get(d);
                    // Not verified: the generator spends its CPU on the nodes' side of the
                    // protocol that loads the server (signing), and the server it talks to is
                    // the one it started. A node verifies every answer.
                    if datagram.len() < envelope::OVERHEAD {
                        continue;
                    }
                    let body =
                        &datagram[envelope::HEADER_LEN..datagram.len() - envelope::SIGNATURE_LEN];
                    let Ok(message) = Message::decode(datagram[0], body) else {
                        continue;
                    };
                    let Some((pending, sent)) = n.pending else {
                        continue;
                    };
                    match message {
                        Message::Registered { echo, .. } if echo == pending => {
                            let us = (now - sent).as_micros().min(u128::from(u32::MAX)) as u32;
                            window.latencies_us.push(us);
                            window.answered += 1;
                            if n.registered {
                                window.refreshes += 1;
                            } else {
                                window.first += 1;
                            }
                            n.registered = true;
                            n.pending = None;
                            n.next_at = now + refresh;
                            due.push(Reverse((n.next_at, i)));
                        }
                        Message::Challenge { echo, cookie } if echo == pending => {
                            window.challenges += 1;
                            n.cookie = Some(cookie);
                            send_register(n, i, now, &mut sends, &mut due);
                        }
                        Message::Refused { echo, code } if echo == pending => {
                            // Counted; the node tries again at its retry, as a node does.
                            window.refused += 1;
                            if code != RefusalCode::RateLimited {
                                eprintln!("refused: {code:?}");
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        if idle {
            std::thread::sleep(Duration::from_micros(100));
        }
        // Report.
        let now = Instant::now();
        if now >= last_report.0 + report {
            let usage = usage(&args.server_pid, args.db_pid);
            let mine = proc_usage(me);
            let elapsed = now - last_report.0;
            print_window(&mut window, elapsed, last_report.1, usage, &nodes);
            if let (Some((c0, _)), Some((c1, _))) = (last_report.2, mine) {
                let busy = (c1 - c0) / elapsed.as_secs_f64() * 100.0;
                println!("    (generator CPU {busy:.0} %)");
            }
            merge(&mut total, &mut window);
            last_report = (now, usage, mine);
        }
    }
    merge(&mut total, &mut window);
    let elapsed = started.elapsed();
    let usage = usage(&args.server_pid, args.db_pid);
    println!("--- total");
    print_window(&mut total, elapsed, server_start, usage, &nodes);
    Ok(())
}

fn merge(total: &mut Window, w: &mut Window) {
    total.answered += w.answered;
    total.first += w.first;
    total.refreshes += w.refreshes;
    total.challenges += w.challenges;
    total.timeouts += w.timeouts;
    total.refused += w.refused;
    total.latencies_us.append(&mut w.latencies_us);
    *w = Window {
        latencies_us: std::mem::take(&mut w.latencies_us),
        ..Window::default()
    };
}

fn print_window(w: &mut Window, elapsed: Duration, before: Usage, after: Usage, nodes: &[SimNode]) {
    let secs = elapsed.as_secs_f64().max(0.001);
    let mut sorted = w.latencies_us.clone();
    sorted.sort_unstable();
    let registered = nodes.iter().filter(|n| n.registered).count();
    let mut server = match (before.servers, after.servers) {
        (Some((cpu0, _)), Some((cpu1, rss))) => format!(
            "; server CPU {:.0} %, RSS {:.1} MiB ({:.2} KiB per registered node)",
            (cpu1 - cpu0) / secs * 100.0,
            rss as f64 / 1024.0,
            rss as f64 / registered.max(1) as f64
        ),
        _ => String::new(),
    };
    if let (Some(db0), Some(db1)) = (before.db, after.db) {
        server.push_str(&format!(
            "; database CPU {:.0} %",
            (db1 - db0) / secs * 100.0
        ));
    }
    println!(
        "{registered} registered; {:.0} answers/s ({:.0} first, {:.0} refreshes), {:.0} challenges/s; \
         latency p50 {:.2} ms p99 {:.2} ms max {:.2} ms; {} timeouts, {} refused{server}",
        w.answered as f64 / secs,
        w.first as f64 / secs,
        w.refreshes as f64 / secs,
        w.challenges as f64 / secs,
        Window::percentile(&sorted, 0.5),
        Window::percentile(&sorted, 0.99),
        sorted.last().map_or(0.0, |m| f64::from(*m) / 1000.0),
        w.timeouts,
        w.refused,
    );
}
