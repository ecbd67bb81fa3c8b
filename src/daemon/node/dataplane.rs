//! The data-plane loop: feeds the sans-IO [`Node`] from the TUN, the UDP socket, the clock and
//! the control socket, and carries out what it asks.
//!
//! One task owns the node, so nothing is locked. Work is done in batches: one `recvmmsg` brings
//! up to [`MAX_BATCH`] datagrams (more with UDP GRO), packets read from the TUN are encrypted
//! straight into the slots of a send batch, and one `sendmmsg` sends them. With TUN offloads the
//! kernel hands over TCP super-segments of up to 64 KB, cut here into MTU-sized packets, and
//! decrypted TCP segments are coalesced again before they are written back ([`TunWriter`]).
//! Buffers are allocated once, at start.
//!
//! This file is the loop and its packet I/O. What the loop also answers between two batches
//! lives beside it: the control verbs in `verbs`, the reports (`info`, `status`, trust list,
//! metrics) in `reports`, the state files in `state_files`, the rendezvous' health in
//! `rendezvous_watch`, the TLS stream to it when UDP is blocked in `rendezvous_stream`.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot, Notify};

use super::control::Command;
use super::trust_file::{SaveSchedule, TrustFile};
use crate::api::{ControlError, PeerRef, PingReply, ReleasedName};
use crate::daemon::services::inbox::Inbox;
use crate::daemon::services::Incoming;
use crate::io::offload::{segments, VirtioNetHdr};
use crate::io::stack::Stack;
use crate::io::tun::{TunDevice, OFFLOAD_READ_LEN};
use crate::io::tun_writer::TunWriter;
use crate::io::udp::{RecvBatch, SendBatch, UdpSocket, MAX_BATCH};
use crate::node::{Event, NetOutput, Node, PathKind, Socket, Spares, TunOutput, SPARES};
use crate::wire::printable::printable;

mod lan_watch;
mod rendezvous_stream;
mod rendezvous_watch;
mod reports;
mod state_files;
mod verbs;

/// Largest datagram the node sends or accepts: the largest TUN packet plus WireGuard overhead.
const SLOT: usize = 65535;
/// How long to sleep when the node has no deadline at all (no rendezvous, no keepalive, no
/// traffic): a safety net, as every input wakes the loop anyway and the node reads its
/// deadlines again after it.
const IDLE: Duration = Duration::from_secs(60);
/// TUN reads per wake-up before the loop turns to the socket again (fairness).
const TUN_READS_PER_WAKE: usize = 64;

/// What the loop reports in `info` besides the node's own state, and where it pins the
/// rendezvous key it learns.
pub struct Facts {
    /// The TUN's name; empty in userspace mode.
    pub interface: String,
    /// Userspace mode: where the SOCKS5 proxy listens, if it does.
    pub socks5: Option<std::net::SocketAddr>,
    /// Userspace mode: exposed ports, `PORT:LOCALPORT`.
    pub expose: Vec<String>,
    pub mtu: u32,
    pub listen_port: u16,
    pub rendezvous_pin: Option<super::pin::RendezvousPin>,
    pub trust_file: TrustFile,
    /// The opt-in hosts file kept listing this node's and its trusted peers' names.
    pub hosts_file: Option<crate::daemon::names::HostsFile>,
    /// When the daemon started, for its uptime.
    pub started: Instant,
    /// Where the metrics endpoint listens, if it does.
    pub metrics: Option<std::net::SocketAddr>,
    /// Kernel mode: why the LAN guard is missing, if it is.
    pub lan_guard_missing: Option<String>,
}

pub struct DataPlane {
    io: Io,
    core: Core,
    /// What the rendezvous stream reads, in batches of frames (see `rendezvous_stream`).
    stream_frames: mpsc::Receiver<rendezvous_stream::StreamIn>,
}

/// The descriptors, kept apart from the state so a readiness guard on one can be held while
/// the state is changed.
struct Io {
    /// Kernel mode's TUN; `None` in userspace mode, where [`Core::stack`] takes its place.
    tun: Option<AsyncFd<TunDevice>>,
    udp: AsyncFd<UdpSocket>,
    /// The spare sockets by number, open while the node wants them (birthday probing, see
    /// `node::birthday`): all of them during an attempt on the hard side, then the ones
    /// peers' direct paths use.
    spares: Vec<Option<SpareSocket>>,
}

/// A spare socket: small buffers while it only probes, the main socket's once it carries a
/// peer's traffic (its first batch of data).
struct SpareSocket {
    fd: AsyncFd<UdpSocket>,
    raised: std::cell::Cell<bool>,
}

impl Io {
    fn spare(&self, k: u8) -> Option<&AsyncFd<UdpSocket>> {
        self.spares
            .get(usize::from(k))
            .and_then(Option::as_ref)
            .map(|s| &s.fd)
    }

    /// Spare `k` carries a peer's traffic: it gets big buffers (once).
    fn spare_carries_traffic(&self, k: u8) {
        if let Some(spare) = self.spares.get(usize::from(k)).and_then(Option::as_ref) {
            if !spare.raised.replace(true) {
                spare.fd.get_ref().raise_buffers();
            }
        }
    }
}

/// Where the node's own packets come from and go to.
pub enum Local {
    /// Kernel mode: a TUN interface with virtio-net headers.
    Tun(TunDevice),
    /// Userspace mode: a smoltcp stack; connections peers open to it go to `incoming`.
    Stack(Box<Stack>, mpsc::Sender<Incoming>),
}

impl Local {
    /// `kernel` or `userspace`, as `info` and the log say.
    pub fn mode(&self) -> &'static str {
        match self {
            Local::Tun(_) => "kernel",
            Local::Stack(..) => "userspace",
        }
    }
}

struct Core {
    node: Node,
    facts: Facts,
    recv: RecvBatch,
    /// Where decrypted packets and datagrams to send go.
    out: Outlet,
    /// One TUN read (a packet, or a TCP super-segment with offloads) lands here.
    tun_buf: Box<[u8]>,
    /// One segment cut from a super-segment, before it is encrypted into a send slot.
    seg_buf: Box<[u8]>,
    /// Decrypted packets and control-path outputs are written here.
    out_buf: Box<[u8]>,
    /// TUN reads that could not be parsed or segmented.
    offload_errors: u64,
    ping_seq: u16,
    /// Pings in flight by sequence number (unique within this daemon).
    ping_waiters: BTreeMap<u16, oneshot::Sender<PingReply>>,
    /// `resolve` commands waiting for the rendezvous, by lookup id.
    resolve_waiters: BTreeMap<u64, (String, oneshot::Sender<Result<PeerRef, ControlError>>)>,
    /// When trust.json may be written next (at most a few times a second, with back-off
    /// while writes fail).
    saves: SaveSchedule,
    /// The write of trust.json in flight, on a blocking thread (see `state_files`).
    saving: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    rendezvous_watch: rendezvous_watch::RendezvousWatch,
    lan_watch: lan_watch::LanWatch,
    /// Why the daemon must stop (a refused hostname).
    fatal: Option<String>,
    /// The spare sockets open, as last made to match [`Node::spares`].
    spares_open: Spares,
    /// Received messages (listed and cleared through the control socket).
    inbox: Arc<Mutex<Inbox>>,
    /// The `release_name` command waiting for the rendezvous.
    release_waiter: Option<oneshot::Sender<Result<ReleasedName, ControlError>>>,
    /// Where that stream hands what it reads (the loop's end is `DataPlane::stream_frames`).
    stream_frames: mpsc::Sender<rendezvous_stream::StreamIn>,
}

/// Where what the node hands out goes: decrypted packets to the TUN (or the userspace stack),
/// datagrams to the UDP send batch or, for the rendezvous while UDP to it is blocked, down its
/// TLS stream.
struct Outlet {
    writer: TunWriter,
    /// Userspace mode: the stack holding the node's address, and where the connections peers
    /// open to it are served.
    stack: Option<(Box<Stack>, mpsc::Sender<Incoming>)>,
    send: SendBatch,
    /// Replies dropped because the send batch stayed full.
    send_dropped: u64,
    /// The TLS stream to the rendezvous, while the node wants one (UDP to it is blocked).
    rdv_stream: Option<rendezvous_stream::RendezvousStream>,
    /// Datagrams for a spare socket: those of a peer whose direct path birthday probing
    /// found. Allocated at the first.
    spare: Option<SpareSend>,
}

/// The send batch of one spare socket at a time: a datagram for another spare flushes it
/// first (two peers on spares at once is rare; each keeps its batches).
struct SpareSend {
    batch: SendBatch,
    socket: u8,
}

impl DataPlane {
    pub fn new(
        node: Node,
        local: Local,
        udp: UdpSocket,
        facts: Facts,
        inbox: Arc<Mutex<Inbox>>,
    ) -> io::Result<DataPlane> {
        let (tun, stack) = match local {
            Local::Tun(tun) => {
                // Every read and write carries a virtio-net header: the packet path is written
                // for it.
                if !tun.vnet_hdr() {
                    return Err(io::Error::other(
                        "the TUN device has no virtio-net header (IFF_VNET_HDR)",
                    ));
                }
                // SAFETY: TunDevice owns its descriptor, keeps it open for its whole lifetime
                // and always returns the same one from as_raw_fd.
                let tun = unsafe { AsyncFd::register(tun) }.map_err(io::Error::from)?;
                (Some(tun), None)
            }
            Local::Stack(stack, incoming) => (None, Some((stack, incoming))),
        };
        // SAFETY: as for the TUN above.
        let udp = unsafe { AsyncFd::register(udp) }.map_err(io::Error::from)?;
        let io = Io {
            tun,
            udp,
            spares: (0..SPARES).map(|_| None).collect(),
        };
        let (stream_tx, stream_frames) = mpsc::channel(64);
        let core = Core {
            node,
            facts,
            recv: RecvBatch::new(MAX_BATCH, SLOT),
            out: Outlet {
                writer: TunWriter::new(),
                stack,
                send: SendBatch::new(MAX_BATCH, SLOT),
                send_dropped: 0,
                rdv_stream: None,
                spare: None,
            },
            tun_buf: vec![0; OFFLOAD_READ_LEN].into_boxed_slice(),
            seg_buf: vec![0; SLOT].into_boxed_slice(),
            out_buf: vec![0; SLOT].into_boxed_slice(),
            offload_errors: 0,
            ping_seq: 0,
            ping_waiters: BTreeMap::new(),
            resolve_waiters: BTreeMap::new(),
            saves: SaveSchedule::new(Instant::now()),
            saving: None,
            rendezvous_watch: rendezvous_watch::RendezvousWatch::new(Instant::now()),
            lan_watch: lan_watch::LanWatch::new(Instant::now()),
            fatal: None,
            spares_open: Spares::default(),
            inbox,
            release_waiter: None,
            stream_frames: stream_tx,
        };
        Ok(DataPlane {
            io,
            core,
            stream_frames,
        })
    }

    /// Runs until `shutdown` resolves, an I/O error that cannot be survived, or a fatal
    /// refusal (a hostname another node holds), which is returned as the daemon's error as it
    /// stands: it is the configuration that is wrong, not the data plane.
    pub async fn run(
        self,
        mut commands: mpsc::Receiver<Command>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let DataPlane {
            mut io,
            mut core,
            mut stream_frames,
        } = self;
        tokio::pin!(shutdown);
        core.node.handle_timeout(Instant::now());
        core.update_hosts_file();
        let result = core
            .run(&mut io, &mut commands, &mut stream_frames, shutdown)
            .await;
        if let Some(hosts) = &core.facts.hosts_file {
            if let Err(e) = hosts.remove() {
                tracing::warn!(
                    "removing the pilot block from {}: {e}",
                    hosts.path().display()
                );
            }
        }
        if let Some(why) = core.fatal.take() {
            anyhow::bail!(why);
        }
        anyhow::Context::context(result, "data plane")
    }
}

impl Core {
    /// The loop: waits for the socket, the TUN, the next timer or a command, handles it, and
    /// sends what the node has for the network.
    async fn run(
        &mut self,
        io: &mut Io,
        commands: &mut mpsc::Receiver<Command>,
        stream_frames: &mut mpsc::Receiver<rendezvous_stream::StreamIn>,
        mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> io::Result<()> {
        loop {
            self.sync_spares(io);
            let io = &*io;
            let now = Instant::now();
            let mut wake = self
                .node
                .poll_timeout()
                .map_or_else(|| now + IDLE, |(t, _)| t)
                .min(self.lan_watch.next());
            // A change waits for its turn; while a write is in flight, for the write (its
            // completion wakes the loop).
            if self.node.trust_changed() && self.saving.is_none() {
                wake = wake.min(self.saves.next());
            }
            let mut stack_notify = None;
            if let Some((stack, _)) = &mut self.out.stack {
                if let Some(at) = stack.poll_at(now) {
                    wake = wake.min(at);
                }
                stack_notify = Some(stack.notify());
            }
            // The write in flight is polled here, out of `self`, so the other branches may
            // use `self` freely; it is put back unless it finished.
            let mut saving = self.saving.take();
            let (mut saved, mut stop) = (None, false);
            tokio::select! {
                () = &mut shutdown => stop = true,
                result = async { saving.as_mut().expect("guarded").await }, if saving.is_some() => {
                    saved = Some(result);
                }
                guard = io.udp.readable() => {
                    let mut guard = guard?;
                    match self.recv.recv(io.udp.get_ref()) {
                        Ok(n) => self.on_datagrams(io, Socket::Main, n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                        Err(e) => tracing::debug!("udp receive: {e}"),
                    }
                }
                ready = spare_readable(&io.spares) => {
                    let (k, mut guard) = ready?;
                    match self.recv.recv(guard.get_inner()) {
                        Ok(n) => {
                            // WireGuard on a spare: it carries a peer's traffic.
                            if n > 0 && crate::wire::classify(self.recv.get(0).1)
                                == crate::wire::DatagramKind::WireGuard
                            {
                                io.spare_carries_traffic(k);
                            }
                            self.on_datagrams(io, Socket::Spare(k), n);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                        Err(e) => tracing::debug!("udp receive on spare {k}: {e}"),
                    }
                }
                guard = readable(io.tun.as_ref()) => {
                    let mut guard = guard?;
                    if self.on_tun_readable(io).await? {
                        guard.clear_ready();
                    }
                }
                () = notified(stack_notify.as_deref()) => {}
                () = tokio::time::sleep_until(wake.into()) => self.node.handle_timeout(Instant::now()),
                Some(command) = commands.recv() => self.on_command(command),
                Some(event) = stream_frames.recv() => match event {
                    rendezvous_stream::StreamIn::Frames(frames) => self.on_stream_frames(io, &frames),
                    rendezvous_stream::StreamIn::Connected => self.node.stream_connected(Instant::now()),
                },
            }
            match saved {
                Some(result) => self.save_done(result),
                None => self.saving = saving,
            }
            if stop {
                // A change still waiting for its turn to be written is written now.
                self.flush_trust().await;
                return Ok(());
            }
            self.drain_node(io).await?;
            if self.fatal.is_some() {
                return Ok(());
            }
        }
    }

    /// Opens and closes spare sockets to match what the node wants. One that cannot be opened
    /// stays closed (the node's probes from it are dropped; the attempt may still succeed on
    /// the others, or the pair stays relayed).
    fn sync_spares(&mut self, io: &mut Io) {
        let want = self.node.spares();
        if want == self.spares_open {
            return;
        }
        let mut failed = None;
        for (k, slot) in (0..=u8::MAX).zip(io.spares.iter_mut()) {
            match (want.contains(k), slot.is_some()) {
                (true, false) => match open_spare() {
                    Ok(fd) => {
                        *slot = Some(SpareSocket {
                            fd,
                            raised: std::cell::Cell::new(false),
                        })
                    }
                    Err(e) => failed = Some(e),
                },
                (false, true) => *slot = None,
                _ => {}
            }
        }
        if let Some(e) = failed {
            tracing::warn!("cannot open a spare UDP socket for birthday probing: {e}");
        }
        self.spares_open = want;
    }

    /// Decrypts a batch received on `socket`; plaintext goes to the TUN, replies to the send
    /// batch.
    fn on_datagrams(&mut self, io: &Io, socket: Socket, count: usize) {
        let now = Instant::now();
        let tun = io.tun.as_ref().map(AsyncFd::get_ref);
        for i in 0..count {
            let (from, datagram) = self.recv.get(i);
            let output =
                self.node
                    .handle_datagram_on(socket, from, datagram, now, &mut self.out_buf);
            self.out.carry(io, output);
        }
        if let Some(tun) = tun {
            self.out.writer.flush(tun);
        }
    }

    /// What the rendezvous stream read: datagrams from the rendezvous, as if over UDP.
    fn on_stream_frames(&mut self, io: &Io, frames: &[u8]) {
        let Some(from) = self.out.rdv_stream.as_ref().map(|s| s.target.rendezvous) else {
            return;
        };
        let now = Instant::now();
        for datagram in crate::io::stream::frames(frames) {
            let output = self
                .node
                .handle_datagram(from, datagram, now, &mut self.out_buf);
            self.out.carry(io, output);
        }
        if let Some(tun) = io.tun.as_ref().map(AsyncFd::get_ref) {
            self.out.writer.flush(tun);
        }
    }

    /// Reads packets from the TUN and encrypts each straight into a send slot, cutting TCP
    /// super-segments into packets first. When the send batch fills up
    /// it is flushed, waiting for the socket if the kernel pushes back. Returns true when the
    /// TUN has nothing more to read.
    async fn on_tun_readable(&mut self, io: &Io) -> io::Result<bool> {
        let now = Instant::now();
        let Some(tun) = io.tun.as_ref().map(AsyncFd::get_ref) else {
            return Ok(true);
        };
        for _ in 0..TUN_READS_PER_WAKE {
            let n = match tun.recv(&mut self.tun_buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(true),
                Err(e) => {
                    tracing::debug!("tun read: {e}");
                    return Ok(true);
                }
            };
            let parsed = VirtioNetHdr::parse(&self.tun_buf[..n]).map(|(hdr, p)| segments(&hdr, p));
            let Some(Ok(mut segs)) = parsed else {
                self.offload_errors += 1;
                continue;
            };
            loop {
                if self.out.send.is_full() {
                    flush_batch(&mut self.out.send, io).await?;
                }
                if self.out.spare.as_ref().is_some_and(|s| s.batch.is_full()) {
                    self.out.flush_spare(io).await;
                }
                match segs.next_into(&mut self.seg_buf) {
                    Ok(Some(len)) => {
                        let packet = &self.seg_buf[..len];
                        self.out.encrypt(io, &mut self.node, packet, now);
                    }
                    Ok(None) => break,
                    Err(_) => {
                        self.offload_errors += 1;
                        break;
                    }
                }
            }
        }
        Ok(false)
    }

    /// Sends everything the node and the batches hold, and delivers the node's events.
    async fn drain_node(&mut self, io: &Io) -> io::Result<()> {
        let now = Instant::now();
        self.save_trust(now);
        self.watch_rendezvous(now);
        self.watch_lan(now);
        self.hold_rendezvous_stream();
        self.run_stack(io, now).await?;
        loop {
            if self.out.send.is_full() {
                flush_batch(&mut self.out.send, io).await?;
            }
            let Some(t) = self.node.poll_transmit(now, &mut self.out_buf) else {
                break;
            };
            match (t.socket, self.out.rdv_stream.as_mut()) {
                (Socket::Spare(k), _) => self.out.push_spare(io, k, t.payload, t.to),
                (Socket::Main, Some(stream)) if stream.carries(t.to) => stream.send(t.payload),
                (Socket::Main, _) => self.out.send.push(t.payload, t.to),
            }
        }
        flush_batch(&mut self.out.send, io).await?;
        self.out.flush_spare(io).await;
        while let Some(event) = self.node.poll_event() {
            match event {
                Event::PingReply { peer, seq, rtt } => {
                    if let Some(waiter) = self.ping_waiters.remove(&seq) {
                        let addr = peer.address();
                        let path = self
                            .node
                            .peer_status(addr, now)
                            .map_or(PathKind::None, |s| s.path);
                        let _ = waiter.send(PingReply {
                            address: addr.to_ipv6().to_string(),
                            node: addr.to_string(),
                            seq,
                            rtt_ms: rtt.as_secs_f64() * 1000.0,
                            path: path.as_str().to_owned(),
                        });
                    }
                }
                Event::PathChanged {
                    peer,
                    path,
                    endpoint,
                } => {
                    let endpoint = endpoint.map(|e| e.to_string()).unwrap_or_default();
                    tracing::info!(peer = %peer.address(), path = path.as_str(), %endpoint, "path changed");
                }
                Event::PublicEndpoint(endpoint) => {
                    tracing::info!(%endpoint, "public endpoint (as the rendezvous sees it)");
                    let net = self.node.net_status(Instant::now());
                    if let Some(configured) = net.endpoint.filter(|_| net.endpoint_configured) {
                        if configured != endpoint.to_string() {
                            tracing::info!(%configured, "peers are told the configured --endpoint first");
                        }
                    }
                }
                Event::RendezvousSwitched { from, to, why } => {
                    tracing::warn!(%from, %to, "registering with another rendezvous: {why}");
                }
                Event::TrustChanged { peer, trusted } => {
                    let name = self.node.trust().name_of(&peer).map(|n| n.to_string());
                    let verdict = if trusted {
                        "trusted"
                    } else {
                        "no longer trusted"
                    };
                    tracing::info!(peer = %peer.address(), name = name.as_deref().unwrap_or("-"), "peer {verdict}");
                }
                Event::TrustRequest {
                    from,
                    name,
                    justification,
                } => {
                    let who = name.map_or_else(|| from.address().to_string(), |n| n.to_string());
                    // The justification is the requester's text: escaped, it stays one log line.
                    let justification = printable(&justification);
                    tracing::info!(peer = %from.address(), %justification, "trust request from {who}; approve with `pilotctl approve {who}`");
                }
                Event::HostnameTaken(name) => {
                    // A configuration error: retrying cannot help, so the daemon stops with it.
                    let rendezvous = (self.node.net_status(Instant::now()).rendezvous)
                        .map_or_else(String::new, |r| format!(" {r}"));
                    self.fatal = Some(format!(
                        "hostname `{name}` is already registered by another node at the \
                         rendezvous{rendezvous} (the first to claim a name keeps it); choose \
                         another with --hostname (or `hostname` in the config file)"
                    ));
                }
                Event::LookupDone { id, found } => {
                    if let Some((name, waiter)) = self.resolve_waiters.remove(&id) {
                        let blame = self.rendezvous_blame(Instant::now());
                        let answer =
                            found
                                .map(|f| self.peer_ref(f.key, f.hostname))
                                .ok_or(match blame {
                                    Some(why) => ControlError::LookupFailed { name, why },
                                    None => ControlError::NotRegistered(name),
                                });
                        let _ = waiter.send(answer);
                    }
                }
                Event::NameReleased { name, outcome } => self.name_released(name, outcome),
                Event::TrustWarning(warning) => {
                    tracing::warn!("trust.json: {warning}");
                }
                Event::RendezvousKey(key) => {
                    tracing::info!(%key, "rendezvous key learned on first contact; pinned from now on");
                    if let Some(pin) = &self.facts.rendezvous_pin {
                        if let Err(e) = pin.save(key) {
                            tracing::warn!("cannot pin the rendezvous key: {e:#}");
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Userspace mode: runs the stack, hands over the connections peers opened to it, and
    /// encrypts what it sends into the send batch, as packets read from a TUN are.
    async fn run_stack(&mut self, io: &Io, now: Instant) -> io::Result<()> {
        let Some((mut stack, incoming)) = self.out.stack.take() else {
            return Ok(());
        };
        stack.poll(now);
        while let Some(accepted) = stack.take_accepted() {
            let sender = self.sender_of(*accepted.remote.ip());
            if let Err(e) = incoming.try_send(Incoming { accepted, sender }) {
                // Dropping the stream closes the connection: the peer sees it at once.
                tracing::warn!("incoming overlay connection dropped: {e}");
            }
        }
        let mut result = Ok(());
        let mut replied = false;
        while let Some(packet) = stack.pop_packet() {
            if self.out.send.is_full() {
                result = flush_batch(&mut self.out.send, io).await;
                if result.is_err() {
                    break;
                }
            }
            if self.out.spare.as_ref().is_some_and(|s| s.batch.is_full()) {
                self.out.flush_spare(io).await;
            }
            match self
                .node
                .handle_tun_packet(&packet, now, self.out.send.next_slot())
            {
                TunOutput::Send(t) => {
                    let (to, socket, len) = (t.to, t.socket, t.payload.len());
                    self.out.commit_slot(io, socket, len, to);
                }
                TunOutput::Reply(reply) => replied |= stack.push_packet(reply),
                TunOutput::Nothing => {}
            }
            stack.recycle(packet);
        }
        if replied {
            // An ICMPv6 error for the stack (an untrusted destination): let it see it now.
            stack.poll(now);
        }
        self.out.stack = Some((stack, incoming));
        result
    }
}

/// Readiness of the TUN; never, in userspace mode.
async fn readable(
    tun: Option<&AsyncFd<TunDevice>>,
) -> io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, TunDevice>> {
    match tun {
        Some(tun) => tun.readable().await,
        None => std::future::pending().await,
    }
}

/// A task moved bytes through a stack connection; never, in kernel mode.
async fn notified(notify: Option<&Notify>) {
    match notify {
        Some(notify) => notify.notified().await,
        None => std::future::pending().await,
    }
}

impl Outlet {
    /// Carries out what a received datagram made the node do: a packet for the TUN (or the
    /// userspace stack), or a reply to send.
    fn carry(&mut self, io: &Io, output: NetOutput<'_>) {
        let tun = io.tun.as_ref().map(AsyncFd::get_ref);
        match output {
            NetOutput::Tun(packet) => match (tun, &mut self.stack) {
                (Some(tun), _) => self.writer.push(tun, packet),
                (None, Some((stack, _))) => {
                    stack.push_packet(packet);
                }
                (None, None) => {}
            },
            NetOutput::Send(t) => {
                if let Socket::Spare(k) = t.socket {
                    self.push_spare(io, k, t.payload, t.to);
                    return;
                }
                if let Some(stream) = self.rdv_stream.as_mut().filter(|s| s.carries(t.to)) {
                    stream.send(t.payload);
                    return;
                }
                // Replies (handshake responses, cookies) are rare; if the socket is backed up
                // so far that the batch is still full, WireGuard retries them anyway.
                if self.send.is_full() {
                    let _ = self.send.flush(io.udp.get_ref());
                }
                if self.send.is_full() {
                    self.send_dropped += 1;
                } else {
                    self.send.push(t.payload, t.to);
                }
            }
            NetOutput::Nothing => {}
        }
    }

    /// Encrypts one packet from the TUN into the next send slot (or down the rendezvous
    /// stream, when that is where it goes). The batch must not be full.
    fn encrypt(&mut self, io: &Io, node: &mut Node, packet: &[u8], now: Instant) {
        match node.handle_tun_packet(packet, now, self.send.next_slot()) {
            TunOutput::Send(t) => {
                let (to, socket, len) = (t.to, t.socket, t.payload.len());
                self.commit_slot(io, socket, len, to);
            }
            TunOutput::Reply(reply) => {
                if let Some(tun) = io.tun.as_ref() {
                    self.writer.write_now(tun.get_ref(), reply);
                }
            }
            TunOutput::Nothing => {}
        }
    }

    /// Sends the datagram of `len` bytes the node wrote into the next slot of the send batch:
    /// commits the slot, or copies the datagram down the rendezvous stream or into the spare
    /// batch (the slot then stays free for the next one).
    fn commit_slot(&mut self, io: &Io, socket: Socket, len: usize, to: std::net::SocketAddr) {
        match (socket, self.rdv_stream.as_mut()) {
            (Socket::Spare(k), _) => {
                // A packet from the TUN or the stack: the spare carries a peer's traffic.
                io.spare_carries_traffic(k);
                let spare = self.spare.get_or_insert_with(SpareSend::new);
                spare.make_room(io, k, &mut self.send_dropped);
                spare.batch.push(&self.send.next_slot()[..len], to);
            }
            (Socket::Main, Some(stream)) if stream.carries(to) => {
                stream.send(&self.send.next_slot()[..len]);
            }
            (Socket::Main, _) => self.send.commit(len, to),
        }
    }

    /// Queues a datagram for spare socket `k`.
    fn push_spare(&mut self, io: &Io, k: u8, datagram: &[u8], to: std::net::SocketAddr) {
        let spare = self.spare.get_or_insert_with(SpareSend::new);
        spare.make_room(io, k, &mut self.send_dropped);
        spare.batch.push(datagram, to);
    }

    /// Sends what the spare batch holds, waiting for its socket to drain when the kernel
    /// pushes back. A spare that fails otherwise loses its datagrams (counted) and never
    /// stops the data plane: the pair falls back to the relay.
    async fn flush_spare(&mut self, io: &Io) {
        let Some(spare) = &mut self.spare else {
            return;
        };
        let Some(fd) = io.spare(spare.socket) else {
            self.send_dropped += spare.batch.clear() as u64;
            return;
        };
        while !spare.batch.is_empty() {
            match spare.batch.flush(fd.get_ref()) {
                Ok(()) => break,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => match fd.writable().await {
                    Ok(mut guard) => guard.clear_ready(),
                    Err(_) => break,
                },
                Err(e) => {
                    tracing::debug!("send on spare {}: {e}", spare.socket);
                    break;
                }
            }
        }
        self.send_dropped += spare.batch.clear() as u64;
    }
}

impl SpareSend {
    fn new() -> SpareSend {
        SpareSend {
            batch: SendBatch::new(MAX_BATCH, SLOT),
            socket: 0,
        }
    }

    /// Makes room in the batch for a datagram from spare `k`: a batch for another spare, or a
    /// full one, is sent first as far as the socket takes it without waiting; what it does not
    /// take is dropped and counted in `dropped`.
    fn make_room(&mut self, io: &Io, k: u8, dropped: &mut u64) {
        if self.batch.is_empty() || (self.socket == k && !self.batch.is_full()) {
            self.socket = k;
            return;
        }
        if let Some(fd) = io.spare(self.socket) {
            let _ = self.batch.flush(fd.get_ref());
        }
        *dropped += self.batch.clear() as u64;
        self.socket = k;
    }
}

/// A spare socket, registered with the reactor.
fn open_spare() -> io::Result<AsyncFd<UdpSocket>> {
    let socket = UdpSocket::bind_spare()?;
    // SAFETY: as for the main socket in `DataPlane::new`.
    unsafe { AsyncFd::register(socket) }.map_err(io::Error::from)
}

/// The first spare socket with something to read, and its readiness; never, while none is
/// open.
async fn spare_readable(
    spares: &[Option<SpareSocket>],
) -> io::Result<(u8, tokio::io::unix::AsyncFdReadyGuard<'_, UdpSocket>)> {
    std::future::poll_fn(|cx| {
        for (k, spare) in (0..=u8::MAX).zip(spares) {
            if let Some(spare) = spare {
                if let std::task::Poll::Ready(ready) = spare.fd.poll_read_ready(cx) {
                    return std::task::Poll::Ready(ready.map(|guard| (k, guard)));
                }
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Flushes the send batch, waiting for the socket to drain when the kernel pushes back.
async fn flush_batch(send: &mut SendBatch, io: &Io) -> io::Result<()> {
    while !send.is_empty() {
        match send.flush(io.udp.get_ref()) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                io.udp.writable().await?.clear_ready();
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
