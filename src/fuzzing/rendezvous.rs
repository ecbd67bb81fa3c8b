//! A real rendezvous `Server` (over a `MemoryStore`) fed sequences of datagrams: raw bytes
//! on either port from anywhere, control messages sealed by three known nodes (bodies from
//! the input, or well-formed registrations that echo the address cookie the server handed
//! out, trust statements, introductions, lookups), relay frames, replays and timers; some
//! over a TLS stream's endpoint, and that endpoint spoofed on UDP. The
//! server never panics, never answers an endpoint it has not seen proven with more bytes
//! than it was sent, and sends nothing unprompted but to registered endpoints.
//!
//! `rendezvous_queued` runs the same on a server whose writes are queued, as the daemon's are:
//! between steps the input decides how many of the writes asked for the store runs (in order),
//! and which of them fail, so answers and effects land at any point after what caused them.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::input::Input;
use super::memo;
use super::wire::fixed_identity;
use crate::clock::WallClock;
use crate::identity::{Identity, NodeKey};
use crate::rendezvous::{Config, MemoryStore, Port, Server, Store, StoreOp};
use crate::wire::control::{write_relay, Message, Query, CHALLENGE, COOKIE_LEN, RELAY_TO};
use crate::wire::envelope::open;
use crate::wire::trust::{Revocation, Statement, TrustRecord, TrustRequest};

const EPOCH_MS: u64 = 1_800_000_000_000;
const SERVER_ID: u8 = 3;
/// The nodes (by fixed identity) and where they are.
const CLIENTS: [u8; 3] = [4, 5, 6];
const ENDPOINTS: [&str; 5] = [
    "198.51.100.10:1000",
    "198.51.100.11:2000",
    "[2001:db8::12]:3000",
    // A victim whose address others may claim.
    "192.0.2.99:53",
    // A TLS stream (salt 0x5a17, connection 1), opened from 203.0.113.50.
    "[100::5a17:0:1]:443",
];
/// The stream endpoint of `ENDPOINTS`.
const STREAM: usize = 4;
const NAMES: [&str; 3] = ["bob", "alice", "db-1"];

struct World {
    server: Server,
    t0: Instant,
    now: Instant,
    /// The cookie the server last handed to each endpoint.
    cookies: BTreeMap<SocketAddr, [u8; COOKIE_LEN]>,
    nonce: u64,
    last: Option<(Port, SocketAddr, Vec<u8>)>,
    out: Vec<u8>,
    /// A queued server's store and the writes it asked for, not yet run.
    writer: Option<(MemoryStore, std::collections::VecDeque<(u64, StoreOp)>)>,
    /// Endpoints that sent something: a queued server answers them after its write.
    senders: std::collections::BTreeSet<SocketAddr>,
}

pub fn rendezvous_datagrams(data: &[u8]) {
    run(data, false);
}

pub fn rendezvous_queued(data: &[u8]) {
    run(data, true);
}

fn run(data: &[u8], queued: bool) -> World {
    let mut input = Input::new(data);
    let t0 = Instant::now();
    let identity = Identity::from_secret_bytes(&fixed_identity(SERVER_ID).signing_key().to_bytes());
    let config = Config::new(identity, 7400, 7401);
    let clock = WallClock::new(t0, EPOCH_MS);
    let store = MemoryStore::new();
    let (mut server, writer) = if queued {
        let snapshot = Default::default();
        let server = Server::with_queued_store(config, snapshot, 11, clock, t0);
        (server, Some((store, Default::default())))
    } else {
        let server = Server::new(config, Box::new(store), 11, clock, t0);
        (server.expect("a memory store loads"), None)
    };
    server.stream_opened(
        ep(ENDPOINTS[STREAM]),
        "203.0.113.50".parse().expect("an address"),
    );
    let mut world = World {
        server,
        t0,
        now: t0,
        cookies: BTreeMap::new(),
        nonce: 0,
        last: None,
        out: vec![0; 65535],
        writer,
        senders: Default::default(),
    };
    for _ in 0..48 {
        if input.is_empty() {
            break;
        }
        world.step(&mut input);
        if queued {
            // (Read only here, so rendezvous_datagrams' inputs keep their meaning.)
            let count = input.u8();
            world.run_store(usize::from(count % 4), &mut input);
        }
    }
    world.run_store(usize::MAX, &mut input);
    world
}

fn ep(s: &str) -> SocketAddr {
    s.parse().expect("a socket address")
}

impl World {
    fn wall_ms(&self) -> u64 {
        EPOCH_MS + self.now.duration_since(self.t0).as_millis() as u64
    }

    fn step(&mut self, input: &mut Input<'_>) {
        let port_byte = input.u8();
        let client = input.choose(CLIENTS.len());
        // Mostly from the client's own endpoint; sometimes from someone else's.
        let from = ep(ENDPOINTS[if input.u8().is_multiple_of(4) {
            input.choose(ENDPOINTS.len())
        } else {
            client
        }]);
        // A stream's endpoint mostly over its stream (sometimes spoofed on UDP); the others
        // mostly at the main port, sometimes the alternate, sometimes (a confused daemon) as
        // if from a stream.
        let port = match (from == ep(ENDPOINTS[STREAM]), port_byte % 8) {
            (true, 0) => Port::Main,
            (true, _) => Port::Stream,
            (false, 0) => Port::Alt,
            (false, 7) => Port::Stream,
            (false, _) => Port::Main,
        };
        let datagram = match input.u8() % 8 {
            0 => input.bytes(1500).to_vec(),
            1 => {
                let kind = 0x50 + input.u8() % 0x14;
                let body = input.bytes(600).to_vec();
                self.seal(client, kind, &body, input)
            }
            2 => {
                let message = Message::Register {
                    lan: (0..input.choose(3)).map(|i| ep(ENDPOINTS[i])).collect(),
                    hostname: [None, Some(0), Some(1), Some(2)][input.choose(4)]
                        .map(|n| NAMES[n].parse().expect("a name")),
                    trust_digest: if input.bool() {
                        self.server.ledger().digest_of(&key(client))
                    } else {
                        input.u64()
                    },
                    cookie: if input.u8().is_multiple_of(8) {
                        None
                    } else {
                        self.cookies.get(&from).copied()
                    },
                };
                self.message(client, &message, input)
            }
            3 => {
                let target = key(input.choose(CLIENTS.len()));
                let payload = input.bytes(1400);
                let mut frame = vec![0; payload.len() + 33];
                match write_relay(&mut frame, RELAY_TO, &target, payload) {
                    Some(_) => frame,
                    None => return,
                }
            }
            4 => {
                let until = self.now + Duration::from_millis(u64::from(input.u16()) * 50);
                while let Some((t, _)) = self.server.poll_timeout() {
                    if t > until {
                        break;
                    }
                    self.now = self.now.max(t);
                    self.server.handle_timeout(self.now);
                    self.drain();
                }
                self.now = until;
                let _ = self.server.flush(self.now);
                return;
            }
            5 => {
                let Some(statement) = self.statement(client, input) else {
                    return;
                };
                self.message(client, &Message::Submit { statement }, input)
            }
            6 => {
                let other = key(input.choose(CLIENTS.len()));
                let message = match input.u8() % 4 {
                    0 => Message::Connect { target: other },
                    1 => Message::Lookup {
                        query: Query::Name(NAMES[input.choose(3)].parse().expect("a name")),
                    },
                    2 => Message::Ack {
                        id: input.u64() % 4,
                    },
                    _ => Message::ReleaseName {
                        name: NAMES[input.choose(3)].parse().expect("a name"),
                    },
                };
                self.message(client, &message, input)
            }
            _ => match self.last.clone() {
                Some((port, from, d)) => return self.deliver(port, from, &d),
                None => return,
            },
        };
        self.deliver(port, from, &datagram);
    }

    fn message(&mut self, client: usize, message: &Message, input: &mut Input<'_>) -> Vec<u8> {
        let mut body = Vec::new();
        message.encode(&mut body);
        self.seal(client, message.kind(), &body, input)
    }

    fn seal(&mut self, client: usize, kind: u8, body: &[u8], input: &mut Input<'_>) -> Vec<u8> {
        self.nonce += 1;
        let skew_ms = if input.u8().is_multiple_of(16) {
            (i64::from(input.u8()) - 128) * 500
        } else {
            0
        };
        let ts = self.wall_ms().saturating_add_signed(skew_ms);
        memo::seal(kind, CLIENTS[client], ts, self.nonce, body).unwrap_or_default()
    }

    /// A trust statement between two of the nodes, signed as they would (or half-signed, or
    /// with a signature broken). Signing is deterministic: each is signed once, then kept.
    fn statement(&self, client: usize, input: &mut Input<'_>) -> Option<Statement> {
        thread_local! {
            static SIGNED: memo::Cache<(usize, usize, u64, u8), Option<Statement>> =
                RefCell::new(HashMap::new());
        }
        let other = input.choose(CLIENTS.len());
        let issued = self.wall_ms() - u64::from(input.u8()) * 1000;
        let form = input.u8() % 4;
        let mut statement = memo::cached(&SIGNED, (client, other, issued, form), || {
            signed_statement(CLIENTS[client], CLIENTS[other], issued, form)
        })?;
        if input.u8() == 0xff {
            match &mut statement {
                Statement::Request(r) => r.signature[0] ^= 1,
                Statement::Record(r) => r.high_signature[0] ^= 1,
                Statement::Revocation(v) => v.signature[0] ^= 1,
            }
        }
        Some(statement)
    }

    fn deliver(&mut self, port: Port, from: SocketAddr, datagram: &[u8]) {
        self.last = Some((port, from, datagram.to_vec()));
        self.senders.insert(from);
        let proven = self.registered().contains(&from);
        let now = self.now;
        let mut out = std::mem::take(&mut self.out);
        if let Some(t) = self
            .server
            .handle_datagram(port, None, from, datagram, now, &mut out)
        {
            if t.to == from && !proven {
                assert!(
                    t.payload.len() <= datagram.len(),
                    "{} bytes answered {} to an unproven endpoint",
                    t.payload.len(),
                    datagram.len()
                );
            }
            if t.to != from {
                assert!(
                    self.registered().contains(&t.to),
                    "sent to an endpoint nobody registered"
                );
            }
            let (to, payload) = (t.to, t.payload.to_vec());
            self.learn(to, &payload);
        }
        self.out = out;
        // Each datagram a batch of its own: what changed is written and answered now.
        self.server.commit(now);
        self.drain();
    }

    /// Everything queued goes to registered endpoints.
    /// A queued server's store runs up to `count` of the writes asked for, in order; the
    /// input makes some fail.
    fn run_store(&mut self, count: usize, input: &mut Input<'_>) {
        let Some((_, ops)) = self.writer.as_mut() else {
            return;
        };
        while let Some(op) = self.server.poll_store() {
            ops.push_back(op);
        }
        for _ in 0..count {
            let Some((store, ops)) = self.writer.as_mut() else {
                return;
            };
            let Some((ticket, op)) = ops.pop_front() else {
                return;
            };
            store.fail_writes(input.u8() % 16 == 15);
            let mut handle = store.clone();
            let result = op.run(&mut handle as &mut dyn Store);
            self.server.handle_store(ticket, result, self.now);
            self.drain();
            // What the answers set off may ask for more writes, after these.
            let Some((_, ops)) = self.writer.as_mut() else {
                return;
            };
            while let Some(op) = self.server.poll_store() {
                ops.push_back(op);
            }
        }
    }

    fn drain(&mut self) {
        let mut out = std::mem::take(&mut self.out);
        while let Some(t) = self.server.poll_transmit(&mut out) {
            let (to, payload) = (t.to, t.payload.to_vec());
            // A queued server answers once the write is done: to whoever asked.
            let asked = self.writer.is_some() && self.senders.contains(&to);
            assert!(
                asked || self.registered().contains(&to),
                "queued datagram for an endpoint nobody registered"
            );
            self.learn(to, &payload);
        }
        self.out = out;
    }

    /// Keeps the cookie of a `Challenge`, as the node at `to` would.
    fn learn(&mut self, to: SocketAddr, payload: &[u8]) {
        // An envelope's kind is its first byte: anything else is not a `Challenge`, and is
        // not worth a signature check.
        if payload.first() != Some(&CHALLENGE) {
            return;
        }
        let Ok(opened) = open(payload) else {
            return;
        };
        if let Ok(Message::Challenge { cookie, .. }) = Message::decode(opened.kind, opened.body) {
            self.cookies.insert(to, cookie);
        }
    }

    fn registered(&self) -> Vec<SocketAddr> {
        (0..CLIENTS.len())
            .filter_map(|c| self.server.registration(&key(c), self.now))
            .map(|r| r.observed)
            .collect()
    }
}

fn key(client: usize) -> NodeKey {
    fixed_identity(CLIENTS[client]).public_key()
}

/// `me`'s statement about `other` in one of four forms: a request, an approval, an approval
/// countersigned, a revocation.
fn signed_statement(me: u8, other: u8, issued: u64, form: u8) -> Option<Statement> {
    let (me, other) = (fixed_identity(me), fixed_identity(other));
    Some(match form {
        0 => Statement::Request(
            TrustRequest::sign(me.signing_key(), other.public_key(), issued, 1, "hi").ok()?,
        ),
        1 => Statement::Record(
            TrustRecord::approve(me.signing_key(), other.public_key(), issued).ok()?,
        ),
        2 => Statement::Record(
            TrustRecord::approve(me.signing_key(), other.public_key(), issued)
                .ok()?
                .countersign(other.signing_key(), issued)
                .ok()?,
        ),
        _ => Statement::Revocation(
            Revocation::sign(me.signing_key(), other.public_key(), issued, "bye").ok()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_seed_registers_its_node_over_the_stream() {
        let seeds = crate::fuzzing::seeds("rendezvous_datagrams");
        let world = run(&seeds[1], false);
        let registration = world.server.registration(&key(0), world.now);
        assert_eq!(
            registration.map(|r| r.observed),
            Some(ep(ENDPOINTS[STREAM])),
            "node 0 registered over its stream"
        );
        let udp = run(&seeds[0], false);
        assert_eq!(
            udp.server
                .registration(&key(0), udp.now)
                .map(|r| r.observed),
            Some(ep(ENDPOINTS[0]))
        );
    }
}
