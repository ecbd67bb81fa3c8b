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
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};

use super::control::{Command, InfoReply, PingReply};
use super::tun_writer::TunWriter;
use crate::addr::NodeAddr;
use crate::identity::NodeKey;
use crate::io::offload::{segments, VirtioNetHdr};
use crate::io::tun::{TunDevice, OFFLOAD_READ_LEN};
use crate::io::udp::{RecvBatch, SendBatch, UdpSocket, MAX_BATCH};
use crate::node::{Event, NetOutput, Node, PathKind, TunOutput};

/// Largest datagram the node sends or accepts: the largest TUN packet plus WireGuard overhead.
const SLOT: usize = 65535;
/// How long to sleep when the node has no timer (it always has one once started).
const IDLE: Duration = Duration::from_secs(1);
/// TUN reads per wake-up before the loop turns to the socket again (fairness).
const TUN_READS_PER_WAKE: usize = 64;

/// What the loop reports in `info` besides the node's own state, and where it pins the
/// rendezvous key it learns.
pub struct Facts {
    pub interface: String,
    pub mtu: u32,
    pub listen_port: u16,
    pub rendezvous_pin: Option<super::pin::RendezvousPin>,
}

pub struct DataPlane {
    io: Io,
    core: Core,
}

/// The descriptors, kept apart from the state so a readiness guard on one can be held while
/// the state is changed.
struct Io {
    tun: AsyncFd<TunDevice>,
    udp: AsyncFd<UdpSocket>,
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
}

impl DataPlane {
    pub fn new(node: Node, tun: TunDevice, udp: UdpSocket, facts: Facts) -> io::Result<DataPlane> {
        // Every read and write carries a virtio-net header: the packet path is written for it.
        if !tun.vnet_hdr() {
            return Err(io::Error::other(
                "the TUN device has no virtio-net header (IFF_VNET_HDR)",
            ));
        }
        // SAFETY: TunDevice and UdpSocket own their descriptors, keep them open for their whole
        // lifetime and always return the same one from as_raw_fd.
        let io = unsafe {
            Io {
                tun: AsyncFd::register(tun).map_err(io::Error::from)?,
                udp: AsyncFd::register(udp).map_err(io::Error::from)?,
            }
        };
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
        };
        Ok(DataPlane { io, core })
    }

    /// Runs until `shutdown` resolves or an I/O error that cannot be survived.
    pub async fn run(
        self,
        mut commands: mpsc::Receiver<Command>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> io::Result<()> {
        let DataPlane { io, mut core } = self;
        tokio::pin!(shutdown);
        core.node.handle_timeout(Instant::now());
        loop {
            let wake = core
                .node
                .poll_timeout()
                .map_or_else(|| Instant::now() + IDLE, |(t, _)| t);
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                guard = io.udp.readable() => {
                    let mut guard = guard?;
                    match core.recv.recv(io.udp.get_ref()) {
                        Ok(n) => core.on_datagrams(&io, n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => guard.clear_ready(),
                        Err(e) => tracing::debug!("udp receive: {e}"),
                    }
                }
                guard = io.tun.readable() => {
                    let mut guard = guard?;
                    if core.on_tun_readable(&io).await? {
                        guard.clear_ready();
                    }
                }
                () = tokio::time::sleep_until(wake.into()) => core.node.handle_timeout(Instant::now()),
                Some(command) = commands.recv() => core.on_command(command),
            }
            core.drain_node(&io).await?;
        }
    }
}

impl Core {
    /// Decrypts a received batch; plaintext goes to the TUN, replies to the send batch.
    fn on_datagrams(&mut self, io: &Io, count: usize) {
        let now = Instant::now();
        let tun = io.tun.get_ref();
        for i in 0..count {
            let (from, datagram) = self.recv.get(i);
            match self
                .node
                .handle_datagram(from, datagram, now, &mut self.out_buf)
            {
                NetOutput::Tun(packet) => self.writer.push(tun, packet),
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
        self.writer.flush(tun);
    }

    /// Reads packets from the TUN and encrypts each straight into a send slot, cutting TCP
    /// super-segments into packets first. When the send batch fills up
    /// it is flushed, waiting for the socket if the kernel pushes back. Returns true when the
    /// TUN has nothing more to read.
    async fn on_tun_readable(&mut self, io: &Io) -> io::Result<bool> {
        let now = Instant::now();
        let tun = io.tun.get_ref();
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

    fn on_command(&mut self, command: Command) {
        match command {
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
        }
    }

    fn info(&self) -> InfoReply {
        let now = Instant::now();
        let addr = self.node.addr();
        let net = self.node.net_status(now);
        let mut drops = self.node.counters().to_json();
        drops.insert("tun_write_failed".into(), self.writer.errors().into());
        drops.insert("tun_read_malformed".into(), self.offload_errors.into());
        drops.insert(
            "udp_send_failed".into(),
            (self.send.send_errors() + self.send_dropped).into(),
        );
        InfoReply {
            address: addr.to_ipv6().to_string(),
            node: addr.to_string(),
            public_key: self.node.key().to_string(),
            hostname: None,
            interface: self.facts.interface.clone(),
            mtu: self.facts.mtu,
            listen_port: self.facts.listen_port,
            endpoint: net.endpoint,
            nat: net.rendezvous.is_some().then_some(net.nat),
            peers: self.node.peers(now).count(),
            drops,
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }

    fn start_ping(&mut self, peer: &str) -> Result<oneshot::Receiver<PingReply>, String> {
        let addr = resolve_peer(peer)?;
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

/// A peer named by text address, fd70 address or public key.
pub fn resolve_peer(name: &str) -> Result<NodeAddr, String> {
    if let Ok(key) = name.parse::<NodeKey>() {
        return Ok(key.address());
    }
    name.parse::<NodeAddr>().map_err(|_| {
        format!("`{name}` is not a peer: give a node address (xxxx.xxxx.xxxx), an fd70:: address or a public key")
    })
}
