//! The harness of the server's tests, and scenarios every `Store` must pass: a sans-IO
//! server driven with hand-sealed datagrams and a fake clock. Built for this crate's tests,
//! and with the `testing` feature for the stores that live elsewhere (the daemon's SQLite).
// `Sim::new` is the harness's name for a fresh world; a `Default` would only hide it.
#![allow(clippy::new_without_default)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::*;
use crate::wire::control::{Message, Query, RefusalCode};
use crate::wire::envelope::{open, seal};
use crate::wire::trust::{TrustRecord, TrustRequest};

pub const EPOCH_MS: u64 = 1_800_000_000_000;
pub const MAIN: u16 = 7400;
pub const ALT: u16 = 7401;

pub struct Sim {
    pub server: Server,
    pub store: MemoryStore,
    pub t0: Instant,
    pub now: Instant,
    pub out: Vec<u8>,
    /// The configured name TTL, kept across restarts.
    pub name_ttl: Duration,
    /// What the server had queued before an answer given by `commit` (see `Sim::deliver`):
    /// `poll` returns it first, so the order stays the server's.
    pub backlog: std::collections::VecDeque<(Option<IpAddr>, Sent)>,
    /// The store of a server that queues its writes, as the daemon's does: the harness runs
    /// them after each datagram and timer, as the daemon's store thread would. Chosen for
    /// every `Sim` when `PILOT_SIM_QUEUED_STORE=1` (scripts/test.sh runs the suite both
    /// ways); `None`: the server owns its store and writes at once.
    pub writer: Option<Box<dyn Store>>,
}

/// Whether this run's servers queue their writes (`PILOT_SIM_QUEUED_STORE=1`).
pub fn queued_store() -> bool {
    std::env::var("PILOT_SIM_QUEUED_STORE").as_deref() == Ok("1")
}

/// A server on `store` the way this run asks for: owning it, or queueing its writes (then the
/// store is returned, for the harness to run them on).
fn server_on(
    config: Config,
    mut store: Box<dyn Store>,
    seed: u64,
    clock: WallClock,
    now: Instant,
    queued: bool,
) -> (Server, Option<Box<dyn Store>>) {
    store.set_home(config.identity.public_key());
    if queued {
        let snapshot = store.load().unwrap();
        let server = Server::with_queued_store(config, snapshot, seed, clock, now);
        (server, Some(store))
    } else {
        (Server::new(config, store, seed, clock, now).unwrap(), None)
    }
}

pub struct Client {
    pub identity: Identity,
    pub at: SocketAddr,
    pub nonce: u64,
    /// The rendezvous' address cookie for `at`, once it challenged us.
    pub cookie: Option<[u8; crate::wire::control::COOKIE_LEN]>,
    /// The ledger digest registrations carry; `None`: the server's own for this key (a node
    /// in step with the rendezvous).
    pub trust_digest: Option<u64>,
    /// Where its datagrams arrive: the main port, or (a node whose UDP is blocked) its stream.
    pub port: Port,
}

/// The daemon's salt in the stream endpoints of these tests.
pub const STREAM_SALT: u32 = 0x5a17;

/// What the server sent: from which port, to where, and the datagram.
pub type Sent = (Port, SocketAddr, Vec<u8>);

impl Client {
    pub fn new(n: u8, at: &str) -> Client {
        Client {
            identity: Identity::from_secret_bytes(&[n; 32]),
            at: at.parse().unwrap(),
            nonce: u64::from(n) << 32,
            cookie: None,
            trust_digest: None,
            port: Port::Main,
        }
    }

    /// A node reaching the server over stream connection `conn`.
    pub fn over_stream(n: u8, conn: u32) -> Client {
        Client {
            at: crate::rendezvous::streams::stream_endpoint(STREAM_SALT, conn),
            port: Port::Stream,
            ..Client::new(n, "192.0.2.1:1")
        }
    }

    pub fn key(&self) -> NodeKey {
        self.identity.public_key()
    }

    /// A signed datagram carrying `message`, stamped with the simulation's clock.
    pub fn sealed(&mut self, sim: &Sim, message: &Message) -> Vec<u8> {
        self.nonce += 1;
        let mut body = Vec::new();
        message.encode(&mut body);
        let mut buf = vec![0u8; 2048];
        let ts = EPOCH_MS + sim.now.duration_since(sim.t0).as_millis() as u64;
        let n = seal(
            &mut buf,
            message.kind(),
            self.identity.signing_key(),
            ts,
            self.nonce,
            &body,
        )
        .unwrap();
        buf.truncate(n);
        buf
    }

    pub fn register(&mut self, sim: &mut Sim, lan: &[&str]) -> Option<Message> {
        self.register_as(sim, lan, None)
    }

    /// Registers claiming `hostname`.
    /// First contact from `at`: a registration without a cookie is answered with a
    /// `Challenge` (no larger than the request) and registers nothing; keeps the cookie.
    pub fn fetch_cookie(&mut self, sim: &mut Sim) {
        let msg = Message::Register {
            lan: vec![],
            hostname: None,
            cookie: None,
            trust_digest: sim.server.ledger().digest_of(&self.key()),
        };
        let d = self.sealed(sim, &msg);
        let sent = sim.send(self.port, self.at, &d).expect("a challenge");
        assert!(sent.2.len() <= d.len(), "challenge larger than the request");
        let Message::Challenge { cookie, .. } = sim.message(&sent) else {
            panic!("expected a challenge")
        };
        assert!(sim.server.registration(&self.key(), sim.now).is_none());
        self.cookie = Some(cookie);
    }

    /// A node does: a `Challenge` (first contact from this endpoint) is answered by
    /// registering again with its cookie, and the answer to that is returned.
    pub fn register_as(
        &mut self,
        sim: &mut Sim,
        lan: &[&str],
        name: Option<&str>,
    ) -> Option<Message> {
        for _ in 0..2 {
            let msg = Message::Register {
                lan: lan.iter().map(|s| s.parse().unwrap()).collect(),
                hostname: name.map(|n| n.parse().unwrap()),
                cookie: self.cookie,
                trust_digest: self
                    .trust_digest
                    .unwrap_or_else(|| sim.server.ledger().digest_of(&self.key())),
            };
            let d = self.sealed(sim, &msg);
            let reply = sim.send(self.port, self.at, &d).map(|s| sim.message(&s));
            match reply {
                Some(Message::Challenge { cookie, .. }) => self.cookie = Some(cookie),
                other => return other,
            }
        }
        panic!("challenged twice in a row")
    }

    pub fn ask(&mut self, sim: &mut Sim, port: Port, msg: &Message) -> Option<Message> {
        let d = self.sealed(sim, msg);
        sim.send(port, self.at, &d).map(|s| sim.message(&s))
    }

    pub fn submit(&mut self, sim: &mut Sim, statement: &Statement) -> Option<Message> {
        let msg = Message::Submit {
            statement: statement.clone(),
        };
        self.ask(sim, self.port, &msg)
    }

    pub fn ack(&mut self, sim: &mut Sim, id: u64) {
        let d = self.sealed(sim, &Message::Ack { id });
        assert_eq!(
            sim.send(self.port, self.at, &d),
            None,
            "acks are not answered"
        );
    }

    pub fn signing_key(&self) -> &ed25519_dalek::SigningKey {
        self.identity.signing_key()
    }

    /// This node's approval of `other`, issued at `issued_ms`.
    pub fn approve(&self, other: &Client, issued_ms: u64) -> TrustRecord {
        TrustRecord::approve(self.signing_key(), other.key(), issued_ms).unwrap()
    }

    /// A record approved by `self` and countersigned by `other`.
    pub fn record_with(&self, other: &Client, issued_ms: u64) -> Statement {
        let record = self.approve(other, issued_ms);
        Statement::Record(record.countersign(other.signing_key(), issued_ms).unwrap())
    }
}

impl Sim {
    pub fn new() -> Sim {
        Sim::with(MemoryStore::new(), |_| {})
    }

    /// A server whose writes wait for [`Sim::run_store`], as the daemon's wait for its store's
    /// thread, whatever `PILOT_SIM_QUEUED_STORE` says.
    pub fn queued(store: MemoryStore) -> Sim {
        Sim::queued_with(store, |_| {})
    }

    /// [`Sim::queued`] with a configuration changed by `tweak`.
    pub fn queued_with(store: MemoryStore, tweak: impl FnOnce(&mut Config)) -> Sim {
        let mut sim = Sim::with(store.clone(), |_| {});
        let clock = WallClock::new(sim.t0, EPOCH_MS);
        let mut config = Config {
            name_ttl: sim.name_ttl,
            ..Config::new(Identity::from_secret_bytes(&[0xee; 32]), MAIN, ALT)
        };
        tweak(&mut config);
        let (server, writer) = server_on(config, Box::new(store), 7, clock, sim.t0, true);
        (sim.server, sim.writer) = (server, writer);
        sim
    }

    pub fn with(store: MemoryStore, tweak: impl FnOnce(&mut Config)) -> Sim {
        let mut sim = Sim::on(Box::new(store.clone()), tweak);
        sim.store = store;
        sim
    }

    /// A server on any store (`self.store` is then a stand-in that sees nothing).
    pub fn on(store: Box<dyn Store>, tweak: impl FnOnce(&mut Config)) -> Sim {
        let t0 = Instant::now();
        let mut config = Config::new(Identity::from_secret_bytes(&[0xee; 32]), MAIN, ALT);
        tweak(&mut config);
        let name_ttl = config.name_ttl;
        let clock = WallClock::new(t0, EPOCH_MS);
        let (server, writer) = server_on(config, store, 7, clock, t0, queued_store());
        let store = MemoryStore::new();
        Sim {
            server,
            store,
            t0,
            now: t0,
            out: vec![0; 65535],
            name_ttl,
            backlog: Default::default(),
            writer,
        }
    }

    /// Runs the writes a queued server asked for, in order, and hands back their results, as
    /// the daemon's store thread does.
    pub fn run_store(&mut self) {
        let Some(writer) = self.writer.as_mut() else {
            return;
        };
        while let Some((ticket, op)) = self.server.poll_store() {
            let result = op.run(writer.as_mut());
            self.server.handle_store(ticket, result, self.now);
        }
    }

    /// One datagram in, as a batch of its own: the answer, given at once or (a registration
    /// that changed) once `commit` has written it.
    pub fn send(&mut self, port: Port, from: SocketAddr, datagram: &[u8]) -> Option<Sent> {
        self.deliver(port, None, from, datagram)
            .map(|(_, sent)| sent)
    }

    /// `send` to the server's address `local_ip` (if given); the answer with the address it
    /// leaves from.
    pub fn deliver(
        &mut self,
        port: Port,
        local_ip: Option<IpAddr>,
        from: SocketAddr,
        datagram: &[u8],
    ) -> Option<(Option<IpAddr>, Sent)> {
        let direct = (self.server)
            .handle_datagram(port, local_ip, from, datagram, self.now, &mut self.out)
            .map(|t| (t.src_ip, (t.port, t.to, t.payload.to_vec())));
        if direct.is_some() {
            self.run_store();
            return direct;
        }
        // What was queued before stays ahead of the answer `commit` (or a queued write)
        // queues.
        while let Some(queued) = self.poll_server() {
            self.backlog.push_back(queued);
        }
        let answered = self.server.commit(self.now);
        if self.writer.is_some() {
            self.run_store();
            return self.poll_server();
        }
        if answered > 0 {
            return self.poll_server();
        }
        None
    }

    pub fn poll_server(&mut self) -> Option<(Option<IpAddr>, Sent)> {
        let t = self.server.poll_transmit(&mut self.out)?;
        Some((t.src_ip, (t.port, t.to, t.payload.to_vec())))
    }

    /// The next datagram queued for sending, and the address it leaves from.
    pub fn poll_with_source(&mut self) -> Option<(Option<IpAddr>, Sent)> {
        self.backlog.pop_front().or_else(|| self.poll_server())
    }

    pub fn poll(&mut self) -> Option<Sent> {
        self.poll_with_source().map(|(_, sent)| sent)
    }

    /// Opens a reply, checking it is signed by the server.
    pub fn message(&self, sent: &Sent) -> Message {
        let opened = open(&sent.2).expect("replies are sealed");
        assert_eq!(opened.sender, self.server.public_key());
        Message::decode(opened.kind, opened.body).unwrap()
    }

    /// Runs every timer due until `by` from now. What they send waits in `poll`.
    pub fn advance(&mut self, by: Duration) {
        let until = self.now + by;
        while let Some((t, _)) = self.server.poll_timeout() {
            if t > until {
                break;
            }
            self.now = self.now.max(t);
            self.server.handle_timeout(self.now);
            self.run_store();
        }
        self.now = until;
    }

    /// The wall clock now, as signed statements carry it.
    pub fn now_ms(&self) -> u64 {
        EPOCH_MS + self.now.duration_since(self.t0).as_millis() as u64
    }

    /// Everything queued for sending, opened.
    pub fn drain(&mut self) -> Vec<(SocketAddr, Message)> {
        let mut out = Vec::new();
        while let Some(sent) = self.poll() {
            out.push((sent.1, self.message(&sent)));
        }
        out
    }

    /// The `Deliver`s queued for `to`: (id, from_name, statement); everything else queued is
    /// dropped.
    pub fn deliveries_to(&mut self, to: SocketAddr) -> Vec<(u64, Option<String>, Statement)> {
        let delivered = self.drain().into_iter().filter(|(at, _)| *at == to);
        delivered
            .filter_map(|(_, m)| match m {
                Message::Deliver {
                    id,
                    from_name,
                    statement,
                } => Some((id, from_name.map(|n| n.to_string()), statement)),
                _ => None,
            })
            .collect()
    }

    /// A new server on the store `open` returns, with the same wall clock, as after a crash.
    pub fn restart(&mut self, open: impl FnOnce() -> Box<dyn Store>) {
        self.restart_with(open, |_| {});
    }

    /// [`Sim::restart`] with a configuration changed by `tweak`.
    pub fn restart_with(
        &mut self,
        open: impl FnOnce() -> Box<dyn Store>,
        tweak: impl Fn(&mut Config),
    ) {
        // The old server goes first: a SQLite store stays locked while it is open.
        let config = || {
            let mut config = Config {
                name_ttl: self.name_ttl,
                ..Config::new(Identity::from_secret_bytes(&[0xee; 32]), MAIN, ALT)
            };
            tweak(&mut config);
            config
        };
        let clock = WallClock::new(self.t0, EPOCH_MS);
        let placeholder = Box::new(MemoryStore::new());
        let queued = queued_store() || self.writer.is_some();
        self.writer = None;
        self.server = Server::new(config(), placeholder, 8, clock, self.now).unwrap();
        let (server, writer) = server_on(config(), open(), 9, clock, self.now, queued);
        (self.server, self.writer) = (server, writer);
        // As the daemon does first thing.
        self.server.handle_timeout(self.now);
        self.run_store();
    }
}

/// Registers a and b and makes them trust each other.
pub fn pair(sim: &mut Sim) -> (Client, Client) {
    let mut a = Client::new(1, "198.51.100.1:40001");
    let mut b = Client::new(2, "203.0.113.2:40002");
    assert!(matches!(
        a.register(sim, &["10.0.0.1:51870"]),
        Some(Message::Registered { .. })
    ));
    assert!(matches!(
        b.register(sim, &["10.1.0.2:51870", "[fd00::2]:51870"]),
        Some(Message::Registered { .. })
    ));
    trust(sim, &mut a, &mut b);
    (a, b)
}

/// `a` submits a complete record with `b`, issued now; `b` takes delivery and acknowledges it.
pub fn trust(sim: &mut Sim, a: &mut Client, b: &mut Client) {
    let record = b.record_with(a, sim.now_ms());
    assert!(matches!(
        a.submit(sim, &record),
        Some(Message::Stored { .. })
    ));
    for (id, _, statement) in sim.deliveries_to(b.at) {
        assert_eq!(statement, record);
        b.ack(sim, id);
    }
    assert!(sim.server.ledger().trusted(&a.key(), &b.key()));
}

/// The refusal code of a reply.
pub fn refused(reply: Option<Message>) -> RefusalCode {
    match reply {
        Some(Message::Refused { code, .. }) => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

pub fn name(s: &str) -> Hostname {
    s.parse().unwrap()
}

pub fn registered(reply: Option<Message>) {
    assert!(
        matches!(reply, Some(Message::Registered { .. })),
        "{reply:?}"
    );
}

/// The key a lookup finds, and its hostname.
pub fn look_up(
    sim: &mut Sim,
    asker: &mut Client,
    query: Query,
) -> Option<(NodeKey, Option<String>)> {
    match asker.ask(sim, Port::Main, &Message::Lookup { query }) {
        Some(Message::LookupReply { echo, found }) => {
            assert_eq!(echo, asker.nonce);
            found.map(|f| (f.key, f.hostname.map(|h| h.to_string())))
        }
        other => panic!("{other:?}"),
    }
}

pub fn request(from: &Client, to: &Client, issued_ms: u64) -> Statement {
    let request = TrustRequest::sign(from.signing_key(), to.key(), issued_ms, 7, "backups");
    Statement::Request(request.unwrap())
}

/// a (named "alice") asks b, who is not registered; the request reaches b when b registers
/// after a restart of the server, is resent until b acknowledges it, and is gone after that.
pub fn a_request_waits_for_its_target_across_a_restart(
    mut sim: Sim,
    reopen: impl Fn() -> Box<dyn Store>,
) {
    let mut a = Client::new(1, "198.51.100.1:40001");
    let mut b = Client::new(2, "203.0.113.2:40002");
    a.register_as(&mut sim, &[], Some("alice")).unwrap();
    let ask = request(&a, &b, sim.now_ms());
    assert!(matches!(
        a.submit(&mut sim, &ask),
        Some(Message::Stored { .. })
    ));
    assert_eq!(sim.drain(), vec![], "b is not registered");
    assert_ne!(sim.server.poll_timeout().unwrap().1, "delivery");

    sim.now += Duration::from_secs(10);
    sim.restart(&reopen);
    assert!(matches!(
        b.register(&mut sim, &[]),
        Some(Message::Registered { .. })
    ));
    let delivered = sim.deliveries_to(b.at);
    let [(id, from_name, statement)] = &delivered[..] else {
        panic!("{delivered:?}")
    };
    let id = *id;
    assert_eq!(
        from_name.as_deref(),
        Some("alice"),
        "named by the requester"
    );
    assert_eq!(statement, &ask);

    // Unacknowledged, it comes again every two seconds. An ack from a is not b's.
    assert_eq!(
        sim.server.poll_timeout().unwrap(),
        (sim.now + RESEND_INTERVAL, "delivery")
    );
    sim.advance(RESEND_INTERVAL);
    assert_eq!(sim.deliveries_to(b.at)[0].0, id);
    a.ack(&mut sim, id);
    sim.advance(RESEND_INTERVAL);
    assert_eq!(sim.deliveries_to(b.at)[0].0, id);

    b.ack(&mut sim, id);
    assert_eq!(sim.server.counters().acks, 1);
    sim.advance(RESEND_INTERVAL * 5);
    assert_eq!(
        sim.deliveries_to(b.at),
        vec![],
        "acknowledged: no more resends"
    );

    // Acknowledged means deleted from the store: not even a restart brings it back.
    sim.restart(&reopen);
    b.register(&mut sim, &[]).unwrap();
    assert_eq!(sim.deliveries_to(b.at), vec![]);
}

/// A name's TTL counts from its holder's last registration, across restarts of the server
/// on the same store: a restart neither resets it nor brings back an expired claim.
pub fn a_restart_does_not_reset_a_names_ttl(open: impl Fn() -> Box<dyn Store>) {
    let ttl = Duration::from_secs(3600);
    let mut sim = Sim::on(open(), |c| c.name_ttl = ttl);
    let mut a = Client::new(1, "198.51.100.1:40001");
    let mut c = Client::new(3, "192.0.2.3:3");
    registered(a.register_as(&mut sim, &[], Some("alice")));
    sim.advance(Duration::from_secs(40 * 60));
    sim.restart(&open);
    let found = look_up(&mut sim, &mut c, Query::Name(name("alice")));
    assert_eq!(found, Some((a.key(), Some("alice".into()))), "still held");
    // 40 + 21 minutes after a last registered: over the TTL although the server is younger.
    sim.advance(Duration::from_secs(21 * 60));
    assert_eq!(look_up(&mut sim, &mut c, Query::Name(name("alice"))), None);
    registered(c.register_as(&mut sim, &[], Some("alice")));
    // And a restart does not bring a's claim back.
    sim.advance(Duration::from_secs(30 * 60));
    sim.restart(&open);
    let found = look_up(&mut sim, &mut a, Query::Name(name("alice")));
    assert_eq!(found, Some((c.key(), Some("alice".into()))));
}
