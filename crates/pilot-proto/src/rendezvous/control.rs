//! How the server answers each datagram: signed control messages and relay frames. `Register`,
//! `NatProbe` and `Connect` are answered here; `Submit` in `statements`, `Ack` in `outbox`,
//! `Lookup` in `directory`.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::rate::{Rate, TokenBucket};
use super::registry::{candidates, infer_nat, Buckets};
use super::relay;
use super::streams;
use super::writes::{self, Pending, StoreOp, Written};
use super::{
    Port, Queued, Refusal, Registration, RelayDrop, Server, StoreError, Transmit, CONNECT_RATE,
    FLUSH_INTERVAL, REGISTER_RATE,
};
use crate::addr::Hostname;
use crate::identity::NodeKey;
use crate::wire::control::{Message, NatKind, RefusalCode};
use crate::wire::envelope::{self, EnvelopeError, OVERHEAD};

/// Who asked, and where the answer goes.
#[derive(Clone, Copy)]
pub(super) struct Request {
    pub sender: NodeKey,
    pub nonce: u64,
    pub local: Port,
    /// The server's address the request was sent to, if the daemon knows it.
    pub local_ip: Option<IpAddr>,
    pub from: SocketAddr,
    /// The request's size: no reply to an unproven endpoint may be larger.
    pub len: usize,
    /// `from` is proven to reach the sender: it is the sender's registered endpoint, or the
    /// request carries the sender's address cookie for it.
    pub proven: bool,
}

/// A registration that changed, waiting for [`Server::commit`] to write it.
pub(super) struct Uncommitted {
    req: Request,
    pub record: Registration,
    alt_seen: Option<SocketAddr>,
    trust_digest: u64,
    /// No live registration of this key was held (the node hands its statements over).
    first: bool,
}

impl Server {
    pub(super) fn relay<'a>(
        &mut self,
        local: Port,
        from: SocketAddr,
        frame: &[u8],
        now: Instant,
        out: &'a mut [u8],
    ) -> Option<Transmit<'a>> {
        if local == Port::Alt {
            self.counters.relay_drop(RelayDrop::WrongPort);
            return None;
        }
        let (registry, ledger, rate) = (&mut self.registry, &self.ledger, self.relay_rate);
        let mut relayed = relay::forward(registry, ledger, rate, from, frame, now, out);
        if relayed == Err(RelayDrop::UnknownTarget) && self.shares_store() {
            relayed = self
                .forward_elsewhere(from, frame, now, out)
                .map(|(to, len)| (self.config.listen, to, len));
            if let Ok((_, _, len)) = relayed {
                self.counters.relay_forwarded_frames += 1;
                self.counters.relay_forwarded_bytes += len as u64;
            }
        }
        self.relayed(from, relayed, out)
    }

    /// A relay frame's outcome, counted: the frame written into `out` and where it goes
    /// (from the server address given), or why it was dropped.
    fn relayed<'a>(
        &mut self,
        from: SocketAddr,
        relayed: Result<(Option<IpAddr>, SocketAddr, usize), RelayDrop>,
        out: &'a [u8],
    ) -> Option<Transmit<'a>> {
        match relayed {
            Ok((src_ip, to, len)) => {
                self.counters.relay_frames += 1;
                self.counters.relay_bytes += len as u64;
                tracing::trace!(%from, %to, len, "relayed");
                Some(Transmit {
                    port: streams::port_of(&to),
                    src_ip,
                    to,
                    payload: &out[..len],
                })
            }
            Err(reason) => {
                self.counters.relay_drop(reason);
                tracing::trace!(%from, reason = reason.name(), "relay frame dropped");
                None
            }
        }
    }

    /// A frame another server sharing the store forwarded (see `links`), on the main port.
    pub(super) fn relay_forwarded<'a>(
        &mut self,
        local: Port,
        from: SocketAddr,
        frame: &[u8],
        now: Instant,
        out: &'a mut [u8],
    ) -> Option<Transmit<'a>> {
        if local != Port::Main {
            self.counters.relay_drop(RelayDrop::WrongPort);
            return None;
        }
        let relayed = self.forwarded_in(from, frame, now, out);
        self.relayed(from, relayed, out)
    }

    pub(super) fn control<'a>(
        &mut self,
        local: Port,
        local_ip: Option<IpAddr>,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
        out: &'a mut [u8],
    ) -> Option<Transmit<'a>> {
        let opened = match envelope::open(datagram) {
            Ok(opened) => opened,
            Err(e) => return self.refuse(refusal_of(e), from),
        };
        let Ok(message) = Message::decode(opened.kind, opened.body) else {
            return self.refuse(Refusal::Malformed, from);
        };
        // Replay state only for senders this server serves: registered nodes, and a new
        // key's Register that proved its endpoint (the cookie) while there is room for it.
        // Anyone else gets the freshness check alone and only stateless answers (a challenge,
        // a NAT probe's observation, a refusal), so a flood from throwaway keys can neither
        // fill the guard nor make an honest node's messages look stale. Freshness first, for
        // everyone: a registration dated far from our clock is told our time.
        let now_ms = self.clock.unix_ms(now);
        let mut request = Request {
            sender: opened.sender,
            nonce: opened.nonce,
            local,
            local_ip,
            from,
            len: datagram.len(),
            proven: false,
        };
        if envelope::check_fresh(&opened, now_ms).is_err() {
            return self.stale(request, &message, now, out);
        }
        let with_cookie = match &message {
            Message::Register {
                cookie: Some(cookie),
                ..
            } => self.cookies.verify(&opened.sender, from, cookie, now_ms),
            _ => false,
        };
        let registered = self.registry.get(&opened.sender);
        let at_registered = registered.is_some_and(|e| e.observed == from);
        let served = registered.is_some()
            || (with_cookie && self.registry.len() < self.config.max_nodes)
            || self.is_peer_server(&opened.sender);
        if served {
            if let Err(e) = self.replay.check(&opened, now_ms) {
                return self.refuse(refusal_of(e), from);
            }
        }
        request.proven = at_registered || with_cookie;
        match (message, local) {
            (Message::Register { .. }, Port::Main | Port::Stream) if !request.proven => {
                self.challenge(request, now, out)
            }
            (
                Message::Register {
                    lan,
                    hostname,
                    trust_digest,
                    ..
                },
                Port::Main | Port::Stream,
            ) => self.register(request, lan, hostname, trust_digest, now, out),
            // A registered node's request from an endpoint other than its registered one (its
            // NAT moved it, or someone replays its message from elsewhere) is not acted on,
            // and moves nothing: the node is challenged there, and its registration with the
            // cookie moves its endpoint. NAT probes (answered statelessly, the alternate port
            // sees another endpoint by design) and acks (no answer) go on as usual.
            (
                Message::Connect { .. }
                | Message::Submit { .. }
                | Message::Lookup { .. }
                | Message::ReleaseName { .. },
                _,
            ) if !request.proven && self.registry.get(&request.sender).is_some() => {
                self.challenge(request, now, out)
            }
            // A stream shows the server nothing of the node's NAT.
            (Message::NatProbe, Port::Main | Port::Alt) => self.nat_probe(request, now, out),
            (Message::Connect { target }, Port::Main | Port::Stream) => {
                self.connect(request, target, now, out)
            }
            (Message::Submit { statement }, Port::Main | Port::Stream) => {
                self.submit(request, statement, now, out)
            }
            (Message::Ack { id }, Port::Main | Port::Stream) => {
                self.ack(request, id);
                None
            }
            (Message::Lookup { query }, Port::Main | Port::Stream) => {
                self.lookup(request, query, now, out)
            }
            (Message::ReleaseName { name }, Port::Main | Port::Stream) => {
                self.release_name(request, name, now, out)
            }
            (
                Message::Introduce {
                    node,
                    peer,
                    node_nat,
                    candidates,
                },
                Port::Main,
            ) => {
                self.introduced(request, node, peer, node_nat, candidates, now);
                None
            }
            _ => self.refuse(Refusal::Unexpected, from),
        }
    }

    /// Handles `Register`: stores the node's endpoints and hostname (durably first if they
    /// changed), answers `Registered`, then starts sending the node what waits in its outbox.
    fn register<'a>(
        &mut self,
        req: Request,
        lan: Vec<SocketAddr>,
        hostname: Option<Hostname>,
        trust_digest: u64,
        now: Instant,
        out: &'a mut [u8],
    ) -> Option<Transmit<'a>> {
        let now_ms = self.clock.unix_ms(now);
        // No live registration of this key here: a new node, or one this server forgot (it
        // restarted, lost its database or was restored from an old backup). The node is told,
        // and hands over its trust statements again.
        let first = self.registry.fresh(&req.sender, now).is_none();
        let new_key = self.registry.get(&req.sender).is_none();
        if new_key && !self.admit_new_key(req.from, now) {
            self.counters.refuse(Refusal::RateLimited);
            return self.refusal_reply(req, RefusalCode::RateLimited, now, out);
        }
        if let Some(entry) = self.registry.get_mut(&req.sender) {
            if !entry.buckets.registers.take(REGISTER_RATE, 1, now) {
                self.counters.refuse(Refusal::RegisterRate);
                return self.refusal_reply(req, RefusalCode::RateLimited, now, out);
            }
        }
        if new_key && self.registry.len() >= self.config.max_nodes {
            self.counters.refuse(Refusal::RegistryFull);
            return self.refusal_reply(req, RefusalCode::RateLimited, now, out);
        }
        // First come, first served; the registration is refused as a whole so the node does
        // not believe it holds a name it does not.
        let holder = hostname.as_ref().and_then(|n| self.claimed_name(n));
        if holder.is_some_and(|k| k != req.sender) {
            self.counters.refuse(Refusal::NameTaken);
            return self.refusal_reply(req, RefusalCode::NameTaken, now, out);
        }
        let renamed = self.directory.name_of(&req.sender) != hostname.as_ref();
        if renamed && hostname.is_some() && !self.admit_name_claim(req.from, now) {
            self.counters.refuse(Refusal::NameClaims);
            return self.refusal_reply(req, RefusalCode::RateLimited, now, out);
        }
        let previous = self.registry.get(&req.sender);
        // The alternate port's observation is only comparable while the mapping is the same.
        let alt_seen = previous
            .filter(|p| p.observed == req.from)
            .and_then(|p| p.alt_seen);
        let nat = infer_nat(
            req.from,
            alt_seen,
            &lan,
            previous.map_or(NatKind::Unknown, |p| p.nat),
        );
        // Written at once when the acknowledged content differs from the store's: a change, or
        // an earlier lazy change (an endpoint followed from a Connect) not yet written.
        let changed = renamed
            || self.is_dirty(&req.sender)
            || previous.is_none_or(|p| p.observed != req.from || p.lan != lan);
        let record = Registration {
            key: req.sender,
            observed: req.from,
            lan,
            hostname: hostname.clone(),
            nat,
            first_seen_ms: previous.map_or(now_ms, |p| p.first_seen_ms),
            last_seen_ms: now_ms,
        };
        let registration = Uncommitted {
            req,
            record,
            alt_seen,
            trust_digest,
            first,
        };
        if changed {
            // Acknowledged only once it would survive a crash right after the reply: written
            // with the others of this batch in one transaction (`Server::commit`), and only
            // then in effect and answered. A newer one from the same node replaces it.
            self.uncommitted.retain(|p| p.req.sender != req.sender);
            self.uncommitted.push(registration);
            return None;
        }
        self.mark_dirty(req.sender, now);
        let reply = self.take_effect(registration, now);
        // Queued, so they leave right behind the reply.
        self.start_deliveries(req.sender, now);
        self.reply(req, &reply, now, out)
    }

    /// Writes the registrations that changed since the last call, all in one transaction
    /// (one fsync for a whole receive batch instead of one per new node), then puts them in
    /// effect and queues their `Registered` for [`Server::poll_transmit`]. If the write fails,
    /// none is answered (the nodes retry). The daemon calls it after each receive batch;
    /// returns how many were answered.
    pub fn commit(&mut self, now: Instant) -> usize {
        if self.uncommitted.is_empty() {
            return 0;
        }
        let waiting = std::mem::take(&mut self.uncommitted);
        let records: Vec<Registration> = waiting.iter().map(|p| p.record.clone()).collect();
        let held_since_ms = self.names_held_since(now);
        match self.write(StoreOp::Save(records, held_since_ms)) {
            Written::Now(result) => self.committed(waiting, writes::saved(result), now),
            Written::Queued(ticket) => {
                self.wait_for(ticket, Pending::Commit(waiting));
                0
            }
        }
    }

    /// The registrations of one `commit` are written (or not): in effect and answered (or
    /// refused: the write failed, and the nodes retry, or another server's node holds the
    /// name). Returns how many were answered, refusals of a name included.
    pub(super) fn committed(
        &mut self,
        waiting: Vec<Uncommitted>,
        result: Result<Vec<NodeKey>, StoreError>,
        now: Instant,
    ) -> usize {
        let taken = match result {
            Ok(taken) => taken,
            Err(e) => {
                self.store_error(&e);
                for _ in &waiting {
                    self.counters.refuse(Refusal::StoreFailed);
                }
                return 0;
            }
        };
        self.store_ok();
        let answered = waiting.len();
        for registration in waiting {
            let req = registration.req;
            if taken.contains(&req.sender) {
                // Another server on the same store has a node holding the name: first come,
                // first served across them too.
                self.counters.refuse(Refusal::NameTaken);
                let refusal = Message::Refused {
                    echo: req.nonce,
                    code: RefusalCode::NameTaken,
                };
                self.queue_reply(req, &refusal, now);
                continue;
            }
            self.dirty.remove(&req.sender);
            tracing::debug!(node = %req.sender, observed = %req.from, "registered");
            let reply = self.take_effect(registration, now);
            self.queue_reply(req, &reply, now);
            // Its deliveries right behind it.
            self.start_deliveries(req.sender, now);
        }
        answered
    }

    /// Since when (UNIX ms) a hostname's holder counts as holding it: its name TTL back.
    pub(super) fn names_held_since(&self, now: Instant) -> u64 {
        let ttl = u64::try_from(self.config.name_ttl.as_millis()).unwrap_or(u64::MAX);
        self.clock.unix_ms(now).saturating_sub(ttl)
    }

    /// A registration in the store (or needing no write) takes effect: registry, names,
    /// the ledger comparison. Returns the `Registered` to answer with; deliveries are started
    /// by the caller once that is queued.
    fn take_effect(&mut self, registration: Uncommitted, now: Instant) -> Message {
        let Uncommitted {
            req,
            record,
            alt_seen,
            trust_digest,
            first,
        } = registration;
        let hostname = record.hostname.clone();
        self.registry.upsert(record, alt_seen, req.local_ip, now);
        self.directory.set_name(req.sender, hostname);
        if let Some(until) = now.checked_add(self.config.name_ttl) {
            self.directory.hold(req.sender, until);
        }
        self.directory.set_registered(req.sender, true);
        self.counters.registrations += 1;
        let resynced = self.compare_ledgers(req.sender, trust_digest, now);
        Message::Registered {
            echo: req.nonce,
            observed: req.from,
            keepalive_secs: u16::try_from(self.config.keepalive.as_secs()).unwrap_or(u16::MAX),
            resubmit: first || resynced,
        }
    }

    /// The node's ledger digest against ours for it: on a difference not acted on before,
    /// send it our side and (returns true) ask for its side. A node that lost its trust.json
    /// gets its records back this way, within one registration.
    fn compare_ledgers(&mut self, node: NodeKey, theirs: u64, now: Instant) -> bool {
        let ours = self.ledger.digest_of(&node);
        let Some(entry) = self.registry.get_mut(&node) else {
            return false;
        };
        if theirs == ours || entry.ledger_synced == Some((theirs, ours)) {
            return false;
        }
        entry.ledger_synced = Some((theirs, ours));
        self.counters.ledger_resyncs += 1;
        self.resync_ledger(node, now);
        true
    }

    fn nat_probe<'a>(
        &mut self,
        req: Request,
        now: Instant,
        out: &'a mut [u8],
    ) -> Option<Transmit<'a>> {
        // Anyone with a key may ask what endpoint it is seen at; only registered nodes are
        // remembered, so unregistered senders cannot grow the server's memory.
        if self.registry.fresh(&req.sender, now).is_some() {
            match req.local {
                // The main port sees the registered endpoint; a new one is believed only
                // from a registration proven with a cookie.
                Port::Main | Port::Stream => {}
                Port::Alt => {
                    if let Some(entry) = self.registry.get_mut(&req.sender) {
                        entry.alt_seen = Some(req.from);
                    }
                }
            }
            self.reinfer_nat(req.sender, now);
        }
        self.counters.nat_probes += 1;
        let port = match req.local {
            Port::Main | Port::Stream => self.config.main_port,
            Port::Alt => self.config.alt_port,
        };
        let reply = Message::NatProbeReply {
            echo: req.nonce,
            observed: req.from,
            port,
        };
        self.reply(req, &reply, now, out)
    }

    fn connect<'a>(
        &mut self,
        req: Request,
        target: NodeKey,
        now: Instant,
        out: &'a mut [u8],
    ) -> Option<Transmit<'a>> {
        if let Err(code) = self.admit_request(req, |b| &mut b.connects, CONNECT_RATE, now) {
            return self.refusal_reply(req, code, now, out);
        }
        // Trust first: without a record the answer does not even tell whether the target is
        // online.
        if !self.ledger.trusted(&req.sender, &target) {
            self.counters.refuse(Refusal::NotAllowed);
            return self.refusal_reply(req, RefusalCode::NotAllowed, now, out);
        }
        let Some(peer) = self.registry.fresh(&target, now) else {
            if self.shares_store() {
                // Perhaps registered at another server sharing the store (see `cluster`).
                return self.connect_elsewhere(req, target, now, out);
            }
            self.counters.refuse(Refusal::UnknownTarget);
            return self.refusal_reply(req, RefusalCode::UnknownTarget, now, out);
        };
        let (peer_local_ip, peer_observed, peer_nat, peer_candidates) = (
            peer.local_ip,
            peer.observed,
            punch_nat(peer),
            candidates(peer),
        );
        let me = self.registry.get(&req.sender)?;
        let to_peer = Message::Punch {
            peer: req.sender,
            peer_nat: punch_nat(me),
            candidates: candidates(me),
        };
        // Both sides must probe at the same moment: the peer's Punch goes out right after
        // the reply, before anything else is read.
        let peer_port = streams::port_of(&peer_observed);
        self.queue(peer_port, peer_local_ip, peer_observed, &to_peer, now);
        self.counters.punches += 1;
        tracing::debug!(from = %req.sender, to = %target, "introduced");
        let to_sender = Message::Punch {
            peer: target,
            peer_nat,
            candidates: peer_candidates,
        };
        self.reply(req, &to_sender, now, out)
    }

    /// Whether one more new key may register from `from`'s address now. The source address
    /// is proven (a registration needs the cookie for it), so throwaway keys cost an
    /// attacker addresses, not just signatures.
    fn admit_new_key(&mut self, from: SocketAddr, now: Instant) -> bool {
        let rate = self.config.new_keys_per_source;
        let source = self.source_of(&from);
        self.new_keys.take(source, rate, 1, now)
    }

    /// Whether `from` may claim a hostname now: within its rate of claims (a name is held for
    /// the name TTL, so claims are what squatting costs) and while the names held are under
    /// their limit.
    fn admit_name_claim(&mut self, from: SocketAddr, now: Instant) -> bool {
        if self.directory.names() >= self.config.max_names {
            return false;
        }
        // One claim costs `interval` tokens at one token a second.
        let interval = self.config.name_claim_interval_secs.max(1);
        let rate = Rate {
            per_sec: 1,
            burst: interval.saturating_mul(self.config.name_claim_burst.max(1)),
        };
        let source = self.source_of(&from);
        (self.name_claims).take(source, rate, interval, now)
    }

    /// Answers a registration from an endpoint not yet proven with the cookie for it.
    fn challenge<'a>(
        &mut self,
        req: Request,
        now: Instant,
        out: &'a mut [u8],
    ) -> Option<Transmit<'a>> {
        let cookie = self
            .cookies
            .issue(&req.sender, req.from, self.clock.unix_ms(now));
        self.counters.challenges += 1;
        let reply = Message::Challenge {
            echo: req.nonce,
            cookie,
        };
        self.reply(req, &reply, now, out)
    }

    fn reinfer_nat(&mut self, key: NodeKey, now: Instant) {
        let Some(entry) = self.registry.get_mut(&key) else {
            return;
        };
        let nat = infer_nat(entry.observed, entry.alt_seen, &entry.lan, entry.nat);
        if nat != entry.nat {
            entry.nat = nat;
            self.mark_dirty(key, now);
            // Other servers sharing the store introduce this node from what the store holds,
            // and its NAT kind decides how its peers punch: written now, not lazily.
            if self.shares_store() && !self.store_failing {
                self.next_flush = self.next_flush.map(|t| t.min(now));
            }
        }
    }

    pub(super) fn mark_dirty(&mut self, key: NodeKey, now: Instant) {
        self.dirty.insert(key);
        let due = self.next_flush.get_or_insert(now + FLUSH_INTERVAL);
        // A full batch goes at the next timer tick; a failing store keeps its retry interval.
        if self.dirty.len() >= self.config.lazy_batch && !self.store_failing {
            *due = (*due).min(now);
        }
    }

    /// A message dated outside the window around our clock. A registration is told so (a
    /// `Refused { Stale }` echoing its nonce, sealed with our time): a node whose clock is wrong
    /// — a box without RTC before NTP, or on a network without it — learns the time to sign
    /// with instead of never registering. The answer is smaller than the (padded) request and
    /// changes nothing here, so a replayed or spoofed stale registration gains nobody anything.
    fn stale<'a>(
        &mut self,
        req: Request,
        message: &Message,
        now: Instant,
        out: &'a mut [u8],
    ) -> Option<Transmit<'a>> {
        let refused = self.refuse(Refusal::Stale, req.from);
        if req.local == Port::Alt || !matches!(message, Message::Register { .. }) {
            return refused;
        }
        self.refusal_reply(req, RefusalCode::Stale, now, out)
    }

    /// Counts a refused message; nothing is sent, so forged or replayed traffic learns nothing.
    fn refuse<'a>(&mut self, reason: Refusal, from: SocketAddr) -> Option<Transmit<'a>> {
        self.counters.refuse(reason);
        tracing::trace!(%from, reason = reason.name(), "control message refused");
        None
    }

    /// The gate in front of `Connect` and `Submit`: the sender must be registered and within
    /// its rate (the bucket `bucket` picks). Counts a refusal and returns its code; on success
    /// follows the sender to the endpoint the request came from.
    pub(super) fn admit_request(
        &mut self,
        req: Request,
        bucket: fn(&mut Buckets) -> &mut TokenBucket,
        rate: Rate,
        now: Instant,
    ) -> Result<(), RefusalCode> {
        let Some(sender) = self.registry.fresh_mut(&req.sender, now) else {
            self.counters.refuse(Refusal::NotRegistered);
            return Err(RefusalCode::NotRegistered);
        };
        if !bucket(&mut sender.buckets).take(rate, 1, now) {
            self.counters.refuse(Refusal::RateLimited);
            return Err(RefusalCode::RateLimited);
        }
        Ok(())
    }

    pub(super) fn refusal_reply<'a>(
        &mut self,
        req: Request,
        code: RefusalCode,
        now: Instant,
        out: &'a mut [u8],
    ) -> Option<Transmit<'a>> {
        let reply = Message::Refused {
            echo: req.nonce,
            code,
        };
        self.reply(req, &reply, now, out)
    }

    /// Seals `message` into `out`, from the port the request came in at, back to its source.
    pub(super) fn reply<'a>(
        &mut self,
        req: Request,
        message: &Message,
        now: Instant,
        out: &'a mut [u8],
    ) -> Option<Transmit<'a>> {
        let len = self.seal(message, now, out)?;
        // To an endpoint not proven, nothing larger than what came from it: otherwise one
        // spoofed datagram would send more to its victim than it cost.
        if !req.proven && len > req.len {
            return self.refuse(Refusal::Unproven, req.from);
        }
        Some(Transmit {
            port: req.local,
            src_ip: req.local_ip,
            to: req.from,
            payload: &out[..len],
        })
    }

    /// [`Server::reply`] through the queue, for answers given after the request's batch.
    pub(super) fn queue_reply(&mut self, req: Request, message: &Message, now: Instant) {
        let mut buf = vec![0u8; 1500];
        let Some(len) = self.seal(message, now, &mut buf) else {
            return;
        };
        if !req.proven && len > req.len {
            self.refuse(Refusal::Unproven, req.from);
            return;
        }
        buf.truncate(len);
        self.queued.push_back(Queued {
            port: req.local,
            src_ip: req.local_ip,
            to: req.from,
            bytes: buf,
        });
    }

    /// Seals `message` for [`Server::poll_transmit`], to leave from `port` and `src_ip`.
    pub(super) fn queue(
        &mut self,
        port: Port,
        src_ip: Option<IpAddr>,
        to: SocketAddr,
        message: &Message,
        now: Instant,
    ) {
        let mut buf = vec![0u8; 1500];
        if let Some(len) = self.seal(message, now, &mut buf) {
            buf.truncate(len);
            self.queued.push_back(Queued {
                port,
                src_ip,
                to,
                bytes: buf,
            });
        }
    }

    fn seal(&mut self, message: &Message, now: Instant, out: &mut [u8]) -> Option<usize> {
        self.body.clear();
        message.encode(&mut self.body);
        let nonce = self.nonces.next_nonce();
        let sealed = envelope::seal(
            out,
            message.kind(),
            self.config.identity.signing_key(),
            self.clock.unix_ms(now),
            nonce,
            &self.body,
        );
        debug_assert!(
            sealed.is_ok() || out.len() < OVERHEAD + self.body.len(),
            "{sealed:?}"
        );
        sealed.ok()
    }

    pub(super) fn store_error(&mut self, e: &StoreError) {
        self.counters.store_errors += 1;
        if !self.store_failing {
            self.store_failing = true;
            tracing::warn!(
                "registry store failing: {e}; registrations and trust statements are not \
                 acknowledged until it works again"
            );
        }
    }

    pub(super) fn store_ok(&mut self) {
        if self.store_failing {
            self.store_failing = false;
            tracing::info!("registry store works again");
        }
    }
}

/// IPv4-mapped IPv6 sources (from a dual-stack socket) as plain IPv4, so one node has one
/// endpoint whichever socket saw it.
pub(super) fn canonical(from: SocketAddr) -> SocketAddr {
    match from {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => from,
        },
        v4 => v4,
    }
}

fn refusal_of(e: EnvelopeError) -> Refusal {
    match e {
        EnvelopeError::BadSignature => Refusal::BadSignature,
        EnvelopeError::Stale => Refusal::Stale,
        EnvelopeError::Replay => Refusal::Replay,
        // More senders with live replay state than the registry can hold: a capacity refusal.
        EnvelopeError::Busy => Refusal::RegistryFull,
        EnvelopeError::Truncated
        | EnvelopeError::NotControl
        | EnvelopeError::Version(_)
        | EnvelopeError::BadKey
        | EnvelopeError::BufferTooSmall => Refusal::Malformed,
    }
}

/// The NAT kind a `Punch` tells of `entry`'s node: none for a node on a TLS stream, whose
/// public endpoint is not among its candidates (birthday probing aims at that endpoint's
/// address, see `node::birthday`).
fn punch_nat(entry: &super::registry::Entry) -> NatKind {
    punch_nat_of(entry.observed, entry.nat)
}

/// [`punch_nat`] of a node whose public endpoint is `observed` and NAT `nat`.
pub(super) fn punch_nat_of(observed: SocketAddr, nat: NatKind) -> NatKind {
    if super::streams::is_stream_endpoint(&observed) {
        NatKind::Unknown
    } else {
        nat
    }
}
