//! Listening ports: [`Limits::backlog`](super::Limits::backlog) smoltcp sockets kept
//! listening per port, handed over as connections once a peer completes the handshake, and
//! taken back when it never does.
//!
//! A slot in `SynReceived` answers one peer and no one else, and smoltcp, with no timeout set,
//! resends its SYN-ACK forever. A peer that sends SYNs and never completes them would take every
//! slot of a port (the message service, an exposed port) until restart. So each slot remembers
//! when it went half-open, and after [`HANDSHAKE_TIMEOUT`] it is reset (the peer gets an RST)
//! and listens again; [`StackStats::half_open_timeouts`](super::StackStats::half_open_timeouts)
//! counts it.

use std::net::SocketAddrV6;
use std::time::{Duration, Instant};

use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{self, State};
use smoltcp::wire::{IpAddress, IpEndpoint};

use super::{smol, Accepted, Conn, Refusal, Stack, IDLE_TIMEOUT, KEEPALIVE};

/// How long a connection a peer opened may stay half-open (SYN received, handshake not
/// completed) before its listening slot is taken back. A handshake across the overlay takes
/// one round trip; this leaves room for several SYN-ACK retransmissions.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The sockets listening on one port.
pub(super) struct Listener {
    pub(super) port: u16,
    pub(super) slots: Vec<Slot>,
}

/// One listening socket, and since when it has been half-open.
pub(super) struct Slot {
    pub(super) handle: SocketHandle,
    half_open_since: Option<Instant>,
}

impl Stack {
    /// Accept connections to `port` from now on.
    pub fn listen(&mut self, port: u16) {
        if !self.listeners.iter().any(|l| l.port == port) {
            self.listeners.push(Listener {
                port,
                slots: Vec::new(),
            });
        }
        self.refill_listeners();
    }

    /// Keeps `backlog` sockets listening on every port while connections are below the limit.
    pub(super) fn refill_listeners(&mut self) {
        for i in 0..self.listeners.len() {
            while self.listeners[i].slots.len() < self.limits.backlog
                && self.open_count() < self.limits.max_connections
            {
                let mut socket = self.new_socket();
                // Cannot fail: the port is non-zero and the socket fresh.
                if socket.listen(self.listeners[i].port).is_err() {
                    break;
                }
                let handle = self.sockets.add(socket);
                self.listeners[i].slots.push(Slot {
                    handle,
                    half_open_since: None,
                });
            }
        }
    }

    /// Listening sockets that are not listening: a handshake in progress.
    pub(super) fn half_open_count(&self) -> usize {
        self.listeners
            .iter()
            .flat_map(|l| &l.slots)
            .filter(|s| self.sockets.get::<tcp::Socket>(s.handle).state() != State::Listen)
            .count()
    }

    /// When the oldest half-open slot is to be taken back.
    pub(super) fn half_open_deadline(&self) -> Option<Instant> {
        self.listeners
            .iter()
            .flat_map(|l| &l.slots)
            .filter_map(|s| s.half_open_since)
            .min()
            .map(|since| since + HANDSHAKE_TIMEOUT)
    }

    /// Moves listening sockets that were connected to the connection table; resets those
    /// half-open for too long and listens again on those that closed.
    pub(super) fn accept(&mut self, now: Instant) {
        let mut changed = false;
        let mut timed_out = 0;
        for l in 0..self.listeners.len() {
            let port = self.listeners[l].port;
            let mut i = 0;
            while i < self.listeners[l].slots.len() {
                let slot = &mut self.listeners[l].slots[i];
                let handle = slot.handle;
                let socket = self.sockets.get_mut::<tcp::Socket>(handle);
                match socket.state() {
                    State::Listen => {
                        // Also after an RST in SynReceived, which smoltcp turns back into Listen.
                        slot.half_open_since = None;
                        i += 1;
                    }
                    State::SynReceived => {
                        let since = *slot.half_open_since.get_or_insert(now);
                        if now.saturating_duration_since(since) >= HANDSHAKE_TIMEOUT {
                            // The RST leaves at the next poll (smoltcp asks for one at once);
                            // the slot listens again once it has, just below.
                            socket.abort();
                            slot.half_open_since = None;
                            timed_out += 1;
                        }
                        i += 1;
                    }
                    State::Closed => {
                        // A handshake that failed or was timed out: listen again.
                        let _ = socket.listen(port);
                        slot.half_open_since = None;
                        i += 1;
                    }
                    _ => {
                        let remote = socket.remote_endpoint();
                        socket.set_keep_alive(Some(smol(KEEPALIVE)));
                        socket.set_timeout(Some(smol(IDLE_TIMEOUT)));
                        self.listeners[l].slots.swap_remove(i);
                        changed = true;
                        let Some(IpEndpoint {
                            addr: IpAddress::Ipv6(ip),
                            port: remote_port,
                        }) = remote
                        else {
                            self.sockets.remove(handle);
                            continue;
                        };
                        self.hand_over(handle, SocketAddrV6::new(ip, remote_port, 0, 0), port);
                    }
                }
            }
        }
        if timed_out > 0 {
            self.half_open_timed_out(now, timed_out);
        }
        if changed {
            self.refill_listeners();
            let missing = self
                .listeners
                .iter()
                .any(|l| l.slots.len() < self.limits.backlog);
            if missing {
                self.limit_hit(now, "new incoming connections until one closes");
            }
        }
    }

    /// An established connection a peer opened: into the table, and out to the serving task.
    fn hand_over(&mut self, handle: SocketHandle, remote: SocketAddrV6, port: u16) {
        let (ours, theirs) = tokio::io::duplex(self.limits.pipe_buffer);
        let refusal = Refusal::new(self.notify.clone());
        self.conns.push(Conn {
            handle,
            pipe: ours,
            read_eof: false,
            wrote_eof: false,
            connecting: None,
            refusal: Some(refusal.clone()),
        });
        self.stats.accepted += 1;
        self.accepted.push_back(Accepted {
            stream: theirs,
            remote,
            port,
            refusal,
        });
    }

    fn half_open_timed_out(&mut self, now: Instant, n: u64) {
        self.stats.half_open_timeouts += n;
        if self
            .last_half_open_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
        {
            self.last_half_open_log = Some(now);
            tracing::warn!(
                timeout_secs = HANDSHAKE_TIMEOUT.as_secs(),
                total = self.stats.half_open_timeouts,
                "userspace stack: a peer left connections half-open (SYN never completed); \
                 reset them and listening again"
            );
        }
    }
}
