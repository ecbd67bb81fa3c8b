//! The data-plane loop: feeds the sans-IO [`Node`] from the TUN, the UDP socket, the clock and
//! the control socket, and carries out what it asks.
//!
//! One task owns the node, so nothing is locked. Work is done in batches: one `recvmmsg` brings
//! up to [`MAX_BATCH`] datagrams, packets read from the TUN are encrypted straight into the slots
//! of a send batch, and one `sendmmsg` sends them. Buffers are allocated once, at start.

use std::collections::BTreeMap;
use std::io;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};

use super::control::{Command, InfoReply, PingReply};
use crate::addr::NodeAddr;
use crate::identity::NodeKey;
use crate::io::tun::TunDevice;
use crate::io::udp::{RecvBatch, SendBatch, UdpSocket, MAX_BATCH};
use crate::node::{Event, NetOutput, Node, PathKind, TunOutput};

/// Largest datagram the node sends or accepts: the largest TUN packet plus WireGuard overhead.
const SLOT: usize = 65535;
/// How long to sleep when the node has no timer (it always has one once started).
const IDLE: Duration = Duration::from_secs(1);

/// What the loop reports in `info` besides the node's own state.
pub struct Facts {
    pub interface: String,
    pub mtu: u32,
    pub listen_port: u16,
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
    /// One TUN packet at a time is read here, then encrypted into a send slot.
    tun_buf: Box<[u8]>,
    /// Decrypted packets and control-path outputs are written here.
    out_buf: Box<[u8]>,
    ping_seq: u16,
    /// Pings in flight by sequence number (unique within this daemon).
    ping_waiters: BTreeMap<u16, oneshot::Sender<PingReply>>,
    tun_write_errors: u64,
    /// Replies dropped because the send batch stayed full.
    send_dropped: u64,
}

impl DataPlane {
    pub fn new(node: Node, tun: TunDevice, udp: UdpSocket, facts: Facts) -> io::Result<DataPlane> {
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
            tun_buf: vec![0; SLOT].into_boxed_slice(),
            out_buf: vec![0; SLOT].into_boxed_slice(),
            ping_seq: 0,
            ping_waiters: BTreeMap::new(),
            tun_write_errors: 0,
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
                    if core.on_tun_readable(&io) {
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
        for i in 0..count {
            let (from, datagram) = self.recv.get(i);
            match self
                .node
                .handle_datagram(from, datagram, now, &mut self.out_buf)
            {
                NetOutput::Tun(packet) => {
                    if io.tun.get_ref().send(packet).is_err() {
                        self.tun_write_errors += 1;
                    }
                }
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
    }

    /// Reads up to a batch of packets from the TUN and encrypts each straight into a send slot.
    /// Returns true when the TUN has nothing more to read. Stops early, leaving packets in the
    /// kernel's queue, when the send batch is full: `drain_node` then waits for the socket.
    fn on_tun_readable(&mut self, io: &Io) -> bool {
        let now = Instant::now();
        while !self.send.is_full() {
            let n = match io.tun.get_ref().recv(&mut self.tun_buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) => {
                    tracing::debug!("tun read: {e}");
                    return true;
                }
            };
            let slot = self.send.next_slot();
            match self.node.handle_tun_packet(&self.tun_buf[..n], now, slot) {
                TunOutput::Send(t) => {
                    let (to, len) = (t.to, t.payload.len());
                    self.send.commit(len, to);
                }
                TunOutput::Reply(packet) => {
                    if io.tun.get_ref().send(packet).is_err() {
                        self.tun_write_errors += 1;
                    }
                }
                TunOutput::Nothing => {}
            }
        }
        false
    }

    /// Sends everything the node and the batches hold, and delivers the node's events.
    async fn drain_node(&mut self, io: &Io) -> io::Result<()> {
        let now = Instant::now();
        loop {
            if self.send.is_full() {
                self.flush(io).await?;
            }
            let Some(t) = self.node.poll_transmit(now, &mut self.out_buf) else {
                break;
            };
            self.send.push(t.payload, t.to);
        }
        self.flush(io).await?;
        while let Some(event) = self.node.poll_event() {
            match event {
                Event::PingReply { peer, seq, rtt } => {
                    if let Some(waiter) = self.ping_waiters.remove(&seq) {
                        let addr = peer.address();
                        let path = self
                            .node
                            .peer_status(addr)
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
            }
        }
        Ok(())
    }

    /// Flushes the send batch, waiting for the socket to drain when the kernel pushes back.
    async fn flush(&mut self, io: &Io) -> io::Result<()> {
        while !self.send.is_empty() {
            match self.send.flush(io.udp.get_ref()) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    io.udp.writable().await?.clear_ready();
                }
                Err(e) => return Err(e),
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
                let _ = reply.send(self.node.peers().collect());
            }
            Command::Ping { peer, reply } => {
                let _ = reply.send(self.start_ping(&peer));
            }
        }
    }

    fn info(&self) -> InfoReply {
        let addr = self.node.addr();
        let mut drops = self.node.counters().to_json();
        drops.insert("tun_write_failed".into(), self.tun_write_errors.into());
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
            endpoint: None,
            nat: None,
            peers: self.node.peers().count(),
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
            .ping(addr, self.ping_seq)
            .map_err(|e| e.to_string())?;
        let (tx, rx) = oneshot::channel();
        self.ping_waiters.insert(self.ping_seq, tx);
        Ok(rx)
    }
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
