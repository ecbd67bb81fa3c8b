//! The userspace network stack (`pilotd up --userspace`): the node's fd70 address lives in a
//! smoltcp interface instead of a TUN, so no root and no /dev/net/tun are needed.
//!
//! The data plane owns the [`Stack`] and feeds it exactly as it feeds a TUN: decrypted packets go
//! in through [`Stack::push_packet`], and what the stack sends comes out of [`Stack::pop_packet`]
//! to be encrypted. TCP connections cross into the rest of the daemon as
//! [`tokio::io::DuplexStream`]s: the stack keeps one end of each pair and moves bytes between it
//! and the smoltcp socket's buffers (no copy in between), the task serving the connection (the
//! SOCKS5 proxy, an exposed port, the message service) holds the other. Both ends are bounded,
//! so a slow reader closes the TCP window instead of growing a buffer. When a task reads or
//! writes its end, the stack's waker fires [`Stack::notify`], and the data plane polls the stack.
//!
//! Everything is bounded: connections ([`Limits::max_connections`]), socket buffers, duplex
//! buffers, the packet queues, and how long a peer may leave a connection it opened half-open
//! ([`HANDSHAKE_TIMEOUT`], see `listen.rs`). A limit that is hit is counted and logged, and the
//! connection refused at once (a SOCKS5 error, a TCP reset), never left to stall.

mod device;
mod listen;
mod refuse;

use std::collections::VecDeque;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp::{self, State};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::{oneshot, Notify};

use device::QueueDevice;
use listen::Listener;
pub use listen::HANDSHAKE_TIMEOUT;
pub use refuse::Refusal;

/// How much the stack may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// TCP connections open at once, both directions together (listeners not counted).
    pub max_connections: usize,
    /// Per connection: the receive window the stack offers its peer.
    pub rx_buffer: usize,
    /// Per connection: bytes written by the local side and not yet acknowledged by the peer.
    pub tx_buffer: usize,
    /// Per connection and direction: bytes in the duplex pipe to the serving task.
    pub pipe_buffer: usize,
    /// Packets waiting in each direction between the data plane and the stack.
    pub packet_queue: usize,
    /// Listening sockets kept ready per port (connections accepted in one poll).
    pub backlog: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 128,
            rx_buffer: 256 * 1024,
            tx_buffer: 256 * 1024,
            pipe_buffer: 64 * 1024,
            packet_queue: 1024,
            backlog: 2,
        }
    }
}

/// How long an outgoing connection may take to be established.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Keepalive on established connections, and how long a silent peer is kept.
const KEEPALIVE: Duration = Duration::from_secs(30);
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Ports for outgoing connections.
const EPHEMERAL: std::ops::RangeInclusive<u16> = 49152..=65535;

/// A connection a peer opened to a listening port.
#[derive(Debug)]
pub struct Accepted {
    pub stream: DuplexStream,
    pub remote: SocketAddrV6,
    pub port: u16,
    /// Resets the connection instead of closing it (nothing to forward it to).
    pub refusal: Refusal,
}

/// Why an outgoing connection was not made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("the peer refused the connection (nothing listens on that port)")]
    Refused,
    #[error("the connection was not established within {}s", CONNECT_TIMEOUT.as_secs())]
    TimedOut,
    #[error("the userspace stack is at its limit of {0} connections")]
    Limit(usize),
}

/// Counters for `info` and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StackStats {
    pub connections: usize,
    pub accepted: u64,
    pub connected: u64,
    /// Connections refused because [`Limits::max_connections`] was reached.
    pub limit_refusals: u64,
    /// Packets dropped because a queue between the data plane and the stack was full.
    pub queue_drops: u64,
    /// Connections peers left half-open past [`HANDSHAKE_TIMEOUT`]: reset, slot listening again.
    pub half_open_timeouts: u64,
}

struct Conn {
    handle: SocketHandle,
    /// The stack's end of the pipe to the task serving this connection.
    pipe: DuplexStream,
    /// The task finished writing: FIN sent.
    read_eof: bool,
    /// The peer finished writing and all of it went into the pipe: pipe shut down.
    wrote_eof: bool,
    /// An outgoing connection not yet established: who to tell, and until when to wait.
    connecting: Option<(oneshot::Sender<Result<(), ConnectError>>, Instant)>,
    /// An accepted connection: set when its task refuses it.
    refusal: Option<Refusal>,
}

pub struct Stack {
    addr: Ipv6Addr,
    iface: Interface,
    device: QueueDevice,
    sockets: SocketSet<'static>,
    conns: Vec<Conn>,
    listeners: Vec<Listener>,
    accepted: VecDeque<Accepted>,
    limits: Limits,
    epoch: Instant,
    next_port: u16,
    notify: Arc<Notify>,
    waker: Waker,
    stats: StackStats,
    /// When a limit was last logged (once per 10 s at most).
    last_limit_log: Option<Instant>,
    /// When half-open timeouts were last logged (once per 10 s at most).
    last_half_open_log: Option<Instant>,
}

/// Wakes the data plane when a task reads or writes its end of a pipe.
struct NotifyWaker(Arc<Notify>);

impl Wake for NotifyWaker {
    fn wake(self: Arc<Self>) {
        self.0.notify_one();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.notify_one();
    }
}

impl Stack {
    /// A stack holding `addr` (prefix fd70::/80) with an IP MTU of `mtu`.
    pub fn new(addr: Ipv6Addr, prefix_len: u8, mtu: usize, limits: Limits, seed: u64) -> Stack {
        let epoch = Instant::now();
        let mut device = QueueDevice::new(mtu, limits.packet_queue);
        let mut config = Config::new(HardwareAddress::Ip);
        config.random_seed = seed;
        let mut iface = Interface::new(config, &mut device, smoltcp::time::Instant::ZERO);
        iface.update_ip_addrs(|addrs| {
            // One address: cannot exceed the interface's capacity.
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv6(addr), prefix_len));
        });
        let notify = Arc::new(Notify::new());
        let waker = Waker::from(Arc::new(NotifyWaker(notify.clone())));
        let span = EPHEMERAL.end() - EPHEMERAL.start();
        Stack {
            addr,
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            conns: Vec::new(),
            listeners: Vec::new(),
            accepted: VecDeque::new(),
            limits,
            epoch,
            next_port: EPHEMERAL.start() + (seed % u64::from(span)) as u16,
            notify,
            waker,
            stats: StackStats::default(),
            last_limit_log: None,
            last_half_open_log: None,
        }
    }

    /// Fires when a task has read from or written to its end of a connection.
    pub fn notify(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    pub fn address(&self) -> Ipv6Addr {
        self.addr
    }

    pub fn stats(&self) -> StackStats {
        StackStats {
            connections: self.conns.len(),
            queue_drops: self.device.dropped(),
            ..self.stats
        }
    }

    /// A decrypted packet for the stack. False when it was dropped (queue full).
    pub fn push_packet(&mut self, packet: &[u8]) -> bool {
        self.device.push_rx(packet)
    }

    /// The stack's next packet for the tunnel; give it back with [`Stack::recycle`].
    pub fn pop_packet(&mut self) -> Option<Vec<u8>> {
        self.device.pop_tx()
    }

    pub fn recycle(&mut self, packet: Vec<u8>) {
        self.device.recycle(packet);
    }

    /// The next connection a peer opened to a listening port.
    pub fn take_accepted(&mut self) -> Option<Accepted> {
        self.accepted.pop_front()
    }

    /// Opens a TCP connection to `remote`. The stream is usable once the receiver says `Ok`.
    #[allow(clippy::type_complexity)]
    pub fn connect(
        &mut self,
        remote: SocketAddrV6,
        now: Instant,
    ) -> Result<(DuplexStream, oneshot::Receiver<Result<(), ConnectError>>), ConnectError> {
        if self.open_count() >= self.limits.max_connections {
            self.limit_hit(now, "an outgoing connection");
            return Err(ConnectError::Limit(self.limits.max_connections));
        }
        let local_port = self.free_port();
        // No smoltcp timeout while connecting: the deadline below decides (and tells).
        let mut socket = self.new_socket();
        let endpoint = IpEndpoint::new(IpAddress::Ipv6(*remote.ip()), remote.port());
        if socket
            .connect(self.iface.context(), endpoint, local_port)
            .is_err()
        {
            return Err(ConnectError::Refused);
        }
        let handle = self.sockets.add(socket);
        let (ours, theirs) = tokio::io::duplex(self.limits.pipe_buffer);
        let (tx, rx) = oneshot::channel();
        self.conns.push(Conn {
            handle,
            pipe: ours,
            read_eof: false,
            wrote_eof: false,
            connecting: Some((tx, now + CONNECT_TIMEOUT)),
            refusal: None,
        });
        self.stats.connected += 1;
        self.notify.notify_one();
        Ok((theirs, rx))
    }

    /// Runs the stack: takes in queued packets, moves bytes between sockets and pipes, hands
    /// over accepted connections, and queues what is to be sent.
    pub fn poll(&mut self, now: Instant) {
        let ts = self.timestamp(now);
        self.iface.poll(ts, &mut self.device, &mut self.sockets);
        self.accept(now);
        if self.service(now) {
            // Bytes written into the sockets leave now rather than at the next wake-up.
            self.iface.poll(ts, &mut self.device, &mut self.sockets);
        }
    }

    /// When the stack next needs [`Stack::poll`] without any input.
    pub fn poll_at(&mut self, now: Instant) -> Option<Instant> {
        let ts = self.timestamp(now);
        let smoltcp = self
            .iface
            .poll_at(ts, &self.sockets)
            .map(|at| self.epoch + Duration::from_micros(at.total_micros().max(0) as u64));
        let connect_deadline = self
            .conns
            .iter()
            .filter_map(|c| c.connecting.as_ref().map(|(_, d)| *d))
            .min();
        [smoltcp, connect_deadline, self.half_open_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    fn timestamp(&self, now: Instant) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(
            now.saturating_duration_since(self.epoch).as_micros() as i64
        )
    }

    fn new_socket(&self) -> tcp::Socket<'static> {
        let rx = tcp::SocketBuffer::new(vec![0; self.limits.rx_buffer]);
        let tx = tcp::SocketBuffer::new(vec![0; self.limits.tx_buffer]);
        let mut socket = tcp::Socket::new(rx, tx);
        socket.set_nagle_enabled(false);
        socket
    }

    /// Connections open or being opened, including half-open accepted ones.
    fn open_count(&self) -> usize {
        self.conns.len() + self.half_open_count()
    }

    fn limit_hit(&mut self, now: Instant, what: &str) {
        self.stats.limit_refusals += 1;
        if self
            .last_limit_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
        {
            self.last_limit_log = Some(now);
            tracing::warn!(
                limit = self.limits.max_connections,
                refused = self.stats.limit_refusals,
                "userspace stack: connection limit reached; refusing {what}"
            );
        }
    }

    fn free_port(&mut self) -> u16 {
        loop {
            let port = self.next_port;
            self.next_port = if port == *EPHEMERAL.end() {
                *EPHEMERAL.start()
            } else {
                port + 1
            };
            let busy = self.conns.iter().any(|c| {
                self.sockets
                    .get::<tcp::Socket>(c.handle)
                    .local_endpoint()
                    .is_some_and(|e| e.port == port)
            });
            // At most max_connections ports are busy, far fewer than the range holds.
            if !busy {
                return port;
            }
        }
    }

    /// Moves bytes between every socket and its pipe; closes what is finished. True when
    /// anything was written into a socket (so there may be packets to send).
    fn service(&mut self, now: Instant) -> bool {
        let mut cx = Context::from_waker(&self.waker);
        let mut wrote = false;
        let mut freed = false;
        let mut i = 0;
        while i < self.conns.len() {
            let conn = &mut self.conns[i];
            let socket = self.sockets.get_mut::<tcp::Socket>(conn.handle);
            if let Some((tx, deadline)) = conn.connecting.take() {
                match socket.state() {
                    State::SynSent | State::SynReceived if now < deadline => {
                        conn.connecting = Some((tx, deadline));
                    }
                    State::SynSent | State::SynReceived => {
                        let _ = tx.send(Err(ConnectError::TimedOut));
                        socket.abort();
                    }
                    State::Closed | State::TimeWait => {
                        // A reset before the handshake completed.
                        let _ = tx.send(Err(ConnectError::Refused));
                    }
                    _ => {
                        socket.set_timeout(Some(smol(IDLE_TIMEOUT)));
                        socket.set_keep_alive(Some(smol(KEEPALIVE)));
                        let _ = tx.send(Ok(()));
                    }
                }
            }
            if conn.refusal.as_ref().is_some_and(Refusal::refused) {
                // Checked before the pipe: the task dropped its end right after refusing.
                conn.refusal = None;
                socket.abort();
                // Its RST leaves with this poll, not at the next wake-up.
                wrote = true;
            } else if conn.connecting.is_none() {
                wrote |= pipe_to_socket(conn, socket, &mut cx);
                socket_to_pipe(conn, socket, &mut cx);
            }
            // An aborted socket keeps its peer's endpoint until its RST has gone out at the
            // next poll; only then is it done.
            let done = match socket.state() {
                State::TimeWait => true,
                State::Closed => socket.remote_endpoint().is_none(),
                _ => false,
            };
            if done {
                // The pipe is dropped with the connection: its task reads EOF.
                self.sockets.remove(conn.handle);
                self.conns.swap_remove(i);
                freed = true;
                continue;
            }
            i += 1;
        }
        if freed {
            self.refill_listeners();
        }
        wrote
    }
}

/// Whatever the task wrote goes straight into the socket's send buffer. True if anything did.
fn pipe_to_socket(conn: &mut Conn, socket: &mut tcp::Socket, cx: &mut Context<'_>) -> bool {
    let mut wrote = false;
    while !conn.read_eof && socket.can_send() {
        let read = socket.send(|buf| {
            if buf.is_empty() {
                return (0, None);
            }
            let mut rb = ReadBuf::new(buf);
            match Pin::new(&mut conn.pipe).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    (n, Some(n))
                }
                Poll::Ready(Err(_)) => (0, Some(0)),
                Poll::Pending => (0, None),
            }
        });
        match read {
            Ok(Some(0)) => {
                conn.read_eof = true;
                socket.close();
            }
            Ok(Some(_)) => wrote = true,
            Ok(None) | Err(_) => break,
        }
    }
    wrote
}

/// What the peer sent goes from the socket's receive buffer into the pipe; a finished peer
/// shuts the pipe down once all of it is through.
fn socket_to_pipe(conn: &mut Conn, socket: &mut tcp::Socket, cx: &mut Context<'_>) {
    while socket.can_recv() {
        let written = socket.recv(|buf| match Pin::new(&mut conn.pipe).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => (n, Ok(n)),
            Poll::Ready(Err(_)) => (0, Err(())),
            Poll::Pending => (0, Ok(0)),
        });
        match written {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(_)) => {}
            Ok(Err(())) => {
                // The task is gone: nobody will read what the peer sends.
                socket.abort();
                return;
            }
        }
    }
    let peer_done = matches!(
        socket.state(),
        State::CloseWait | State::LastAck | State::Closing | State::TimeWait | State::Closed
    );
    if peer_done
        && !conn.wrote_eof
        && !socket.can_recv()
        && Pin::new(&mut conn.pipe).poll_shutdown(cx).is_ready()
    {
        conn.wrote_eof = true;
    }
}

/// The same duration in smoltcp's type.
fn smol(d: Duration) -> smoltcp::time::Duration {
    smoltcp::time::Duration::from_micros(d.as_micros() as u64)
}

#[cfg(test)]
mod tests;
