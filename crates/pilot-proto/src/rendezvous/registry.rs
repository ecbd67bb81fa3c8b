//! Registered nodes in memory: who is where, how their NAT maps, and when they expire. Only
//! fresh registrations are acted on; expired ones are dropped from memory by
//! [`Registry::expire`] (the store keeps them until they are purged). Whom a node trusts is
//! the ledger's business, and its hostname the directory's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::rate::TokenBucket;
use super::store::Registration;
use super::streams::is_stream_endpoint;
use crate::addr::Hostname;
use crate::identity::NodeKey;
use crate::wire::control::{NatKind, MAX_CANDIDATES};

/// One registered node.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub observed: SocketAddr,
    /// The server's own address the node's last registration was sent to, if known: what
    /// the server sends the node on its own (deliveries, punches, relayed frames) leaves
    /// from it, since the node's NAT lets in only what comes from the address it sent to.
    pub local_ip: Option<IpAddr>,
    pub lan: Vec<SocketAddr>,
    pub nat: NatKind,
    /// The endpoint the alternate port last saw, while `observed` has not changed since.
    pub alt_seen: Option<SocketAddr>,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    pub last_seen: Instant,
    pub buckets: Buckets,
    pub relay: TokenBucket,
    /// The (node's, ours) ledger digests of the last difference acted on: the same
    /// difference again sends nothing (the two sides exchanged what they hold; what is left
    /// differs for good reason, e.g. a statement one side refuses).
    pub ledger_synced: Option<(u64, u64)>,
}

/// The node's rate limits on signed requests, one bucket per kind so that a node resubmitting
/// its statements after a restart does not starve its introductions.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Buckets {
    pub registers: TokenBucket,
    pub connects: TokenBucket,
    pub submits: TokenBucket,
    pub lookups: TokenBucket,
}

pub(super) struct Registry {
    expiry: Duration,
    entries: BTreeMap<NodeKey, Entry>,
    /// Observed endpoint → key: how unsigned relay frames are attributed to a sender.
    by_endpoint: BTreeMap<SocketAddr, NodeKey>,
    /// (expiry time, key), so the next expiry is the first element.
    deadlines: BTreeSet<(Instant, NodeKey)>,
}

impl Registry {
    pub fn new(expiry: Duration) -> Registry {
        Registry {
            expiry,
            entries: BTreeMap::new(),
            by_endpoint: BTreeMap::new(),
            deadlines: BTreeSet::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn get(&self, key: &NodeKey) -> Option<&Entry> {
        self.entries.get(key)
    }

    /// The entry if it has not expired at `now`.
    pub fn fresh(&self, key: &NodeKey, now: Instant) -> Option<&Entry> {
        self.entries.get(key).filter(|e| self.is_fresh(e, now))
    }

    pub fn fresh_mut(&mut self, key: &NodeKey, now: Instant) -> Option<&mut Entry> {
        let expiry = self.expiry;
        self.entries
            .get_mut(key)
            .filter(|e| now < e.last_seen + expiry)
    }

    /// The node last registered at `endpoint` (fresh or not: check with `fresh`).
    pub fn key_at(&self, endpoint: &SocketAddr) -> Option<NodeKey> {
        self.by_endpoint.get(endpoint).copied()
    }

    /// Inserts or replaces the node's registration, sent to `local_ip`, last seen at
    /// `last_seen` (its hostname is not kept here). Rate-limit state carries over from an
    /// existing entry.
    pub fn upsert(
        &mut self,
        r: Registration,
        alt_seen: Option<SocketAddr>,
        local_ip: Option<IpAddr>,
        last_seen: Instant,
    ) {
        let previous = self.entries.get(&r.key);
        let (buckets, relay, ledger_synced) =
            previous.map_or_else(Default::default, |p| (p.buckets, p.relay, p.ledger_synced));
        let entry = Entry {
            observed: r.observed,
            local_ip,
            lan: r.lan,
            nat: r.nat,
            alt_seen,
            first_seen_ms: r.first_seen_ms,
            last_seen_ms: r.last_seen_ms,
            last_seen,
            buckets,
            relay,
            ledger_synced,
        };
        self.unlink(&r.key);
        self.link(r.key, &entry);
        self.entries.insert(r.key, entry);
    }

    pub fn get_mut(&mut self, key: &NodeKey) -> Option<&mut Entry> {
        self.entries.get_mut(key)
    }

    /// Removes every node whose registration has expired by `now`; returns their keys.
    pub fn expire(&mut self, now: Instant) -> Vec<NodeKey> {
        let mut gone = Vec::new();
        while let Some(&(deadline, key)) = self.deadlines.first() {
            if deadline > now {
                break;
            }
            self.unlink(&key);
            self.entries.remove(&key);
            gone.push(key);
        }
        gone
    }

    /// When the next registration expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.deadlines.first().map(|(t, _)| *t)
    }

    /// The registration of `key` as the store keeps it, with the hostname it holds.
    pub fn record(&self, key: &NodeKey, hostname: Option<Hostname>) -> Option<Registration> {
        self.entries.get(key).map(|e| Registration {
            key: *key,
            observed: e.observed,
            lan: e.lan.clone(),
            hostname,
            nat: e.nat,
            first_seen_ms: e.first_seen_ms,
            last_seen_ms: e.last_seen_ms,
        })
    }

    fn is_fresh(&self, entry: &Entry, now: Instant) -> bool {
        now < entry.last_seen + self.expiry
    }

    fn link(&mut self, key: NodeKey, entry: &Entry) {
        self.by_endpoint.insert(entry.observed, key);
        self.deadlines.insert((entry.last_seen + self.expiry, key));
    }

    fn unlink(&mut self, key: &NodeKey) {
        let Some(entry) = self.entries.get(key) else {
            return;
        };
        if self.by_endpoint.get(&entry.observed) == Some(key) {
            self.by_endpoint.remove(&entry.observed);
        }
        self.deadlines
            .remove(&(entry.last_seen + self.expiry, *key));
    }
}

/// What the NAT of a node is, from what the two ports saw of one socket.
///
/// - the main port saw one of the node's own endpoints: no NAT;
/// - both ports saw the same endpoint: endpoint-independent mapping;
/// - they saw different ones: endpoint-dependent mapping.
///
/// Without an observation from the alternate port the previous verdict stands (a rebinding
/// does not change how the NAT maps), except "no NAT", which the node has just left.
pub(super) fn infer_nat(
    observed: SocketAddr,
    alt_seen: Option<SocketAddr>,
    lan: &[SocketAddr],
    previous: NatKind,
) -> NatKind {
    if lan.contains(&observed) {
        return NatKind::None;
    }
    match alt_seen {
        Some(alt) if alt == observed => NatKind::EndpointIndependent,
        Some(_) => NatKind::EndpointDependent,
        None if previous == NatKind::None => NatKind::Unknown,
        None => previous,
    }
}

/// Where a peer should probe `entry`'s node: its public endpoint first (works across NATs),
/// then its LAN endpoints (work behind the same NAT), without repeats, at most
/// [`MAX_CANDIDATES`].
pub(super) fn candidates(entry: &Entry) -> Vec<SocketAddr> {
    candidates_of(entry.observed, &entry.lan)
}

/// [`candidates`] of a node whose public endpoint is `observed` and LAN endpoints `lan`.
pub(super) fn candidates_of(observed: SocketAddr, lan: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut out = Vec::with_capacity(MAX_CANDIDATES);
    // A stream's endpoint is no address at all to punch.
    if !is_stream_endpoint(&observed) {
        out.push(observed);
    }
    for &endpoint in lan {
        if out.len() == MAX_CANDIDATES {
            break;
        }
        if !out.contains(&endpoint) && !is_stream_endpoint(&endpoint) {
            out.push(endpoint);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn nat_kinds_follow_the_observations() {
        let public = ep("198.51.100.7:40000");
        let lan = [ep("10.0.0.2:51870")];
        let unknown = NatKind::Unknown;
        assert_eq!(infer_nat(public, None, &lan, unknown), NatKind::Unknown);
        assert_eq!(
            infer_nat(public, Some(public), &lan, unknown),
            NatKind::EndpointIndependent
        );
        assert_eq!(
            infer_nat(public, Some(ep("198.51.100.7:40001")), &lan, unknown),
            NatKind::EndpointDependent
        );
        assert_eq!(
            infer_nat(lan[0], Some(ep("198.51.100.7:1")), &lan, unknown),
            NatKind::None
        );
        // A rebinding keeps the measured mapping behaviour; leaving "no NAT" forgets it.
        assert_eq!(
            infer_nat(public, None, &lan, NatKind::EndpointDependent),
            NatKind::EndpointDependent
        );
        assert_eq!(
            infer_nat(public, None, &lan, NatKind::None),
            NatKind::Unknown
        );
    }

    #[test]
    fn candidates_put_the_public_endpoint_first_without_repeats() {
        let mut reg = Registry::new(Duration::from_secs(80));
        let public = ep("198.51.100.7:40000");
        let lan: Vec<SocketAddr> = (1..=8)
            .map(|i| ep(&format!("10.0.0.{i}:51870")))
            .chain([public])
            .collect();
        reg.upsert(
            Registration {
                key: NodeKey([1; 32]),
                observed: public,
                lan: lan.clone(),
                hostname: None,
                nat: NatKind::Unknown,
                first_seen_ms: 0,
                last_seen_ms: 0,
            },
            None,
            None,
            Instant::now(),
        );
        let c = candidates(reg.get(&NodeKey([1; 32])).unwrap());
        assert_eq!(c[0], public);
        assert_eq!(&c[1..], &lan[..8]);
        assert!(c.len() <= MAX_CANDIDATES);
    }
}
