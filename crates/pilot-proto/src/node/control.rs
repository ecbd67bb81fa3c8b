//! Control messages on the node: sealing and sending them, checking and dispatching what
//! arrives, and the timer-driven work — registration refresh, NAT measurement, introductions
//! through the rendezvous, punch probes and watching direct paths.

use std::net::SocketAddr;
use std::time::Instant;

use super::path::PunchEnd;
use super::{DropReason, Event, Node, PathKind, Socket};
use crate::wire::control::{Message, RefusalCode, MAX_LAN_ENDPOINTS};
use crate::wire::envelope::{self, EnvelopeError, Opened};

impl Node {
    /// A signed control datagram from `from`, on our `socket`. Anything that does not verify,
    /// is stale or replayed, or comes from someone not entitled to send it is dropped and
    /// counted; nothing changes. A spare socket (see `birthday`) carries path probes only.
    pub(super) fn handle_control(
        &mut self,
        from: SocketAddr,
        socket: Socket,
        datagram: &[u8],
        now: Instant,
    ) {
        let opened = match envelope::open(datagram) {
            Ok(opened) => opened,
            Err(_) => return self.counters.drop(DropReason::BadControl),
        };
        let Ok(message) = Message::decode(opened.kind, opened.body) else {
            return self.counters.drop(DropReason::BadControl);
        };
        let probe = matches!(message, Message::Probe { .. } | Message::ProbeAck { .. });
        if socket != Socket::Main && !probe {
            return self.counters.drop(DropReason::UnexpectedControl);
        }
        // Replay state is kept per sender and only for those entitled to speak to us (our
        // rendezvous, trusted peers): anyone else is dropped before it can touch that state,
        // so a flood from throwaway keys cannot make our rendezvous' answers look replayed.
        if !self.entitled(from, &opened, &message) {
            self.note_wrong_key(from, &opened, &message);
            return self.counters.drop(DropReason::UnexpectedControl);
        }
        // Signed by someone entitled to speak to us: it may move a deadline (the clock's
        // correction does, even for a message then refused as a replay).
        self.touch();
        if message.is_from_rendezvous() {
            self.sync_clock(&opened, &message, now);
        }
        match self.replay.check(&opened, self.clock.unix_ms(now)) {
            Ok(()) => {}
            Err(EnvelopeError::Stale | EnvelopeError::Replay | EnvelopeError::Busy) => {
                return self.counters.drop(DropReason::ReplayedControl)
            }
            Err(_) => return self.counters.drop(DropReason::BadControl),
        }
        let handled = match message {
            m if self.on_failback_answer(from, &opened, &m, now) => true,
            m if m.is_from_rendezvous() => self.on_rendezvous_message(from, &opened, m, now),
            Message::Probe { target } if target == self.key => {
                self.on_probe(from, socket, &opened, now)
            }
            Message::ProbeAck { echo, .. } => self.on_probe_ack(from, socket, &opened, echo, now),
            _ => false,
        };
        if !handled {
            self.counters.drop(DropReason::UnexpectedControl);
        }
    }

    /// A signed answer from the rendezvous' address under another key than the pinned one:
    /// remembered (no state of the protocol changes) so `status` can say why registering
    /// fails, showing both keys. Only answers to our registration count.
    fn note_wrong_key(&mut self, from: SocketAddr, opened: &Opened<'_>, message: &Message) {
        let Some(link) = &mut self.link else {
            return;
        };
        let to_us = matches!(message, Message::Registered { echo, .. } | Message::Challenge { echo, .. }
            if link.pending_register == Some(*echo));
        if to_us && link.is_rendezvous(from) && !link.accepts(&opened.sender) {
            link.wrong_key = Some(opened.sender);
        }
    }

    /// Whether `opened`'s sender may send `message` at all: the rendezvous' messages from our
    /// rendezvous (its address, and its key once pinned), probes from trusted peers.
    fn entitled(&self, from: SocketAddr, opened: &Opened<'_>, message: &Message) -> bool {
        match message {
            m if m.is_from_rendezvous() => {
                let link = self.link.as_ref();
                link.is_some_and(|l| l.is_rendezvous(from) && l.accepts(&opened.sender))
                    || self.failback_entitled(from, opened)
            }
            Message::Probe { .. } | Message::ProbeAck { .. } => self
                .by_key
                .get(&opened.sender)
                .is_some_and(|&i| self.peers[i].trusted),
            _ => false,
        }
    }

    /// The timer-driven control work; runs every tick and right after events that need it.
    pub(super) fn drive(&mut self, now: Instant) {
        self.drive_rendezvous(now);
        self.drive_birthday(now);
        let registered = self.link.as_ref().is_some_and(|l| l.is_registered(now));
        self.drive_trust(now);
        self.drive_release(now);
        for index in 0..self.peers.len() {
            if !self.peers[index].trusted {
                continue;
            }
            if self.peers[index].kick_at.is_some_and(|t| now >= t) {
                self.peers[index].kick_at = None;
                if !self.peers[index].has_session() {
                    self.peers[index].kick_handshake = true;
                    self.schedule(index);
                }
            }
            if super::timers::wireguard_deadline(&self.peers[index], now).is_some_and(|t| now >= t)
            {
                self.peers[index].timers_due = true;
                self.schedule(index);
            }
            if self.keepalive_soon(index, now) {
                let peer = &mut self.peers[index];
                // Tried now, sent or not: the next is an interval away either way.
                peer.keepalive_from = Some(now);
                peer.keepalive_due = true;
                self.schedule(index);
            }
            // Configured peers' paths are measured too (an IPv6 one may be small).
            self.drive_pmtu(index, now);
            if self.peers[index].path.is_fixed() {
                continue;
            }
            if self.peers[index].path.check_direct(now) {
                self.counters.relay_fallbacks += 1;
                self.path_changed(
                    index,
                    if registered {
                        PathKind::Relay
                    } else {
                        PathKind::None
                    },
                    None,
                );
            }
            if registered && self.peers[index].path.wants_connect(now) {
                let target = self.peers[index].key;
                self.send_to_rendezvous(0, &Message::Connect { target }, now);
            }
            self.send_probes(index, now);
        }
    }

    pub(super) fn drive_rendezvous(&mut self, now: Instant) {
        self.drive_stream(now);
        self.drive_failover(now);
        let Some(link) = &self.link else {
            return;
        };
        if link.register_due(now) {
            let register = Message::Register {
                lan: self.candidates(),
                hostname: self.hostname.clone(),
                trust_digest: self.trust.ledger_digest(),
                cookie: link.cookie,
            };
            let nonce = self.send_to_rendezvous(0, &register, now);
            if let Some(link) = &mut self.link {
                link.register_sent(nonce, now);
            }
        }
        if self.link.as_ref().is_some_and(|l| l.nat_probe_due(now)) {
            let nonces = [0, 1].map(|port| self.send_to_rendezvous(port, &Message::NatProbe, now));
            if let Some(link) = &mut self.link {
                link.nat_probes_sent(nonces, now);
            }
        }
    }

    /// The endpoints the rendezvous passes on to peers besides the one it observes: the
    /// configured public endpoint first, then the one the router mapped (so the cap never
    /// cuts them), then the LAN ones.
    pub(super) fn candidates(&self) -> Vec<SocketAddr> {
        let configured = self.link.as_ref().and_then(|l| l.configured);
        let mut out: Vec<SocketAddr> = configured.into_iter().collect();
        for &endpoint in self.mapped.iter().chain(&self.lan) {
            if out.len() < MAX_LAN_ENDPOINTS && !out.contains(&endpoint) {
                out.push(endpoint);
            }
        }
        out
    }

    /// Messages only the rendezvous may send, from one of its ports, signed with its key.
    fn on_rendezvous_message(
        &mut self,
        from: SocketAddr,
        opened: &Opened<'_>,
        message: Message,
        now: Instant,
    ) -> bool {
        let Some(link) = &mut self.link else {
            return false;
        };
        if !link.is_rendezvous(from) || !link.accepts(&opened.sender) {
            return false;
        }
        match message {
            Message::Registered {
                echo,
                observed,
                keepalive_secs,
                resubmit,
            } => {
                let first_key = link.key.is_none();
                let accepted = link.pending_register == Some(echo);
                let over_udp = !link.over_stream;
                let changed =
                    link.on_registered(opened.sender, echo, observed, keepalive_secs, now);
                if first_key && link.key.is_some() {
                    self.events.push_back(Event::RendezvousKey(opened.sender));
                }
                if accepted && over_udp {
                    self.udp_answered();
                }
                if accepted && resubmit {
                    // The rendezvous holds nothing of ours (it is new to us, or restarted
                    // without its database), or its ledger for us differs from ours (and it
                    // is delivering its side): hand it every statement we hold again, so the
                    // pairs it relays and introduces are back within this round trip.
                    self.resubmit_trust(now);
                }
                if changed {
                    // New public endpoint: measure the NAT again and re-introduce every
                    // discovered peer, whose path may have died with the old mapping.
                    self.events.push_back(Event::PublicEndpoint(observed));
                    for peer in &mut self.peers {
                        peer.path.reconnect_now(now);
                    }
                    self.drive(now);
                }
                true
            }
            Message::NatProbeReply { echo, observed, .. } => {
                if !self.on_udp_probe_answer(echo, now) {
                    if let Some(link) = &mut self.link {
                        let before = link.nat;
                        link.on_nat_probe_reply(echo, observed, &self.lan, now);
                        if link.nat != before {
                            self.nat_measured(now);
                        }
                    }
                }
                true
            }
            Message::Challenge { cookie, .. } => {
                // The rendezvous has not seen us receive at this endpoint (a first contact, or
                // our NAT moved us): register again from it, with the cookie.
                if link.on_challenge(cookie, now) {
                    self.drive_rendezvous(now);
                }
                true
            }
            Message::Punch {
                peer,
                peer_nat,
                candidates,
            } => {
                let Some(&index) = self.by_key.get(&peer) else {
                    return false;
                };
                if !self.peers[index].trusted {
                    return false;
                }
                let start = self.peers[index].path.start_punch(&candidates, now);
                self.counters.punched(start);
                self.birthday_introduced(index, peer_nat, &candidates, now);
                self.send_probes(index, now);
                self.punch_started(index);
                // Both sides are registered now: a handshake sent earlier may have been lost.
                self.kick_handshake(index, now);
                true
            }
            Message::Refused { echo, code } => {
                let registration = link.pending_register == Some(echo);
                match code {
                    RefusalCode::NotRegistered => link.forget_registration(now),
                    RefusalCode::NameTaken if registration => {
                        if let Some(name) = self.hostname.clone() {
                            self.events.push_back(Event::HostnameTaken(name));
                        }
                    }
                    RefusalCode::BadStatement => {
                        self.on_submission_refused(echo);
                    }
                    // Our clock was off; `sync_clock` has corrected it from this very answer.
                    RefusalCode::Stale if registration && link.on_stale(now) => {
                        self.drive_rendezvous(now);
                    }
                    _ => {}
                }
                tracing::debug!(?code, "rendezvous refused a request");
                true
            }
            // The rest only once the rendezvous' key is known (pinned, or learned when it
            // answered our registration).
            _ if link.key.is_none() => false,
            Message::Stored { echo } => self.on_stored(echo, now),
            Message::Deliver {
                id,
                from_name,
                statement,
            } => {
                self.on_deliver(id, from_name, statement, now);
                true
            }
            Message::LookupReply { echo, found } => self.on_lookup_reply(echo, found),
            Message::NameReleased { echo, held } => self.on_name_released(echo, held),
            _ => false,
        }
    }

    /// A peer probing a path to us: answer where it came from, from the socket it came to,
    /// and probe back there.
    fn on_probe(
        &mut self,
        from: SocketAddr,
        socket: Socket,
        opened: &Opened<'_>,
        now: Instant,
    ) -> bool {
        let Some(&index) = self.by_key.get(&opened.sender) else {
            return false;
        };
        if !self.peers[index].trusted {
            return false;
        }
        let ack = Message::ProbeAck {
            echo: opened.nonce,
            observed: from,
        };
        self.send_control_from(socket, from, &ack, now);
        let start = self.peers[index].path.on_probe_from(from, socket, now);
        self.counters.punched(start);
        self.send_probes(index, now);
        self.punch_started(index);
        true
    }

    fn on_probe_ack(
        &mut self,
        from: SocketAddr,
        socket: Socket,
        opened: &Opened<'_>,
        echo: u64,
        now: Instant,
    ) -> bool {
        let Some(&index) = self.by_key.get(&opened.sender) else {
            return false;
        };
        if !self.peers[index].trusted {
            return false;
        }
        if self.peers[index].pmtu.on_ack(echo, self.tun_mtu, now) {
            return true;
        }
        let was_direct = self.peers[index].path.direct_endpoint().is_some();
        let path = &mut self.peers[index].path;
        let answered = if path.on_probe_ack(echo, from, socket, now) {
            true
        } else if let Some(rtt) = self.birthday_answered(index, echo, from, socket, now) {
            self.peers[index].path.answered(from, socket, rtt, now)
        } else {
            false
        };
        if answered {
            if !was_direct {
                self.counters.direct_found += 1;
            }
            self.path_changed(index, PathKind::Direct, Some(from));
            self.kick_handshake(index, now);
        }
        true
    }

    /// Sends the probes peer `index`'s path wants now.
    fn send_probes(&mut self, index: usize, now: Instant) {
        let mut due = Vec::new();
        let end = self.peers[index]
            .path
            .poll_probes(now, |to, socket| due.push((to, socket)));
        if end == PunchEnd::Failed {
            self.counters.punches_failed += 1;
        }
        let target = self.peers[index].key;
        for (to, socket) in due {
            let nonce = self.send_control_from(socket, to, &Message::Probe { target }, now);
            self.peers[index].path.probe_sent(nonce, to, socket, now);
        }
    }

    /// Seals `message` to one of the rendezvous ports (0 main, 1 alternate); returns its nonce.
    pub(super) fn send_to_rendezvous(
        &mut self,
        port: usize,
        message: &Message,
        now: Instant,
    ) -> u64 {
        let Some(to) = self.link.as_ref().map(|l| l.ports()[port]) else {
            return 0;
        };
        self.send_control(to, message, now)
    }

    /// Measures peer `index`'s direct IPv6 path (see `pmtu`): a `Probe` padded to the size
    /// of a full tunnel packet, or the next size down.
    fn drive_pmtu(&mut self, index: usize, now: Instant) {
        let path = &self.peers[index].path;
        let (endpoint, active) = (path.direct_endpoint(), path.is_active(now));
        let Some(size) = self.peers[index]
            .pmtu
            .poll(endpoint, self.tun_mtu, active, now)
        else {
            return;
        };
        let (Some(to), target) = (endpoint, self.peers[index].key) else {
            return;
        };
        let len = super::pmtu::probe_len(size);
        let socket = match self.peers[index].path.route(false) {
            super::path::Route::Direct(_, socket) => socket,
            _ => Socket::Main,
        };
        let nonce = self.send_padded_control((to, socket), &Message::Probe { target }, len, now);
        self.peers[index].pmtu.sent(nonce, size, now);
    }

    /// Seals `message` with this node's key and queues it for `to`; returns its nonce.
    pub(super) fn send_control(&mut self, to: SocketAddr, message: &Message, now: Instant) -> u64 {
        self.send_padded_control((to, Socket::Main), message, 0, now)
    }

    /// [`Node::send_control`] from `socket`.
    pub(super) fn send_control_from(
        &mut self,
        socket: Socket,
        to: SocketAddr,
        message: &Message,
        now: Instant,
    ) -> u64 {
        self.send_padded_control((to, socket), message, 0, now)
    }

    /// [`Node::send_control_from`], with the body padded with zeros to make the datagram `len`
    /// bytes long (if it is shorter).
    fn send_padded_control(
        &mut self,
        to: (SocketAddr, Socket),
        message: &Message,
        len: usize,
        now: Instant,
    ) -> u64 {
        let mut body = Vec::new();
        message.encode(&mut body);
        let padded = len.saturating_sub(envelope::OVERHEAD);
        if body.len() < padded {
            body.resize(padded, 0);
        }
        let nonce = self.nonces.next_nonce();
        let mut sealed = vec![0u8; envelope::OVERHEAD + body.len()];
        let unix_ms = self.clock.unix_ms(now);
        match envelope::seal(
            &mut sealed,
            message.kind(),
            &self.signing,
            unix_ms,
            nonce,
            &body,
        ) {
            Ok(len) => {
                sealed.truncate(len);
                self.control_out.push_back((to, sealed));
            }
            Err(e) => tracing::warn!("cannot seal a control message: {e}"),
        }
        nonce
    }

    /// Our NAT's behaviour is measured (or changed; the rendezvous measured it from the same
    /// probes): peers introduced before — right after a start, introductions come before
    /// the measurement — are introduced again if they have no direct path, so that birthday
    /// probing can start when the two NATs call for it.
    fn nat_measured(&mut self, now: Instant) {
        for peer in &mut self.peers {
            if peer.trusted && peer.path.direct_endpoint().is_none() {
                peer.path.reconnect_now(now);
            }
        }
        self.drive(now);
    }

    fn path_changed(&mut self, index: usize, path: PathKind, endpoint: Option<SocketAddr>) {
        let peer = self.peers[index].key;
        self.events.push_back(Event::PathChanged {
            peer,
            path,
            endpoint,
        });
    }
}
