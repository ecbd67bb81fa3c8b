//! The rendezvous server, sans-IO: registry, hostnames, trust records, endpoint discovery,
//! punch coordination and relay.
//!
//! [`Server`] owns no socket and reads no clock. The daemon (or a simulation) hands it every
//! datagram that arrived at its main or alternate port ([`Server::handle_datagram`]), and
//! timer ticks ([`Server::handle_timeout`]), each with an explicit `now`; it pulls the
//! datagrams to send with the return value and [`Server::poll_transmit`] (which also holds
//! what a timer tick sends: resent deliveries). Randomness (reply nonces) comes in as a seed,
//! wall time as a [`WallClock`], storage as a [`Store`].
//!
//! Trust is bilateral and default-deny: `Connect` introduces, and the relay forwards, only
//! between two keys for which the [`TrustLedger`] holds a valid record signed by both. The
//! ledger is fed by `Submit` (see `statements`), which also passes requests, approvals and
//! revocations on to the other party through a durable outbox (see `outbox`).
//!
//! A server with several addresses answers from the address each datagram was sent to: the
//! daemon passes that address in with the datagram when its socket reports it (a wildcard
//! bind), and every [`Transmit`] names the address to leave from: an answer the address its
//! question came to, anything else sent to a node (deliveries, an introduction's second
//! `Punch`, relayed frames) the address the node's last registration came to. A node's NAT
//! lets in only what comes from the address the node sent to.
//!
//! Durability rule: a `Registered` reply is sent only after the registration is in the store
//! whenever the registration changed (new node, new observed endpoint, LAN list or hostname),
//! and a `Stored` reply only after the submitted statement is. A refresh that only moves
//! `last_seen` (and a re-measured NAT kind, or an endpoint learned from a
//! `Connect`/`NatProbe`) is written lazily, within [`FLUSH_INTERVAL`] (sooner once
//! [`Config::lazy_batch`] wait), and on [`Server::flush`]. A crash therefore loses at most
//! each node's latest refresh, never anything a node was told was registered: a node that
//! refreshes every `keepalive` then looks at most one `keepalive` older than it is, and as
//! long as `expiry > 2 × keepalive` (the default is 3 × keepalive + 5 s) its next refresh
//! arrives before that older
//! `last_seen` expires. Writing every refresh instead would cost an fsync per node per
//! keepalive interval.
//!

mod cluster;
mod control;
mod cookie;
mod counters;
mod directory;
mod links;
mod outbox;
mod rate;
mod registry;
mod relay;
mod sources;
mod statements;
mod store;
pub mod streams;
#[cfg(any(test, feature = "testing"))]
#[doc(hidden)]
pub mod testing;
#[cfg(test)]
mod tests;
mod writes;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

pub use cluster::{HOME_TTL, TRUST_READ_INTERVAL};
pub use counters::{Counters, Refusal, RelayDrop};
pub use outbox::{DELIVERY_ROUND, RESEND_INTERVAL};
pub use rate::Rate;
use rate::TokenBucket;
pub use statements::MAX_OUTBOX;
pub use store::takes_effect_over;
pub use store::{
    Instance, Located, MemoryStore, NewDelivery, OutboxItem, PurgeBefore, Purged, Registration,
    Snapshot, Store, StoreError, Submission, Submitted, TrustChanges, TrustCursor,
};
use writes::{Backend, Pending, Written};
pub use writes::{OwnedSubmission, StoreDone, StoreOp};

use crate::addr::Hostname;
use crate::clock::WallClock;
use crate::identity::{Identity, NodeKey};
use crate::wire::control::RELAY_TO;
use crate::wire::envelope::{NonceSource, ReplayGuard};
use crate::wire::trust::{Statement, TrustLedger, REQUEST_LIFETIME_MS};
use control::canonical;
use directory::Directory;
use outbox::{Item, Outbox};
use registry::Registry;
use sources::{Source, SourceBuckets};

/// How often lazily kept changes (`last_seen` of refreshes) are written to the store.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(10);
/// The default of [`Config::lazy_batch`].
pub const LAZY_BATCH: usize = 1000;
/// How often registrations silent for longer than [`RETENTION`] are deleted from the store.
const PURGE_INTERVAL: Duration = Duration::from_secs(3600);
/// How long an expired registration without a hostname stays in the store (it is no longer
/// acted on); a holder's stays while it holds its name.
const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// `Connect` requests per second per node, and the burst allowed.
const CONNECT_RATE: Rate = Rate {
    per_sec: 5,
    burst: 10,
};
/// `Submit`s per second per node: a node that restarts resubmits what it holds, so the burst
/// is larger than for `Connect`.
const SUBMIT_RATE: Rate = Rate {
    per_sec: 5,
    burst: 20,
};
/// `Lookup`s per second per registered node.
const LOOKUP_RATE: Rate = CONNECT_RATE;
/// `Register`s per second per known key: a node registers once per keepalive, again at once
/// after a challenge or a clock correction, and every 2 s while unanswered.
const REGISTER_RATE: Rate = Rate {
    per_sec: 1,
    burst: 10,
};
/// The relay burst: a quarter second at the node's rate, at least one largest datagram.
const RELAY_MIN_BURST: u64 = 65_535;

/// Where a datagram arrived or leaves: one of the server's two UDP ports, or a node's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Port {
    /// Registration, punching, relay, NAT probes.
    Main,
    /// NAT probes only: the second destination that tells mapping behaviours apart.
    Alt,
    /// A node's TLS stream (for networks that block UDP): everything `Main` carries. Its
    /// datagrams come from, and go to, the connection's endpoint in [`streams::PREFIX`].
    Stream,
}

/// A datagram to send from `port` to `to`.
#[derive(Debug, PartialEq, Eq)]
pub struct Transmit<'a> {
    pub port: Port,
    /// The server's own address to send from: the one the node sent to. None when the
    /// daemon did not say where datagrams arrived (a socket bound to one address, whose
    /// sends leave from it anyway), or for a node restored from the store that has not
    /// registered since.
    pub src_ip: Option<IpAddr>,
    pub to: SocketAddr,
    pub payload: &'a [u8],
}

/// A sealed datagram waiting for [`Server::poll_transmit`].
struct Queued {
    port: Port,
    src_ip: Option<IpAddr>,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// Static settings of a server.
pub struct Config {
    /// The server's own identity: every reply is signed with it.
    pub identity: Identity,
    /// The port numbers, as told to nodes in `NatProbeReply`.
    pub main_port: u16,
    pub alt_port: u16,
    /// Keepalive interval told to nodes in `Registered` (whole seconds, at most 65535).
    pub keepalive: Duration,
    /// A node not heard from (`Register`) for this long is no longer introduced or relayed to.
    pub expiry: Duration,
    /// Relay rate per sending node, bytes per second; 0 turns relaying off.
    pub relay_bytes_per_sec: u64,
    /// Most registrations held; new nodes beyond it are refused (`RateLimited`).
    pub max_nodes: usize,
    /// Most trust requests and approvals waiting for delivery, all nodes together (each costs
    /// about a kilobyte of memory and a row on disk for up to a week). When it is reached, a
    /// new one evicts the oldest of the source address holding the most, if that holds more
    /// than the new one's source; otherwise it is refused (`OutboxFull`). A flood thus
    /// displaces its own items, not honest ones. Each node also has at most `MAX_OUTBOX`
    /// waiting. Ledger statements are bounded by the ledger instead (`max_trust_pairs`).
    pub max_outbox: usize,
    /// Most writes a server with a queued store lets wait for it (see `writes`); beyond, a
    /// write fails at once and what needed it is refused (nodes retry). A store that stopped
    /// answering thus costs refusals, not memory.
    pub max_pending_writes: usize,
    /// How often to tell the store this server is alive and learn who else shares it
    /// ([`Store::heartbeat`]); `None` (the default) for a store only one server can use. A
    /// server whose last beat is three intervals old counts as gone.
    pub heartbeat: Option<Duration>,
    /// Where this server listens, as the others sharing its store are told (the address may
    /// be a wildcard; the ports are `main_port` and `alt_port`).
    pub listen: Option<IpAddr>,
    /// New keys registered per second from one source address, and the burst allowed (a NAT
    /// with many nodes behind it boots them at once). Refreshes are not counted.
    pub new_keys_per_source: Rate,
    /// A hostname whose key has not registered for this long is released: it no longer
    /// resolves and another key may claim it.
    pub name_ttl: Duration,
    /// Hostnames newly claimed from one source address: one per this many seconds, and the
    /// burst allowed. Each is held for `name_ttl`, so without it one address could squat
    /// any number of names for a month.
    pub name_claim_interval_secs: u64,
    pub name_claim_burst: u64,
    /// Most hostnames held, all keys together; new claims beyond it are refused.
    pub max_names: usize,
    /// Most pairs in the trust ledger (records and revocations; a few hundred bytes each in
    /// memory and on disk). A statement about a new pair is refused (`LedgerFull`) beyond it;
    /// pairs the ledger holds can always change.
    pub max_trust_pairs: usize,
    /// Statements about pairs the ledger does not hold, per second from one source address,
    /// and the burst allowed (a node that restarts with many peers hands them all back).
    /// A revocation needs only its signer's key, so without it one registered key could
    /// grow the ledger at its submit rate with made-up partners.
    pub new_pairs_per_source: Rate,
    /// Lazily kept changes are written as soon as this many wait, not only every
    /// [`FLUSH_INTERVAL`]: the write is one transaction on the packet loop, so its size bounds
    /// how long answers wait behind it (100,000 nodes refreshing every 25 s made 40,000 rows,
    /// ~110 ms, every 10 s; a thousand take a few milliseconds).
    pub lazy_batch: usize,
}

impl Config {
    /// Defaults: keepalive 25 s, expiry 3 × keepalive + 5 s, relay 100 Mbit/s per node, at
    /// most a million nodes, names held for 30 days of silence.
    pub fn new(identity: Identity, main_port: u16, alt_port: u16) -> Config {
        Config {
            identity,
            main_port,
            alt_port,
            keepalive: Duration::from_secs(25),
            expiry: Duration::from_secs(80),
            relay_bytes_per_sec: 100_000_000 / 8,
            max_nodes: 1_000_000,
            max_outbox: 250_000,
            max_pending_writes: 16_384,
            heartbeat: None,
            listen: None,
            new_keys_per_source: Rate {
                per_sec: 2,
                burst: 64,
            },
            name_ttl: DEFAULT_NAME_TTL,
            name_claim_interval_secs: 60,
            name_claim_burst: 16,
            max_names: 1_000_000,
            max_trust_pairs: 1_000_000,
            new_pairs_per_source: Rate {
                per_sec: 2,
                burst: 4096,
            },
            lazy_batch: LAZY_BATCH,
        }
    }
}

/// Sizes of the server's in-memory state ([`Server::state_sizes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateSizes {
    /// Registrations in memory: at most [`Config::max_nodes`].
    pub registry: usize,
    /// Senders with replay state: at most twice [`Config::max_nodes`].
    pub replay_senders: usize,
    /// Trust statements waiting for delivery: at most [`Config::max_outbox`] requests and
    /// approvals, plus ledger statements (at most one per ledger pair and party, and ledgers
    /// sent back to nodes that lost theirs).
    pub outbox: usize,
    /// The most items waiting for one node.
    pub outbox_largest: usize,
    /// Sealed datagrams waiting for [`Server::poll_transmit`].
    pub queued: usize,
    /// Source addresses with a new-key rate bucket: at most 65,536.
    pub new_key_sources: usize,
    /// Pairs in the trust ledger: at most [`Config::max_trust_pairs`].
    pub ledger: usize,
}

/// How long a silent key keeps its hostname by default.
pub const DEFAULT_NAME_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The sans-IO rendezvous server.
pub struct Server {
    key: NodeKey,
    config: Config,
    relay_rate: Rate,
    clock: WallClock,
    nonces: NonceSource,
    /// Where writes go: the server's own store, or a queue for the daemon (see `writes`).
    backend: Backend,
    /// What waits for each queued write, by ticket.
    pending: BTreeMap<u64, Pending>,
    /// Submissions that arrived while another was being written (see `statements`).
    deferred_submits: VecDeque<(control::Request, Statement)>,
    next_ticket: u64,
    registry: Registry,
    /// Hostnames, and keys by address.
    directory: Directory,
    /// Which pairs trust each other: what `Connect` and the relay ask.
    ledger: TrustLedger,
    /// Trust statements waiting for their target's `Ack`.
    outbox: Outbox,
    /// The next id for an outbox item held in memory only (see `statements::resync_ledger`).
    next_ephemeral: u64,
    /// The one rate limit for `Lookup`s from senders that are not registered.
    stranger_lookups: TokenBucket,
    /// New keys registered per source address (see `Config::new_keys_per_source`); idle
    /// buckets are forgotten when there are too many.
    new_keys: SourceBuckets,
    /// New hostnames claimed per source address (see `Config::name_claim_interval_secs`).
    name_claims: SourceBuckets,
    /// Open stream connections' endpoints → the address each connection comes from (the
    /// daemon says so: [`Server::stream_opened`]); as many as the daemon has connections.
    stream_sources: BTreeMap<SocketAddr, IpAddr>,
    /// New ledger pairs per source address (see `Config::new_pairs_per_source`).
    new_pairs: SourceBuckets,
    cookies: cookie::AddressCookies,
    replay: ReplayGuard,
    counters: Counters,
    /// Sealed datagrams waiting for `poll_transmit` (the second `Punch` of an introduction,
    /// deliveries).
    queued: VecDeque<Queued>,
    /// Nodes whose in-memory state is ahead of the store.
    dirty: BTreeSet<NodeKey>,
    /// Nodes whose lazy changes are being written (a queued flush): still ahead of the store.
    flushing: BTreeSet<NodeKey>,
    /// Registrations that changed, to be written and answered by `commit`.
    uncommitted: Vec<control::Uncommitted>,
    next_flush: Option<Instant>,
    next_purge: Instant,
    /// When to beat next ([`Config::heartbeat`]).
    next_heartbeat: Option<Instant>,
    /// This start's incarnation (see [`Instance`]).
    incarnation: u64,
    /// The servers sharing the store, as the last heartbeat found them (this one alone until
    /// then, or without heartbeats).
    instances: Vec<Instance>,
    /// The last heartbeat failed (see `cluster::beaten`).
    beat_failed: bool,
    /// Where the next read of the trust changes other servers made starts (see `cluster`).
    trust_cursor: TrustCursor,
    /// When to read them next: `None` without heartbeats (nobody else shares the store).
    next_trust_read: Option<Instant>,
    /// A read is queued: no second one until it is answered.
    reading_trust: bool,
    /// Nodes registered at other servers sharing the store: their server, and since when
    /// (see `cluster`).
    homes: BTreeMap<NodeKey, (NodeKey, Instant)>,
    /// Introductions from other servers waiting for the trust changes (see `cluster`).
    waiting_introductions: Vec<cluster::WaitingIntroduction>,
    /// What the store last said of nodes registered elsewhere that were introduced from here
    /// (see `cluster::located`).
    peers_elsewhere: BTreeMap<NodeKey, Located>,
    /// Nodes relayed to whose server is being read from the store.
    locating: BTreeSet<NodeKey>,
    /// The authenticated links with the other servers, by key (see `links`).
    links: BTreeMap<NodeKey, links::Link>,
    /// Scratch for encoding message bodies, reused.
    body: Vec<u8>,
    /// The last store operation failed (warnings are logged on the change only).
    store_failing: bool,
}

impl Server {
    /// A server over `store`, restoring what it holds: hostnames, the trust ledger, the outbox,
    /// and the registrations that have not expired at `now`. Deliveries to those nodes resume
    /// at once. Each write runs on `store` at once, inside the call that needs it.
    pub fn new(
        config: Config,
        mut store: Box<dyn Store>,
        seed: u64,
        clock: WallClock,
        now: Instant,
    ) -> Result<Server, StoreError> {
        let snapshot = store.load()?;
        store.set_home(config.identity.public_key());
        Ok(Server::restored(
            config,
            Backend::Inline(store),
            snapshot,
            seed,
            clock,
            now,
        ))
    }

    /// A server that restores `snapshot` (what the daemon loaded from its store) and never
    /// runs a write itself: the daemon takes them with [`Server::poll_store`] and answers with
    /// [`Server::handle_store`] (see `writes`).
    pub fn with_queued_store(
        config: Config,
        snapshot: Snapshot,
        seed: u64,
        clock: WallClock,
        now: Instant,
    ) -> Server {
        let backend = Backend::Queued(VecDeque::new());
        Server::restored(config, backend, snapshot, seed, clock, now)
    }

    fn restored(
        config: Config,
        backend: Backend,
        snapshot: Snapshot,
        seed: u64,
        clock: WallClock,
        now: Instant,
    ) -> Server {
        let registry = Registry::new(config.expiry);
        let rate = config.relay_bytes_per_sec;
        // Every registered node, plus those whose registration lapsed less than a freshness
        // window ago (their replay state is forgotten then).
        let replay = ReplayGuard::new(config.max_nodes.saturating_mul(2));
        let cookies = cookie::AddressCookies::new(&config.identity);
        let mut server = Server {
            key: config.identity.public_key(),
            relay_rate: Rate {
                per_sec: rate,
                burst: (rate / 4).max(RELAY_MIN_BURST),
            },
            config,
            clock,
            nonces: NonceSource::new(seed),
            backend,
            pending: BTreeMap::new(),
            deferred_submits: VecDeque::new(),
            next_ticket: 0,
            registry,
            directory: Directory::default(),
            ledger: TrustLedger::new(),
            outbox: Outbox::default(),
            next_ephemeral: outbox::EPHEMERAL_IDS,
            stranger_lookups: TokenBucket::default(),
            new_keys: SourceBuckets::default(),
            name_claims: SourceBuckets::default(),
            stream_sources: BTreeMap::new(),
            new_pairs: SourceBuckets::default(),
            cookies,
            replay,
            counters: Counters::default(),
            queued: VecDeque::new(),
            dirty: BTreeSet::new(),
            flushing: BTreeSet::new(),
            next_flush: None,
            uncommitted: Vec::new(),
            next_purge: now,
            next_heartbeat: None,
            incarnation: seed ^ 0x9e37_79b9_7f4a_7c15,
            instances: Vec::new(),
            beat_failed: false,
            trust_cursor: snapshot.cursor,
            next_trust_read: None,
            reading_trust: false,
            homes: BTreeMap::new(),
            locating: BTreeSet::new(),
            peers_elsewhere: BTreeMap::new(),
            waiting_introductions: Vec::new(),
            links: BTreeMap::new(),
            body: Vec::with_capacity(512),
            store_failing: false,
        };
        server.next_heartbeat = server.config.heartbeat.map(|_| now);
        server.next_trust_read = server.config.heartbeat.map(|_| now + TRUST_READ_INTERVAL);
        server.instances = vec![server.instance(now)];
        server.restore(snapshot, now);
        server
    }

    /// The server's public key (nodes check replies against it).
    pub fn public_key(&self) -> NodeKey {
        self.key
    }

    /// A datagram that arrived at port `local` from `from`, sent to the server's address
    /// `local_ip` if the daemon knows it (see [`Transmit::src_ip`]). Relay frames and replies
    /// are written into `out`, which should hold 65535 bytes (a relayed frame is as long as
    /// the one that came in). More datagrams may wait in [`Server::poll_transmit`] afterwards.
    pub fn handle_datagram<'a>(
        &mut self,
        local: Port,
        local_ip: Option<IpAddr>,
        from: SocketAddr,
        datagram: &[u8],
        now: Instant,
        out: &'a mut [u8],
    ) -> Option<Transmit<'a>> {
        let from = canonical(from);
        // A stream's endpoint is the daemon's name for one connection: on a UDP port it can
        // only be spoofed, and a stream never comes from anything else.
        if (local == Port::Stream) != streams::is_stream_endpoint(&from) {
            self.counters.refuse(Refusal::WrongTransport);
            return None;
        }
        if datagram.first() == Some(&RELAY_TO) {
            return self.relay(local, from, datagram, now, out);
        }
        if datagram.first() == Some(&links::FORWARD) {
            return self.relay_forwarded(local, from, datagram, now, out);
        }
        let local_ip = local_ip.map(|ip| ip.to_canonical());
        self.control(local, local_ip, from, datagram, now, out)
    }

    /// A stream connection from `peer` is known from now on by `endpoint` (see [`streams`]):
    /// what arrives over it counts against `peer`'s address in every per-source limit, as a
    /// datagram from `peer` would.
    pub fn stream_opened(&mut self, endpoint: SocketAddr, peer: IpAddr) {
        if streams::is_stream_endpoint(&endpoint) {
            self.stream_sources.insert(endpoint, peer.to_canonical());
        }
    }

    /// The connection behind `endpoint` closed. A node registered over it stays registered
    /// until it expires or registers again (over a new connection, or over UDP once that
    /// works); meanwhile what is sent to it is dropped by the daemon.
    pub fn stream_closed(&mut self, endpoint: &SocketAddr) {
        self.stream_sources.remove(endpoint);
    }

    /// The source a datagram from `from` counts against: its address (an IPv6 /56), or for a
    /// stream the address its connection comes from.
    pub(super) fn source_of(&self, from: &SocketAddr) -> Source {
        let ip = self.stream_sources.get(from).copied().unwrap_or(from.ip());
        Source::of(ip)
    }

    /// The next queued datagram, written into `out`.
    pub fn poll_transmit<'a>(&mut self, out: &'a mut [u8]) -> Option<Transmit<'a>> {
        let Queued {
            port,
            src_ip,
            to,
            bytes,
        } = self.queued.pop_front()?;
        debug_assert!(out.len() >= bytes.len(), "poll_transmit buffer too small");
        let slot = out.get_mut(..bytes.len())?;
        slot.copy_from_slice(&bytes);
        Some(Transmit {
            port,
            src_ip,
            to,
            payload: slot,
        })
    }

    /// Runs what is due at `now`: expiry, lazy store writes, delivery rounds, purging old
    /// records. Deliveries wait in [`Server::poll_transmit`].
    pub fn handle_timeout(&mut self, now: Instant) {
        // Registrations a caller left uncommitted are not left waiting.
        self.commit(now);
        for key in self.registry.expire(now) {
            self.counters.expired += 1;
            // A node silent for the whole expiry had its last state flushed long ago.
            self.dirty.remove(&key);
            self.directory.set_registered(key, false);
            tracing::debug!(node = %key, "registration expired");
        }
        for (key, name) in self.directory.expire_names(now) {
            tracing::info!(node = %key, "hostname {name} released: its key has not registered for the name TTL");
            // Memory decides; the store follows now, or at the next purge (which releases the
            // same names by the same rule), and a restart does not load them either.
            let _ = self.write_quietly(StoreOp::ReleaseName(name));
        }
        if self.next_flush.is_some_and(|t| t <= now) {
            let _ = self.flush(now);
        }
        self.run_deliveries(now);
        if self.next_purge <= now {
            self.next_purge = now + PURGE_INTERVAL;
            self.purge(now);
        }
        if self.next_heartbeat.is_some_and(|t| t <= now) {
            self.heartbeat(now);
        }
        self.read_trust_changes(now);
    }

    /// When [`Server::handle_timeout`] should run next, and why.
    pub fn poll_timeout(&self) -> Option<(Instant, &'static str)> {
        let mut next = (self.next_purge, "purge");
        if let Some(t) = self.registry.next_expiry().filter(|t| *t < next.0) {
            next = (t, "expiry");
        }
        if let Some(t) = self.directory.next_name_expiry().filter(|t| *t < next.0) {
            next = (t, "name expiry");
        }
        if let Some(t) = self.next_flush.filter(|t| *t < next.0) {
            next = (t, "flush");
        }
        if let Some(t) = self.outbox.next_round().filter(|t| *t < next.0) {
            next = (t, "delivery");
        }
        if let Some(t) = self.next_heartbeat.filter(|t| *t < next.0) {
            next = (t, "heartbeat");
        }
        if let Some(t) = (self.next_trust_read).filter(|t| *t < next.0 && !self.reading_trust) {
            next = (t, "trust changes");
        }
        Some(next)
    }

    /// Writes everything kept lazily to the store now (call before a clean shutdown; a server
    /// with a queued store has then queued the write, see [`Server::store_pending`]). On
    /// failure it is retried [`FLUSH_INTERVAL`] later.
    pub fn flush(&mut self, now: Instant) -> Result<(), StoreError> {
        self.next_flush = None;
        if self.dirty.is_empty() {
            return Ok(());
        }
        let keys: Vec<NodeKey> = std::mem::take(&mut self.dirty).into_iter().collect();
        let records: Vec<Registration> = keys.iter().filter_map(|k| self.record(k)).collect();
        self.flushing.extend(keys.iter().copied());
        let held_since_ms = self.names_held_since(now);
        match self.write(StoreOp::Save(records, held_since_ms)) {
            Written::Now(result) => self.flushed(keys, writes::saved(result), now),
            Written::Queued(ticket) => {
                self.wait_for(ticket, Pending::Flush(keys));
                Ok(())
            }
        }
    }

    /// The lazy write of `keys` is done: on failure they are dirty again, retried later.
    fn flushed(
        &mut self,
        keys: Vec<NodeKey>,
        result: Result<Vec<NodeKey>, StoreError>,
        now: Instant,
    ) -> Result<(), StoreError> {
        for key in &keys {
            self.flushing.remove(key);
        }
        match result {
            Ok(taken) => {
                self.store_ok();
                // Another server's node took the name meanwhile (it was free there): this
                // node is told at its next registration claiming it.
                for key in taken {
                    if let Some(name) = self.directory.name_of(&key).cloned() {
                        tracing::warn!(node = %key, "hostname {name} is held at another server on the same store");
                    }
                    self.directory.set_name(key, None);
                    self.mark_dirty(key, now);
                }
                Ok(())
            }
            Err(e) => {
                self.store_error(&e);
                self.dirty.extend(keys);
                self.next_flush = Some(now + FLUSH_INTERVAL);
                Err(e)
            }
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Registrations held in memory (fresh ones, and expired ones not yet swept).
    pub fn registered(&self) -> usize {
        self.registry.len()
    }

    /// The registration of `key` if it is fresh at `now`.
    pub fn registration(&self, key: &NodeKey, now: Instant) -> Option<Registration> {
        self.registry.fresh(key, now)?;
        self.record(key)
    }

    /// The trust statements in force, one per pair.
    pub fn ledger(&self) -> &TrustLedger {
        &self.ledger
    }

    /// Trust statements waiting to be delivered (and acknowledged), for every node.
    pub fn outbox_len(&self) -> usize {
        self.outbox.len()
    }

    /// How much state the server holds now, for tests and metrics: every figure here is
    /// bounded by the configuration (see [`StateSizes`]), whatever senders do. Cheap: sizes of
    /// in-memory collections, one pass over the outbox's targets.
    pub fn state_sizes(&self) -> StateSizes {
        StateSizes {
            registry: self.registry.len(),
            replay_senders: self.replay.senders(),
            outbox: self.outbox.len(),
            outbox_largest: self.outbox.largest(),
            queued: self.queued.len(),
            new_key_sources: self.new_keys.len(),
            ledger: self.ledger.len(),
        }
    }

    /// The registration of `key` as the store keeps it.
    fn record(&self, key: &NodeKey) -> Option<Registration> {
        let hostname = self.directory.name_of(key).cloned();
        self.registry.record(key, hostname)
    }

    /// Takes in what the store held at start. Statements are verified again (the store is a
    /// file anyone with access could edit): one that fails is skipped with a warning naming
    /// it, and the nodes, which keep their own, resubmit it.
    fn restore(&mut self, snapshot: Snapshot, now: Instant) {
        let now_ms = self.clock.unix_ms(now);
        let expiry_ms = self.config.expiry.as_millis() as u64;
        // Requests and approvals share the outbox by the source they came from; that is not
        // stored, so it is taken to be where their sender last registered from.
        let registered_from: BTreeMap<NodeKey, IpAddr> = (snapshot.registrations.iter())
            .map(|r| (r.key, r.observed.ip()))
            .collect();
        let mut records = snapshot.registrations;
        // Oldest first, so that of two nodes last seen at one endpoint the newer one keeps it.
        records.sort_by_key(|r| r.last_seen_ms);
        for record in records {
            let age = Duration::from_millis(now_ms.saturating_sub(record.last_seen_ms));
            // A name whose hold ended while the server was down is not taken back (the next
            // purge removes it from the store).
            let hold = self
                .config
                .name_ttl
                .checked_sub(age)
                .filter(|h| !h.is_zero());
            if let (Some(name), Some(hold)) = (&record.hostname, hold) {
                match self.directory.holder(name) {
                    Some(other) if other != record.key => tracing::warn!(
                        node = %record.key, holder = %other, "hostname {name} stored twice; \
                         the node must claim another"
                    ),
                    _ => {
                        self.directory.set_name(record.key, Some(name.clone()));
                        if let Some(until) = now.checked_add(hold) {
                            self.directory.hold(record.key, until);
                        }
                    }
                }
            }
            if age.as_millis() as u64 >= expiry_ms {
                continue;
            }
            let last_seen = now.checked_sub(age).unwrap_or(now);
            self.directory.set_registered(record.key, true);
            // Where the node reached the server is learnt again at its next registration.
            self.registry.upsert(record, None, None, last_seen);
        }
        for statement in snapshot.ledger {
            let (low, high) = statement.pair();
            if matches!(statement, Statement::Request(_)) {
                tracing::warn!(%low, %high, "skipping stored ledger statement: a request");
                continue;
            }
            if let Err(e) = self.ledger.admit(statement, now_ms) {
                tracing::warn!(%low, %high, "skipping stored ledger statement: {e}");
            }
        }
        for item in snapshot.outbox {
            let id = item.id;
            match Item::from_stored(item, |k| registered_from.get(k).copied()) {
                Some(kept) => self.outbox.insert(id, kept),
                None => tracing::warn!(id, "skipping stored delivery: not for a party"),
            }
        }
        let waiting: Vec<NodeKey> = self.outbox.targets().collect();
        for target in waiting {
            if self.registry.fresh(&target, now).is_some() {
                self.outbox.schedule(target, now);
            }
        }
    }

    /// Deletes hostnames held too long without a registration, long-expired registrations
    /// and expired deliveries.
    fn purge(&mut self, now: Instant) {
        let now_ms = self.clock.unix_ms(now);
        let before_ms = |d: Duration| now_ms.saturating_sub(d.as_millis() as u64);
        let before = PurgeBefore {
            names_ms: before_ms(self.config.name_ttl),
            registrations_ms: before_ms(self.config.expiry + RETENTION),
            deliveries_ms: now_ms.saturating_sub(REQUEST_LIFETIME_MS),
        };
        match self.write(StoreOp::Purge(before)) {
            Written::Now(result) => self.purged(before, writes::purged_of(result)),
            Written::Queued(ticket) => self.wait_for(ticket, Pending::Purge(before)),
        }
    }

    /// A purge is done: memory forgets what the store forgot.
    fn purged(&mut self, before: PurgeBefore, result: Result<Purged, StoreError>) {
        match result {
            Ok(purged) => {
                self.store_ok();
                for key in &purged.keys {
                    // Only keys without a name are purged; one that registered meanwhile
                    // keeps what it claimed in memory (written at its next flush).
                    if self.registry.get(key).is_none() {
                        self.directory.set_name(*key, None);
                    }
                }
                self.outbox.purge(before.deliveries_ms);
                if !purged.keys.is_empty() || purged.deliveries > 0 || !purged.names.is_empty() {
                    tracing::info!(
                        names = purged.names.len(),
                        registrations = purged.keys.len(),
                        deliveries = purged.deliveries,
                        "purged expired hostnames, long-expired registrations and deliveries"
                    );
                }
            }
            Err(e) => self.store_error(&e),
        }
    }

    /// Frees `name` now, whoever holds it (an operator's decision): it no longer resolves and
    /// any key may claim it. Returns the key that held it. A holder that is still running
    /// claims it again at its next registration unless it stopped claiming it.
    ///
    /// With a queued store the write is queued and the answer is the key memory held it for.
    pub fn free_name(&mut self, name: &Hostname) -> Result<Option<NodeKey>, StoreError> {
        let held = self.directory.holder(name);
        let stored = match self.write(StoreOp::ReleaseName(name.clone())) {
            Written::Now(result) => match result? {
                StoreDone::Released(key) => key,
                other => return Err(StoreError::Write(format!("release answered {other:?}"))),
            },
            Written::Queued(ticket) => {
                self.wait_for(ticket, Pending::Quiet);
                None
            }
        };
        if let Some(key) = held {
            self.directory.set_name(key, None);
        }
        Ok(held.or(stored))
    }
}
