//! The data-plane loop: feeds the sans-IO [`Node`] from the TUN, the UDP socket, the clock and
//! the control socket, and carries out what it asks.
//!
//! One task owns the node, so nothing is locked. Work is done in batches: one `recvmmsg` brings
//! up to [`MAX_BATCH`] datagrams (more with UDP GRO), packets read from the TUN are encrypted
//! straight into the slots of a send batch, and one `sendmmsg` sends them. With TUN offloads the
//! kernel hands over TCP super-segments of up to 64 KB, cut here into MTU-sized packets, and
//! decrypted TCP segments are coalesced again before they are written back ([`TunWriter`]).
//! Buffers are allocated once, at start.

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot, Notify};

use super::control::{
    Command, HandshakeReply, InfoReply, PeerRef, PingReply, RequestInfo, TrustReply, TrustVerb,
    TrustedPeer,
};
use super::control::{InboxReply, OpenedStream, ReleasedName};
use super::inbox::Inbox;
use super::services::Incoming;
use super::socks5::{Reply, Target};
use super::trust_file::{SaveSchedule, TrustFile};
use super::tun_writer::TunWriter;
use crate::addr::{Hostname, NodeAddr};
use crate::identity::NodeKey;
use crate::io::offload::{segments, VirtioNetHdr};
use crate::io::stack::Stack;
use crate::io::tun::{TunDevice, OFFLOAD_READ_LEN};
use crate::io::udp::{RecvBatch, SendBatch, UdpSocket, MAX_BATCH};
use crate::node::{Event, HandshakeOutcome, NetOutput, Node, PathKind, ReleaseOutcome, TunOutput};
use crate::wire::control::Query;
use crate::wire::printable::printable;

mod rendezvous_watch;
mod reports;

/// Largest datagram the node sends or accepts: the largest TUN packet plus WireGuard overhead.
const SLOT: usize = 65535;
/// How long to sleep when the node has no timer (it always has one once started).
const IDLE: Duration = Duration::from_secs(1);
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
    pub hosts_file: Option<super::names::HostsFile>,
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
}

/// The descriptors, kept apart from the state so a readiness guard on one can be held while
/// the state is changed.
struct Io {
    /// Kernel mode's TUN; `None` in userspace mode, where [`Core::stack`] takes its place.
    tun: Option<AsyncFd<TunDevice>>,
    udp: AsyncFd<UdpSocket>,
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
    send: SendBatch,
    /// One TUN read (a packet, or a TCP super-segment with offloads) lands here.
    tun_buf: Box<[u8]>,
    /// One segment cut from a super-segment, before it is encrypted into a send slot.
    seg_buf: Box<[u8]>,
    /// Decrypted packets and control-path outputs are written here.
    out_buf: Box<[u8]>,
    writer: TunWriter,
    /// TUN reads that could not be parsed or segmented.
    offload_errors: u64,
    ping_seq: u16,
    /// Pings in flight by sequence number (unique within this daemon).
    ping_waiters: BTreeMap<u16, oneshot::Sender<PingReply>>,
    /// Replies dropped because the send batch stayed full.
    send_dropped: u64,
    /// `resolve` commands waiting for the rendezvous, by lookup id.
    resolve_waiters: BTreeMap<u64, (String, oneshot::Sender<Result<PeerRef, String>>)>,
    /// Saving the trust state failed: do not try again before this.
    saves: SaveSchedule,
    rendezvous_watch: rendezvous_watch::RendezvousWatch,
    /// Why the daemon must stop (a refused hostname).
    fatal: Option<String>,
    /// Userspace mode: the stack holding the node's address, and where the connections peers
    /// open to it are served.
    stack: Option<(Box<Stack>, mpsc::Sender<Incoming>)>,
    /// Received messages (listed and cleared through the control socket).
    inbox: Arc<Mutex<Inbox>>,
    /// The `release_name` command waiting for the rendezvous.
    release_waiter: Option<oneshot::Sender<Result<ReleasedName, String>>>,
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
        let io = Io { tun, udp };
        let core = Core {
            node,
            facts,
            recv: RecvBatch::new(MAX_BATCH, SLOT),
            send: SendBatch::new(MAX_BATCH, SLOT),
            tun_buf: vec![0; OFFLOAD_READ_LEN].into_boxed_slice(),
            seg_buf: vec![0; SLOT].into_boxed_slice(),
            out_buf: vec![0; SLOT].into_boxed_slice(),
            writer: TunWriter::new(),
            offload_errors: 0,
            ping_seq: 0,
            ping_waiters: BTreeMap::new(),
            send_dropped: 0,
            resolve_waiters: BTreeMap::new(),
            saves: SaveSchedule::new(Instant::now()),
            rendezvous_watch: rendezvous_watch::RendezvousWatch::new(Instant::now()),
            fatal: None,
            stack,
            inbox,
            release_waiter: None,
        };
        Ok(DataPlane { io, core })
    }

    /// Runs until `shutdown` resolves, an I/O error that cannot be survived, or a fatal
    /// refusal (a hostname another node holds), which is returned as the daemon's error as it
    /// stands: it is the configuration that is wrong, not the data plane.
    pub async fn run(
        self,
        mut commands: mpsc::Receiver<Command>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let DataPlane { io, mut core } = self;
        tokio::pin!(shutdown);
        core.node.handle_timeout(Instant::now());
        core.update_hosts_file();
        let result = core.run(&io, &mut commands, shutdown).await;
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
        io: &Io,
        commands: &mut mpsc::Receiver<Command>,
        mut shutdown: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    ) -> io::Result<()> {
        loop {
            let now = Instant::now();
            let mut wake = self
                .node
                .poll_timeout()
                .map_or_else(|| now + IDLE, |(t, _)| t);
            if self.node.trust_changed() {
                wake = wake.min(self.saves.next());
            }
            let mut stack_notify = None;
            if let Some((stack, _)) = &mut self.stack {
                if let Some(at) = stack.poll_at(now) {
                    wake = wake.min(at);
                }
                stack_notify = Some(stack.notify());
            }
            tokio::select! {
                () = &mut shutdown => {
                    // A change still waiting for its turn to be written is written now.
                    self.write_trust(Instant::now());
                    return Ok(());
                }
                guard = io.udp.readable() => {
                    let mut guard = guard?;
                    match self.recv.recv(io.udp.get_ref()) {
                        Ok(n) => self.on_datagrams(io, n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                        Err(e) => tracing::debug!("udp receive: {e}"),
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
            }
            self.drain_node(io).await?;
            if self.fatal.is_some() {
                return Ok(());
            }
        }
    }

    /// Decrypts a received batch; plaintext goes to the TUN, replies to the send batch.
    fn on_datagrams(&mut self, io: &Io, count: usize) {
        let now = Instant::now();
        let tun = io.tun.as_ref().map(AsyncFd::get_ref);
        for i in 0..count {
            let (from, datagram) = self.recv.get(i);
            match self
                .node
                .handle_datagram(from, datagram, now, &mut self.out_buf)
            {
                NetOutput::Tun(packet) => match (tun, &mut self.stack) {
                    (Some(tun), _) => self.writer.push(tun, packet),
                    (None, Some((stack, _))) => {
                        stack.push_packet(packet);
                    }
                    (None, None) => {}
                },
                NetOutput::Send(t) => {
                    // Replies (handshake responses, cookies) are rare; if the socket is backed
                    // up so far that the batch is still full, WireGuard retries them anyway.
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
        if let Some(tun) = tun {
            self.writer.flush(tun);
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
                if self.send.is_full() {
                    flush_batch(&mut self.send, io).await?;
                }
                match segs.next_into(&mut self.seg_buf) {
                    Ok(Some(len)) => {
                        let packet = &self.seg_buf[..len];
                        encrypt(
                            &mut self.node,
                            &mut self.send,
                            &mut self.writer,
                            tun,
                            packet,
                            now,
                        );
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
        self.run_stack(io, now).await?;
        loop {
            if self.send.is_full() {
                flush_batch(&mut self.send, io).await?;
            }
            let Some(t) = self.node.poll_transmit(now, &mut self.out_buf) else {
                break;
            };
            self.send.push(t.payload, t.to);
        }
        flush_batch(&mut self.send, io).await?;
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
                                .ok_or_else(|| match blame {
                                    Some(blame) => format!("cannot look up `{name}`: {blame}"),
                                    None => {
                                        format!("no node `{name}` is registered at the rendezvous")
                                    }
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
        let Some((mut stack, incoming)) = self.stack.take() else {
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
            if self.send.is_full() {
                result = flush_batch(&mut self.send, io).await;
                if result.is_err() {
                    break;
                }
            }
            match self
                .node
                .handle_tun_packet(&packet, now, self.send.next_slot())
            {
                TunOutput::Send(t) => {
                    let (to, len) = (t.to, t.payload.len());
                    self.send.commit(len, to);
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
        self.stack = Some((stack, incoming));
        result
    }

    /// The trusted peer at `ip`, as the message service names senders.
    fn sender_of(&self, ip: Ipv6Addr) -> Option<PeerRef> {
        let key = self.trusted_peer_at(NodeAddr::from_ipv6(ip)?)?;
        Some(self.peer_ref(key, None))
    }

    /// The key of the peer at `addr`, if packets may pass with it.
    fn trusted_peer_at(&self, addr: NodeAddr) -> Option<NodeKey> {
        let key = self.node.peer_keys().find(|k| k.address() == addr)?;
        self.node.is_trusted(&key).then_some(key)
    }

    /// Userspace mode: a TCP connection to a trusted peer through the stack, for the SOCKS5
    /// proxy. The error carries the SOCKS5 reply that says why not.
    fn open_stream(&mut self, target: Target) -> Result<OpenedStream, (Reply, String)> {
        let (ip, port) = match target {
            Target::Ip(SocketAddr::V6(sa)) => (*sa.ip(), sa.port()),
            Target::Ip(SocketAddr::V4(sa)) => {
                return Err((
                    Reply::AddressTypeNotSupported,
                    format!("{sa}: only overlay (fd70::) addresses are reachable through this proxy"),
                ))
            }
            Target::Name(name, port) => match self.resolve_local(&name) {
                Ok(Ok(key)) => (key.address().to_ipv6(), port),
                Ok(Err(_)) => {
                    return Err((
                        Reply::HostUnreachable,
                        format!("`{name}` is not a peer this node knows (trust it first: pilotctl handshake)"),
                    ))
                }
                Err(e) => return Err((Reply::HostUnreachable, e)),
            },
        };
        let Some(addr) = NodeAddr::from_ipv6(ip) else {
            return Err((
                Reply::NetworkUnreachable,
                format!("{ip} is not an overlay address (fd70::/80)"),
            ));
        };
        if self.trusted_peer_at(addr).is_none() {
            return Err((
                Reply::NotAllowed,
                format!("{addr} is not a trusted peer of this node"),
            ));
        }
        let Some((stack, _)) = &mut self.stack else {
            return Err((Reply::GeneralFailure, "not in userspace mode".into()));
        };
        stack
            .connect(SocketAddrV6::new(ip, port, 0, 0), Instant::now())
            .map_err(|e| (Reply::GeneralFailure, e.to_string()))
    }

    /// Lists (and clears) the inbox off the loop: it reads files.
    fn inbox(&self, clear: bool, reply: oneshot::Sender<Result<InboxReply, String>>) {
        let inbox = self.inbox.clone();
        tokio::task::spawn_blocking(move || {
            let Ok(mut inbox) = inbox.lock() else {
                let _ = reply.send(Err("the inbox is unavailable".into()));
                return;
            };
            let messages = inbox.list();
            let cleared = if clear {
                match inbox.clear() {
                    Ok(n) => Some(n),
                    Err(e) => {
                        let _ = reply.send(Err(format!("clearing the inbox: {e}")));
                        return;
                    }
                }
            } else {
                None
            };
            let _ = reply.send(Ok(InboxReply { messages, cleared }));
        });
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::OpenStream { target, reply } => {
                let _ = reply.send(self.open_stream(target));
            }
            Command::SenderOf { ip, reply } => {
                let _ = reply.send(self.sender_of(ip));
            }
            Command::Inbox { clear, reply } => self.inbox(clear, reply),
            Command::ReleaseName(reply) => self.release_name(reply),
            Command::Info(reply) => {
                let _ = reply.send(self.info());
            }
            Command::Peers(reply) => {
                let _ = reply.send(self.node.peers(Instant::now()).collect());
            }
            Command::Ping { peer, reply } => {
                let _ = reply.send(self.start_ping(&peer));
            }
            Command::NetCheck(reply) => {
                let _ = reply.send(self.node.net_status(Instant::now()));
            }
            Command::Resolve { name, reply } => self.resolve(name, reply),
            Command::Trust { verb, peer, reply } => {
                let _ = reply.send(self.trust_verb(verb, peer));
            }
            Command::TrustList(reply) => {
                let _ = reply.send(self.trust_list());
            }
            Command::Pending(reply) => {
                let now_ms = self.node.wall_ms(Instant::now());
                let pending = self
                    .node
                    .trust()
                    .incoming(now_ms)
                    .map(|i| RequestInfo {
                        peer: self.peer_ref(i.request.requester, i.from_name.clone()),
                        justification: i.request.justification.clone(),
                        issued_ms: i.request.issued_ms,
                        status: "pending".into(),
                        reason: None,
                    })
                    .collect();
                let _ = reply.send(pending);
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Metrics(reply) => {
                let _ = reply.send(self.metrics());
            }
        }
    }

    /// Saves the trust state if it changed, then lets the node acknowledge the deliveries it
    /// holds. On failure the deliveries stay unacknowledged (the rendezvous sends them again).
    fn save_trust(&mut self, now: Instant) {
        if self.saves.due(now, self.node.trust_urgent()) {
            self.write_trust(now);
        }
    }

    /// Writes the trust state if it changed, whatever the schedule says.
    fn write_trust(&mut self, now: Instant) {
        let Some(state) = self.node.take_trust_state() else {
            return;
        };
        match self.facts.trust_file.save(&state) {
            Ok(()) => {
                if let Some(failures) = self.saves.saved(now) {
                    tracing::info!("trust state saved again after {failures} failed attempt(s)");
                }
                self.node.trust_saved(now);
                self.update_hosts_file();
            }
            Err(e) => {
                let error = format!("{e:#}");
                if self.saves.failed(error.clone(), now) {
                    tracing::error!(
                        "cannot save the trust state: {error}; retrying with back-off \
                         (deliveries stay unacknowledged meanwhile)"
                    );
                }
                self.node.trust_save_failed();
            }
        }
    }

    /// Rewrites the hosts file's block when there is one (unchanged content is not rewritten).
    fn update_hosts_file(&self) {
        if let Some(hosts) = &self.facts.hosts_file {
            if let Err(e) = hosts.write(&self.node.names()) {
                tracing::warn!("updating {}: {e}", hosts.path().display());
            }
        }
    }

    fn peer_ref(&self, key: NodeKey, hostname: Option<Hostname>) -> PeerRef {
        let addr = key.address();
        let hostname = hostname.or_else(|| self.node.trust().name_of(&key).cloned());
        PeerRef {
            address: addr.to_ipv6().to_string(),
            node: addr.to_string(),
            hostname: hostname.map(|n| n.to_string()),
            public_key: key.to_string(),
        }
    }

    /// Starts releasing this node's hostname; `reply` is answered by [`Self::name_released`].
    fn release_name(&mut self, reply: oneshot::Sender<Result<ReleasedName, String>>) {
        match self.node.release_name(Instant::now()) {
            Ok(name) => {
                tracing::info!("releasing hostname {name} at the rendezvous");
                self.release_waiter = Some(reply);
            }
            Err(e) => {
                let _ = reply.send(Err(e.to_string()));
            }
        }
    }

    fn name_released(&mut self, name: Hostname, outcome: ReleaseOutcome) {
        let answer = match outcome {
            ReleaseOutcome::Released => {
                tracing::info!("hostname {name} released: this node no longer claims it");
                self.update_hosts_file();
                Ok(ReleasedName {
                    hostname: name.to_string(),
                })
            }
            ReleaseOutcome::NotHeld => Err(format!(
                "the rendezvous says this node does not hold `{name}` (another node does, or \
                 nobody); nothing changed"
            )),
            ReleaseOutcome::Unconfirmed => {
                let blame = self.rendezvous_blame(Instant::now());
                let why = blame.map_or_else(String::new, |b| format!(" ({b})"));
                Err(format!(
                    "the rendezvous did not confirm releasing `{name}`{why}; this node claims \
                     it again as before: try again (pilotctl netcheck shows the rendezvous)"
                ))
            }
        };
        if let Err(e) = &answer {
            tracing::warn!("release of hostname {name}: {e}");
        }
        if let Some(waiter) = self.release_waiter.take() {
            let _ = waiter.send(answer);
        }
    }

    /// A peer named by key, address or hostname: from what this node knows, else asked of
    /// the rendezvous (the answer arrives as `Event::LookupDone`).
    fn resolve(&mut self, name: String, reply: oneshot::Sender<Result<PeerRef, String>>) {
        let query = match self.resolve_local(&name) {
            Ok(Ok(key)) => {
                let _ = reply.send(Ok(self.peer_ref(key, None)));
                return;
            }
            Ok(Err(query)) => query,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        match self.node.lookup(query, Instant::now()) {
            Ok(id) => {
                self.resolve_waiters.retain(|_, (_, w)| !w.is_closed());
                self.resolve_waiters.insert(id, (name, reply));
            }
            Err(e) => {
                let _ = reply.send(Err(format!("`{name}` is not known locally, and {e}")));
            }
        }
    }

    /// `Ok(Ok(key))` when known here, `Ok(Err(query))` when the rendezvous must be asked.
    fn resolve_local(&self, name: &str) -> Result<Result<NodeKey, Query>, String> {
        if let Ok(key) = name.parse::<NodeKey>() {
            return Ok(Ok(key));
        }
        if let Ok(addr) = name.parse::<NodeAddr>() {
            return Ok(self
                .known_keys()
                .find(|k| k.address() == addr)
                .ok_or(Query::Address(addr)));
        }
        if let Ok(host) = Hostname::parse_user(name) {
            if self.node.hostname() == Some(&host) {
                return Ok(Ok(self.node.key()));
            }
            if let Some((holder, other)) = self.node.trust().contested(&host) {
                return Err(contested_name(&host, &holder, &other));
            }
            return Ok(self.node.trust().key_named(&host).ok_or(Query::Name(host)));
        }
        Err(format!(
            "`{name}` is not a peer: give a hostname, a node address (xxxx.xxxx.xxxx), an fd70:: address or a public key"
        ))
    }

    /// Every key this node has heard of: peers, requests both ways, approvals, names.
    fn known_keys(&self) -> impl Iterator<Item = NodeKey> + '_ {
        let trust = self.node.trust();
        let now_ms = self.node.wall_ms(Instant::now());
        self.node
            .peer_keys()
            .chain(trust.outgoing().map(|o| o.request.target))
            .chain(trust.incoming(now_ms).map(|i| i.request.requester))
            .chain(trust.approved())
            .chain(trust.names().map(|(k, _)| *k))
    }

    fn trust_verb(&mut self, verb: TrustVerb, peer: NodeKey) -> Result<serde_json::Value, String> {
        let now = Instant::now();
        let peer_ref = self.peer_ref(peer, None);
        let done = match verb {
            TrustVerb::Handshake(justification) => {
                let outcome = self
                    .node
                    .handshake(peer, &justification, now)
                    .map_err(|e| e.to_string())?;
                let reply = HandshakeReply {
                    peer: peer_ref,
                    outcome,
                    already_trusted: outcome == HandshakeOutcome::AlreadyTrusted,
                };
                return Ok(serde_json::to_value(reply).expect("serializes"));
            }
            TrustVerb::Approve => self.node.approve(peer, now),
            TrustVerb::Reject(reason) => self.node.reject(peer, &reason, now),
            TrustVerb::Untrust => self.node.untrust(peer, now),
        };
        done.map_err(|e| e.to_string())?;
        Ok(serde_json::json!({ "peer": peer_ref }))
    }

    fn trust_list(&self) -> TrustReply {
        let trust = self.node.trust();
        let mut reply = TrustReply::default();
        for key in self.node.configured_peers() {
            reply.trusted.push(TrustedPeer {
                peer: self.peer_ref(key, None),
                since_ms: None,
                configured: true,
            });
        }
        for (key, record) in trust.trusted() {
            reply.trusted.push(TrustedPeer {
                peer: self.peer_ref(key, None),
                since_ms: Some(record.issued_ms),
                configured: false,
            });
        }
        for o in trust.outgoing() {
            reply.requested.push(RequestInfo {
                peer: self.peer_ref(o.request.target, None),
                justification: o.request.justification.clone(),
                issued_ms: o.request.issued_ms,
                status: if o.rejected.is_some() {
                    "rejected"
                } else {
                    "pending"
                }
                .into(),
                reason: o.rejected.as_ref().map(|r| r.1.clone()),
            });
        }
        reply.approved = trust.approved().map(|k| self.peer_ref(k, None)).collect();
        reply
    }

    fn info(&self) -> InfoReply {
        let now = Instant::now();
        let addr = self.node.addr();
        let net = self.node.net_status(now);
        let mut drops = self.node.counters().to_json();
        for (reason, n) in self.own_drops() {
            drops.insert(reason.into(), n.into());
        }
        if let Some((stack, _)) = &self.stack {
            // Userspace mode: limits the stack hit (see io::stack::Limits).
            let stats = stack.stats();
            drops.insert("stack_queue_full".into(), stats.queue_drops.into());
            drops.insert("stack_connection_limit".into(), stats.limit_refusals.into());
            drops.insert(
                "stack_half_open_timeout".into(),
                stats.half_open_timeouts.into(),
            );
        }
        InfoReply {
            address: addr.to_ipv6().to_string(),
            node: addr.to_string(),
            public_key: self.node.key().to_string(),
            hostname: self.node.hostname().map(|n| n.to_string()),
            interface: self.facts.interface.clone(),
            mode: match self.stack {
                Some(_) => "userspace",
                None => "kernel",
            }
            .to_owned(),
            socks5: self.facts.socks5.map(|a| a.to_string()),
            expose: self.facts.expose.clone(),
            mtu: self.facts.mtu,
            listen_port: self.facts.listen_port,
            endpoint: net.endpoint,
            endpoint_configured: net.endpoint_configured,
            observed: net.observed,
            nat: net.rendezvous.is_some().then_some(net.nat),
            peers: self.node.peers(now).count(),
            auto_approve: self.node.auto_approve(),
            trusted: self.node.trust().trusted().count(),
            pending: self.node.trust().incoming(self.node.wall_ms(now)).count(),
            drops,
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
        }
    }

    fn start_ping(&mut self, peer: &str) -> Result<oneshot::Receiver<PingReply>, String> {
        let addr = match self.resolve_local(peer)? {
            Ok(key) => key.address(),
            Err(Query::Address(addr)) => addr,
            Err(_) => return Err(format!("`{peer}` is not a trusted peer of this node")),
        };
        // Forget waiters whose pilotctl gave up.
        self.ping_waiters.retain(|_, w| !w.is_closed());
        self.ping_seq = self.ping_seq.wrapping_add(1);
        self.node
            .ping(addr, self.ping_seq, Instant::now())
            .map_err(|e| e.to_string())?;
        let (tx, rx) = oneshot::channel();
        self.ping_waiters.insert(self.ping_seq, tx);
        Ok(rx)
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

/// Encrypts one packet from the TUN into the next send slot. The batch must not be full.
fn encrypt(
    node: &mut Node,
    send: &mut SendBatch,
    writer: &mut TunWriter,
    tun: &TunDevice,
    packet: &[u8],
    now: Instant,
) {
    match node.handle_tun_packet(packet, now, send.next_slot()) {
        TunOutput::Send(t) => {
            let (to, len) = (t.to, t.payload.len());
            send.commit(len, to);
        }
        TunOutput::Reply(reply) => writer.write_now(tun, reply),
        TunOutput::Nothing => {}
    }
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

/// Why a verb refuses a name two keys answer to: the trusted one that holds it here, and the
/// one the rendezvous has since given it to.
fn contested_name(name: &Hostname, holder: &NodeKey, other: &NodeKey) -> String {
    format!(
        "`{name}` is ambiguous: the trusted peer {holder} is known here as {name}, but the \
         rendezvous now gives that name to {other} (the trusted peer's registration may have \
         lapsed and someone else claimed it); name the peer by its key"
    )
}
