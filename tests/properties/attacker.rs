//! Attackers: hosts on addresses of their own holding throwaway keys. They register (answering
//! the rendezvous' challenge, as a real client must), then flood: trust requests, approvals and
//! revocations aimed at honest nodes and at keys nobody holds, introductions they are not
//! entitled to, lookups, junk, WireGuard handshakes, and replays of any datagram captured on
//! the network, sent to the rendezvous or a node from any address.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use boringtun::noise::{Tunn, TunnResult};
use pilot::identity::Identity;
use pilot::rendezvous::Port;
use pilot::wire::control::{write_relay, Message, Query, CHALLENGE, REGISTERED, RELAY_TO};
use pilot::wire::envelope;
use pilot::wire::trust::{Revocation, Statement, TrustRecord, TrustRequest};

use crate::checks::Stats;
use crate::world::{identity_from, World, RDV_IP, RDV_PORT};

pub struct Attacker {
    pub host: usize,
    pub local: SocketAddr,
    keys: Vec<Identity>,
    registered: Vec<bool>,
    /// Registration nonce → key, to answer the challenge with the right key.
    pending: BTreeMap<u64, usize>,
    nonce: u64,
}

fn rendezvous() -> SocketAddr {
    SocketAddr::new(RDV_IP.parse().unwrap(), RDV_PORT)
}

impl Attacker {
    pub fn new(host: usize, local: SocketAddr) -> Attacker {
        Attacker {
            host,
            local,
            keys: Vec::new(),
            registered: Vec::new(),
            pending: BTreeMap::new(),
            nonce: 0,
        }
    }

    fn seal(&mut self, k: usize, message: &Message, now_ms: u64) -> (u64, Vec<u8>) {
        let mut body = Vec::new();
        message.encode(&mut body);
        self.nonce += 1;
        let mut out = vec![0u8; 2048];
        let n = envelope::seal(
            &mut out,
            message.kind(),
            self.keys[k].signing_key(),
            now_ms,
            self.nonce,
            &body,
        )
        .unwrap();
        out.truncate(n);
        (self.nonce, out)
    }

    fn register(&mut self, k: usize, cookie: Option<[u8; 16]>, now_ms: u64) -> Vec<u8> {
        let message = Message::Register {
            lan: vec![self.local],
            hostname: None,
            trust_digest: 0,
            cookie,
        };
        let (nonce, bytes) = self.seal(k, &message, now_ms);
        self.pending.insert(nonce, k);
        bytes
    }

    /// What the attacker's client does with a datagram that reached it: a challenge is
    /// answered with the cookie, a registration noted.
    pub fn receive(
        &mut self,
        _from: SocketAddr,
        payload: &[u8],
        stats: &mut Stats,
        now_ms: u64,
    ) -> Vec<(SocketAddr, Vec<u8>)> {
        let Ok(opened) = envelope::open(payload) else {
            return Vec::new();
        };
        if opened.kind != CHALLENGE && opened.kind != REGISTERED {
            return Vec::new();
        }
        match Message::decode(opened.kind, opened.body) {
            Ok(Message::Challenge { echo, cookie }) => match self.pending.remove(&echo) {
                Some(k) => vec![(rendezvous(), self.register(k, Some(cookie), now_ms))],
                None => Vec::new(),
            },
            Ok(Message::Registered { echo, .. }) => {
                if let Some(k) = self.pending.remove(&echo) {
                    if !self.registered[k] {
                        stats.attacker_registered += 1;
                    }
                    self.registered[k] = true;
                }
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// Every key this attacker made.
    pub fn keys(&self) -> impl Iterator<Item = pilot::identity::NodeKey> + '_ {
        self.keys.iter().map(Identity::public_key)
    }

    fn some_registered(&self, pick: usize) -> Option<usize> {
        let live: Vec<usize> = (0..self.keys.len())
            .filter(|&k| self.registered[k])
            .collect();
        (!live.is_empty()).then(|| live[pick % live.len()])
    }
}

impl World {
    /// Attacker `a` does one random thing.
    pub fn attack(&mut self, a: usize) {
        let now_ms = self.clock.unix_ms(self.now);
        // A node that is down is the one to flood: nothing drains its outbox meanwhile.
        let down = (0..self.honest.len()).find(|&i| !self.is_up(i));
        let target = match down {
            Some(i) if self.rng.chance(700) => i,
            _ => self.rng.below(self.honest.len()),
        };
        let target_key = self.honest[target].key;
        let stranger = identity_from(&mut self.rng).public_key();
        let pick = self.rng.below(1 << 20);
        let choice = self.rng.below(100);
        let mut sends: Vec<Vec<u8>> = Vec::new();
        let attacker = &mut self.attackers[a];
        match choice {
            // A fresh key registers (or tries to: the challenge comes back to it).
            0..=14 => {
                for _ in 0..4 {
                    let id = identity_from(&mut self.rng);
                    attacker.keys.push(id);
                    attacker.registered.push(false);
                    let k = attacker.keys.len() - 1;
                    self.checks.stats.attacker_keys += 1;
                    sends.push(attacker.register(k, None, now_ms));
                }
            }
            // Trust statements from a registered key, in bursts.
            15..=49 => {
                if let Some(k) = attacker.some_registered(pick) {
                    let signing = attacker.keys[k].signing_key().clone();
                    for i in 0..8u64 {
                        let other = if i % 2 == 0 { target_key } else { stranger };
                        let statement = match (pick as u64 + i) % 4 {
                            0 => Statement::Request(
                                TrustRequest::sign(&signing, other, now_ms, pick as u64 + i, "hi")
                                    .unwrap(),
                            ),
                            1 => Statement::Record(
                                TrustRecord::approve(&signing, other, now_ms).unwrap(),
                            ),
                            2 => Statement::Revocation(
                                Revocation::sign(&signing, other, now_ms, "").unwrap(),
                            ),
                            _ => Statement::Request(
                                TrustRequest::sign(&signing, other, now_ms + 60_000, i, "later")
                                    .unwrap(),
                            ),
                        };
                        let (_, bytes) = attacker.seal(k, &Message::Submit { statement }, now_ms);
                        sends.push(bytes);
                    }
                }
            }
            // Introductions and lookups it is not entitled to.
            50..=59 => {
                if let Some(k) = attacker.some_registered(pick) {
                    let (_, c) = attacker.seal(k, &Message::Connect { target: target_key }, now_ms);
                    let query = Query::Key(target_key);
                    let (_, l) = attacker.seal(k, &Message::Lookup { query }, now_ms);
                    // And a relay frame for the node, from the registered endpoint.
                    let mut frame = vec![0u8; 128];
                    let n = write_relay(&mut frame, RELAY_TO, &target_key, &[4; 64]).unwrap();
                    frame.truncate(n);
                    sends.extend([c, l, frame]);
                }
            }
            // Replays of captured datagrams, to the rendezvous or a node, from anywhere.
            60..=84 => {
                for _ in 0..4 {
                    self.replay_one(a);
                }
            }
            // Junk.
            85..=92 => {
                let len = 1 + self.rng.below(300);
                let mut junk: Vec<u8> = (0..len).map(|_| self.rng.next_u64() as u8).collect();
                if self.rng.chance(500) {
                    junk[0] = 0x50 + self.rng.below(20) as u8;
                }
                let from = self.attackers[a].local;
                self.checks.stats.attacker_datagrams += 1;
                if self.rng.chance(500) {
                    self.server_receive(Port::Main, from, &junk);
                } else {
                    self.node_receive(target, from, &junk);
                }
            }
            // A WireGuard handshake from a key the node does not trust, straight at it.
            _ => {
                let id = identity_from(&mut self.rng);
                let theirs = self.honest[target].key.x25519_public().unwrap();
                let mut tunn = Tunn::new(id.x25519_secret(), theirs, None, None, 1, None);
                let mut out = vec![0u8; 256];
                if let TunnResult::WriteToNetwork(p) =
                    tunn.format_handshake_initiation(&mut out, true)
                {
                    let p = p.to_vec();
                    let from = self.attackers[a].local;
                    self.checks.stats.attacker_datagrams += 1;
                    self.node_receive(target, from, &p);
                }
            }
        }
        let (host, local) = (self.attackers[a].host, self.attackers[a].local);
        for bytes in sends {
            self.checks.stats.attacker_datagrams += 1;
            self.emit(host, local, rendezvous(), &bytes);
        }
    }

    /// Sends a captured datagram again, unchanged, from a spoofed or the attacker's address.
    fn replay_one(&mut self, a: usize) {
        if self.captured.is_empty() {
            return;
        }
        let bytes = self.captured[self.rng.below(self.captured.len())].clone();
        let victim = self.rng.below(self.honest.len());
        let from = match self.rng.below(3) {
            0 => self.attackers[a].local,
            1 => self.node_public(victim).unwrap_or(self.attackers[a].local),
            _ => SocketAddr::new(
                self.attackers[a].local.ip(),
                1 + self.rng.below(65535) as u16,
            ),
        };
        self.checks.stats.replays += 1;
        if self.rng.chance(600) {
            let port = if self.rng.chance(900) {
                Port::Main
            } else {
                Port::Alt
            };
            self.server_receive(port, from, &bytes);
        } else {
            let to = self.rng.below(self.honest.len());
            let from = if self.rng.chance(500) {
                SocketAddr::new(RDV_IP.parse().unwrap(), RDV_PORT)
            } else {
                from
            };
            self.node_receive(to, from, &bytes);
        }
    }
}
