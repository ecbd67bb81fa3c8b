//! A simulated internet: hosts on LANs behind NAT routers, public hosts, latency, and the four
//! NAT behaviours the lab uses — no NAT, full cone, port-restricted cone (Linux masquerade) and
//! symmetric (a new public port per destination).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum NatKind {
    /// Routed, no translation, no filtering.
    None,
    /// Endpoint-independent mapping and filtering.
    Cone,
    /// Endpoint-independent mapping, address-and-port-dependent filtering.
    Prc,
    /// Endpoint-dependent mapping and filtering.
    Sym,
}

pub const ALL_KINDS: [NatKind; 4] = [NatKind::None, NatKind::Cone, NatKind::Prc, NatKind::Sym];

/// One NAT router.
pub struct Nat {
    pub kind: NatKind,
    pub public_ip: IpAddr,
    next_port: u16,
    /// (private endpoint, destination for endpoint-dependent mapping) → public port.
    out: BTreeMap<(SocketAddr, Option<SocketAddr>), u16>,
    /// Public port → private endpoint and the remote endpoints it has sent to.
    inbound: BTreeMap<u16, (SocketAddr, BTreeSet<SocketAddr>)>,
    /// Port forwards (DNAT): public port → private endpoint, open to every remote.
    forwards: BTreeMap<u16, SocketAddr>,
    /// Flows that came in through a forward, (private endpoint, remote) → public port: the
    /// private side's packets to that remote leave from the forwarded port, as conntrack
    /// translates the replies of a DNAT flow.
    forwarded: BTreeMap<(SocketAddr, SocketAddr), u16>,
}

impl Nat {
    fn new(kind: NatKind, public_ip: IpAddr) -> Nat {
        Nat {
            kind,
            public_ip,
            next_port: 40000,
            out: BTreeMap::new(),
            inbound: BTreeMap::new(),
            forwards: BTreeMap::new(),
            forwarded: BTreeMap::new(),
        }
    }

    /// Forwards the public `port` to `private` (a port forward an operator set up).
    pub fn forward(&mut self, port: u16, private: SocketAddr) {
        self.forwards.insert(port, private);
        // Dynamic mappings never take a forwarded port.
        self.inbound.insert(port, (private, BTreeSet::new()));
    }

    /// The public source of a packet from `private` to `dst`, creating the mapping.
    fn outbound(&mut self, private: SocketAddr, dst: SocketAddr) -> SocketAddr {
        if let Some(&port) = self.forwarded.get(&(private, dst)) {
            return SocketAddr::new(self.public_ip, port);
        }
        let key = (private, (self.kind == NatKind::Sym).then_some(dst));
        let port = match self.out.get(&key) {
            Some(&port) => port,
            None => {
                // Cone and masquerade keep the source port when it is free, as Linux does.
                let preserve =
                    self.kind != NatKind::Sym && !self.inbound.contains_key(&private.port());
                let port = if preserve {
                    private.port()
                } else {
                    self.fresh_port()
                };
                self.out.insert(key, port);
                self.inbound.insert(port, (private, BTreeSet::new()));
                port
            }
        };
        if let Some((_, contacted)) = self.inbound.get_mut(&port) {
            contacted.insert(dst);
        }
        SocketAddr::new(self.public_ip, port)
    }

    /// Where a packet from `from` to our public `port` goes, if the filter lets it in.
    fn inbound(&mut self, from: SocketAddr, port: u16) -> Option<SocketAddr> {
        if let Some(&private) = self.forwards.get(&port) {
            self.forwarded.insert((private, from), port);
            return Some(private);
        }
        let (private, contacted) = self.inbound.get(&port)?;
        let allowed = match self.kind {
            NatKind::None | NatKind::Cone => true,
            NatKind::Prc | NatKind::Sym => contacted.contains(&from),
        };
        allowed.then_some(*private)
    }

    /// Forgets every mapping (a conntrack flush or router reboot); new ones get new ports.
    pub fn flush(&mut self) {
        self.out.clear();
        self.inbound.clear();
        self.forwarded.clear();
        for (&port, &private) in &self.forwards {
            self.inbound.insert(port, (private, BTreeSet::new()));
        }
        self.next_port = self.next_port.wrapping_add(1000).max(40000);
    }

    fn fresh_port(&mut self) -> u16 {
        loop {
            self.next_port = self.next_port.checked_add(1).unwrap_or(40000);
            if !self.inbound.contains_key(&self.next_port) {
                return self.next_port;
            }
        }
    }
}

/// A host: its address, and the NAT (by index) its LAN sits behind, if any.
#[derive(Debug, Clone)]
pub struct Host {
    pub ip: IpAddr,
    pub nat: Option<usize>,
}

#[derive(Debug)]
pub struct Delivery {
    pub host: usize,
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub payload: Vec<u8>,
}

/// The network: hosts, NATs, packets in flight.
pub struct Net {
    pub hosts: Vec<Host>,
    pub nats: Vec<Nat>,
    pub latency: Duration,
    /// Drop everything between two NATed hosts that does not involve `exempt` (the
    /// rendezvous): kills direct paths while the relay keeps working.
    pub block_direct: bool,
    pub exempt: Option<IpAddr>,
    queue: BinaryHeap<Reverse<(Instant, u64, usize)>>,
    in_flight: BTreeMap<u64, Delivery>,
    seq: u64,
    pub delivered: u64,
}

impl Net {
    pub fn new(latency: Duration) -> Net {
        Net {
            hosts: Vec::new(),
            nats: Vec::new(),
            latency,
            block_direct: false,
            exempt: None,
            queue: BinaryHeap::new(),
            in_flight: BTreeMap::new(),
            seq: 0,
            delivered: 0,
        }
    }

    pub fn add_nat(&mut self, kind: NatKind, public_ip: &str) -> usize {
        self.nats.push(Nat::new(kind, public_ip.parse().unwrap()));
        self.nats.len() - 1
    }

    /// A host at `ip`, behind `nat` (None: on the public internet).
    pub fn add_host(&mut self, ip: &str, nat: Option<usize>) -> usize {
        self.hosts.push(Host {
            ip: ip.parse().unwrap(),
            nat,
        });
        self.hosts.len() - 1
    }

    /// Host `src` sends `payload` from its socket `from` to `to`.
    pub fn send(
        &mut self,
        now: Instant,
        src: usize,
        from: SocketAddr,
        to: SocketAddr,
        payload: &[u8],
    ) {
        self.send_delayed(now, Duration::ZERO, src, from, to, payload);
    }

    /// [`Net::send`] held up `extra` on the way (queueing somewhere): datagrams sent with
    /// different delays arrive reordered.
    pub fn send_delayed(
        &mut self,
        now: Instant,
        extra: Duration,
        src: usize,
        from: SocketAddr,
        to: SocketAddr,
        payload: &[u8],
    ) {
        let now = now + extra;
        let src_nat = self.hosts[src].nat;
        // Same LAN: straight there, no translation.
        if let Some(dst) = self
            .hosts
            .iter()
            .position(|h| h.ip == to.ip() && h.nat.is_some() && h.nat == src_nat)
        {
            return self.schedule(now, Duration::from_millis(1), dst, from, to, payload);
        }
        let public_from = match src_nat {
            Some(n) if self.nats[n].kind != NatKind::None => self.nats[n].outbound(from, to),
            _ => from,
        };
        if self.block_direct
            && Some(to.ip()) != self.exempt
            && Some(public_from.ip()) != self.exempt
        {
            return;
        }
        // To a NAT's public address: through its filter to a host behind it.
        if let Some(n) = self
            .nats
            .iter()
            .position(|nat| nat.public_ip == to.ip() && nat.kind != NatKind::None)
        {
            if src_nat == Some(n) {
                return; // no hairpinning
            }
            let Some(private) = self.nats[n].inbound(public_from, to.port()) else {
                return;
            };
            let Some(dst) = self
                .hosts
                .iter()
                .position(|h| h.ip == private.ip() && h.nat == Some(n))
            else {
                return;
            };
            return self.schedule(now, self.latency, dst, public_from, private, payload);
        }
        // To a public host (or a host behind a non-translating router).
        let public =
            |h: &Host| h.nat.is_none() || h.nat.is_some_and(|n| self.nats[n].kind == NatKind::None);
        if let Some(dst) = self.hosts.iter().position(|h| h.ip == to.ip() && public(h)) {
            self.schedule(now, self.latency, dst, public_from, to, payload);
        }
    }

    /// When the next packet arrives.
    pub fn next_arrival(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((t, ..))| *t)
    }

    /// The next packet due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Delivery> {
        let Reverse((t, seq, _)) = *self.queue.peek()?;
        if t > now {
            return None;
        }
        self.queue.pop();
        self.delivered += 1;
        self.in_flight.remove(&seq)
    }

    fn schedule(
        &mut self,
        now: Instant,
        delay: Duration,
        host: usize,
        from: SocketAddr,
        to: SocketAddr,
        payload: &[u8],
    ) {
        self.seq += 1;
        self.queue.push(Reverse((now + delay, self.seq, host)));
        self.in_flight.insert(
            self.seq,
            Delivery {
                host,
                from,
                to,
                payload: payload.to_vec(),
            },
        );
    }
}
