//! The rendezvous daemon (`pilotd rendezvous`): feeds the sans-IO [`Server`] from two UDP
//! sockets (main and alternate port) and the clock, sends what it returns from the port it
//! names, and logs its counters.
//!
//! One task owns the server, so nothing is locked. Each wake-up drains up to
//! `DATAGRAMS_PER_WAKE` datagrams from a socket into one preallocated buffer and writes the
//! answer or relayed frame into another: no allocation per datagram. The sockets are bound
//! to the exact `--listen` address, so replies leave from the address nodes sent to (a
//! wildcard socket on a host with several addresses could answer from another one, which a
//! NAT would not let through). That is also why these are plain tokio sockets rather than
//! `io::udp`'s recvmmsg/sendmmsg batches, which bind the wildcard address only; once that
//! module can bind a given address, `Core::drain` is the one place to change.

use std::fs;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::socket::{self as nix_socket, sockopt};
use tokio::net::UdpSocket;

use crate::clock::WallClock;
use crate::identity::Identity;
use crate::rendezvous::{Config, Port, Server, SqliteStore, DB_FILE};

/// Datagrams handled per socket per wake-up before the loop looks at the other socket and
/// the timers again (fairness).
const DATAGRAMS_PER_WAKE: usize = 64;
/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65535;
/// Socket buffers asked for: the relay sees bursts from many nodes at once.
const SOCKET_BUFFER_BYTES: usize = 4 << 20;

/// Everything `pilotd rendezvous` needs.
#[derive(Debug, Clone)]
pub struct RendezvousOptions {
    pub listen: SocketAddr,
    pub alt_port: u16,
    pub data_dir: PathBuf,
    pub keepalive: Duration,
    pub expiry: Duration,
    /// Relay rate per node, bytes per second (0: no relaying).
    pub relay_bytes_per_sec: u64,
    /// How often changed counters are logged.
    pub stats_interval: Duration,
}

/// The data directory when none is given: `/var/lib/pilot-rendezvous` for root,
/// `~/.pilot-rendezvous` otherwise.
pub fn default_data_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/pilot-rendezvous");
    }
    match std::env::var_os("HOME") {
        Some(home) if !home.is_empty() => PathBuf::from(home).join(".pilot-rendezvous"),
        _ => PathBuf::from(".pilot-rendezvous"),
    }
}

/// Runs the rendezvous until SIGINT or SIGTERM.
pub fn run_rendezvous(options: RendezvousOptions) -> anyhow::Result<()> {
    super::block_on(serve(options))
}

async fn serve(options: RendezvousOptions) -> anyhow::Result<()> {
    prepare_data_dir(&options.data_dir)?;
    let identity = Identity::load_or_create(&options.data_dir)?;
    let key = identity.public_key();
    let main = bind(options.listen)?;
    let alt = bind(SocketAddr::new(options.listen.ip(), options.alt_port))?;
    let (main_port, alt_port) = (main.local_addr()?.port(), alt.local_addr()?.port());
    let db = options.data_dir.join(DB_FILE);
    let store = SqliteStore::open(&db)?;
    let mut config = Config::new(identity, main_port, alt_port);
    config.keepalive = options.keepalive;
    config.expiry = options.expiry;
    config.relay_bytes_per_sec = options.relay_bytes_per_sec;
    let seed = rand_core::RngCore::next_u64(&mut rand_core::OsRng);
    let server = Server::new(
        config,
        Box::new(store),
        seed,
        WallClock::system(),
        Instant::now(),
    )
    .with_context(|| format!("loading registrations from {}", db.display()))?;
    tracing::info!(
        public_key = %key,
        address = %options.listen.ip(),
        main_port,
        alt_port,
        registrations = server.registered(),
        data_dir = %options.data_dir.display(),
        "rendezvous listening"
    );
    let sockets = Sockets {
        main: Socket::new(main),
        alt: Socket::new(alt),
    };
    let mut core = Core {
        server,
        recv_buf: vec![0; MAX_DATAGRAM].into_boxed_slice(),
        out: vec![0; MAX_DATAGRAM].into_boxed_slice(),
        send_errors: 0,
    };
    core.run(&sockets, super::shutdown_signal()?, options.stats_interval)
        .await
}

/// The two sockets, kept apart from the state so that waiting on them borrows nothing the
/// handlers change.
struct Sockets {
    main: Socket,
    alt: Socket,
}

struct Socket {
    udp: UdpSocket,
    /// An IPv6 socket (IPv4 destinations must be written as IPv4-mapped).
    v6: bool,
}

struct Core {
    server: Server,
    recv_buf: Box<[u8]>,
    out: Box<[u8]>,
    /// Datagrams the kernel refused or that found the send buffer full (dropped: nodes
    /// retry control messages, and WireGuard copes with loss).
    send_errors: u64,
}

impl Sockets {
    fn get(&self, port: Port) -> &Socket {
        match port {
            Port::Main => &self.main,
            Port::Alt => &self.alt,
        }
    }
}

impl Socket {
    fn new(udp: UdpSocket) -> Socket {
        let v6 = udp.local_addr().is_ok_and(|a| a.is_ipv6());
        Socket { udp, v6 }
    }
}

impl Core {
    async fn run(
        &mut self,
        sockets: &Sockets,
        shutdown: impl std::future::Future<Output = ()>,
        stats_interval: Duration,
    ) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        // The first tick one interval from now, not at once.
        let first = tokio::time::Instant::now() + stats_interval;
        let mut stats = tokio::time::interval_at(first, stats_interval);
        stats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut logged = self.server.counters().clone();
        self.server.handle_timeout(Instant::now());
        loop {
            let wake = self
                .server
                .poll_timeout()
                .map_or_else(|| Instant::now() + stats_interval, |(t, _)| t);
            tokio::select! {
                () = &mut shutdown => break,
                ready = sockets.main.udp.readable() => {
                    ready?;
                    self.drain(sockets, Port::Main);
                }
                ready = sockets.alt.udp.readable() => {
                    ready?;
                    self.drain(sockets, Port::Alt);
                }
                () = tokio::time::sleep_until(wake.into()) => {
                    self.server.handle_timeout(Instant::now());
                }
                _ = stats.tick() => {
                    if *self.server.counters() != logged {
                        logged = self.server.counters().clone();
                        tracing::info!(send_errors = self.send_errors, "counters: {logged}");
                    }
                }
            }
        }
        if let Err(e) = self.server.flush(Instant::now()) {
            tracing::warn!("last registry write failed: {e}");
        }
        tracing::info!(
            send_errors = self.send_errors,
            "counters at exit: {}",
            self.server.counters()
        );
        tracing::info!("rendezvous stopped");
        Ok(())
    }

    /// Reads what the socket of `port` has queued (up to a limit) and answers each datagram.
    fn drain(&mut self, sockets: &Sockets, port: Port) {
        let socket = &sockets.get(port).udp;
        for _ in 0..DATAGRAMS_PER_WAKE {
            let (len, from) = match socket.try_recv_from(&mut self.recv_buf) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // ICMP errors for earlier sends (ECONNREFUSED and the like) surface here.
                Err(e) if is_transient(&e) => continue,
                // Nothing else is expected from a bound UDP socket; one bad read must not
                // take the registry down.
                Err(e) => {
                    tracing::debug!("udp receive: {e}");
                    return;
                }
            };
            let now = Instant::now();
            let datagram = &self.recv_buf[..len];
            if let Some(t) = self
                .server
                .handle_datagram(port, from, datagram, now, &mut self.out)
            {
                let sent = send(sockets.get(t.port), t.to, t.payload);
                self.send_errors += u64::from(!sent);
            }
            // The second Punch of an introduction leaves right behind the first.
            while let Some(t) = self.server.poll_transmit(&mut self.out) {
                let sent = send(sockets.get(t.port), t.to, t.payload);
                self.send_errors += u64::from(!sent);
            }
        }
    }
}

/// One datagram, now or never: a full send buffer drops it like a congested router would.
fn send(socket: &Socket, to: SocketAddr, payload: &[u8]) -> bool {
    let to = match to {
        SocketAddr::V4(v4) if socket.v6 => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        _ => to,
    };
    match socket.udp.try_send_to(payload, to) {
        Ok(_) => true,
        Err(e) => {
            tracing::trace!(%to, "send failed: {e}");
            false
        }
    }
}

/// Makes the data directory (0700) if needed, and refuses one that others can write to.
fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    let mode = fs::metadata(dir)
        .with_context(|| format!("cannot read data directory {}", dir.display()))?
        .permissions()
        .mode()
        & 0o777;
    if mode & 0o022 != 0 {
        bail!(
            "data directory {} is writable by group or others (mode {mode:o}); run `chmod 700 {}`",
            dir.display(),
            dir.display()
        );
    }
    if mode & 0o077 != 0 {
        tracing::warn!(
            "data directory {} is readable by group or others (mode {mode:o}); consider `chmod 700 {}`",
            dir.display(),
            dir.display()
        );
    }
    Ok(())
}

/// A non-blocking UDP socket bound to exactly `addr`. A wildcard IPv6 address is made
/// dual-stack explicitly (the default follows a sysctl), so `[::]` serves IPv4 nodes too.
fn bind(addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    let context = || {
        format!(
            "binding UDP {addr} (is another rendezvous running? choose other ports with --listen \
             and --alt-port)"
        )
    };
    let socket = match addr.ip() {
        IpAddr::V6(ip) if ip.is_unspecified() => {
            bind_dual_stack(addr.port()).with_context(context)?
        }
        _ => std::net::UdpSocket::bind(addr).with_context(context)?,
    };
    socket.set_nonblocking(true)?;
    // A smaller buffer only costs drops under bursts: best effort.
    if nix_socket::setsockopt(&socket, sockopt::RcvBufForce, &SOCKET_BUFFER_BYTES).is_err() {
        let _ = nix_socket::setsockopt(&socket, sockopt::RcvBuf, &SOCKET_BUFFER_BYTES);
    }
    if nix_socket::setsockopt(&socket, sockopt::SndBufForce, &SOCKET_BUFFER_BYTES).is_err() {
        let _ = nix_socket::setsockopt(&socket, sockopt::SndBuf, &SOCKET_BUFFER_BYTES);
    }
    Ok(UdpSocket::from_std(socket)?)
}

fn bind_dual_stack(port: u16) -> io::Result<std::net::UdpSocket> {
    use nix_socket::{AddressFamily, SockFlag, SockType, SockaddrIn6};
    use std::os::fd::AsRawFd;
    let fd = nix_socket::socket(
        AddressFamily::Inet6,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    nix_socket::setsockopt(&fd, sockopt::Ipv6V6Only, &false)?;
    let any = std::net::SocketAddrV6::new(std::net::Ipv6Addr::UNSPECIFIED, port, 0, 0);
    nix_socket::bind(fd.as_raw_fd(), &SockaddrIn6::from(any))?;
    Ok(std::net::UdpSocket::from(fd))
}

/// Receive errors that report on an earlier datagram, not on the socket.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::EINTR)
    )
}
