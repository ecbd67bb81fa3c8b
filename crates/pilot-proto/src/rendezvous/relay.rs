//! The relay: forwards `RELAY_TO [dst][datagram]` from a registered node as
//! `RELAY_FROM [src][datagram]` to another, if the ledger holds a valid mutual trust record for
//! the pair, within a per-node rate.
//!
//! This is the server's packet path: it allocates nothing, writes nothing to the store, logs
//! nothing, and looks up four map entries per frame (source endpoint, target, trust, sender).
//!
//! A destination registered at another server sharing the store is relayed to through that
//! server (`forward_elsewhere`, and `forwarded_in` there; the frames in `links`).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::counters::RelayDrop;
use super::links::{self, Link};
use super::rate::Rate;
use super::registry::Registry;
use super::Server;
use crate::identity::NodeKey;
use crate::wire::control::{parse_relay, write_relay, RELAY_FROM};
use crate::wire::trust::TrustLedger;

/// Forwards one relay frame: writes the `RELAY_FROM` frame into `out` and returns where it goes
/// (the target's endpoint, from the server address the target registered at) and its length.
pub(super) fn forward(
    registry: &mut Registry,
    ledger: &TrustLedger,
    rate: Rate,
    from: SocketAddr,
    frame: &[u8],
    now: Instant,
    out: &mut [u8],
) -> Result<(Option<IpAddr>, SocketAddr, usize), RelayDrop> {
    let (dst, datagram) = parse_relay(frame).ok_or(RelayDrop::Malformed)?;
    // The source endpoint is the only proof of who sent an unsigned frame: it must be the
    // endpoint a signed registration came from.
    let src = registry.key_at(&from).ok_or(RelayDrop::UnknownSender)?;
    if src == dst {
        return Err(RelayDrop::NotAllowed);
    }
    let target = registry.fresh(&dst, now).ok_or(RelayDrop::UnknownTarget)?;
    let (src_ip, to) = (target.local_ip, target.observed);
    if !ledger.trusted(&src, &dst) {
        return Err(RelayDrop::NotAllowed);
    }
    let sender = registry
        .fresh_mut(&src, now)
        .ok_or(RelayDrop::UnknownSender)?;
    if !sender.relay.take(rate, frame.len() as u64, now) {
        return Err(RelayDrop::RateLimited);
    }
    let len = write_relay(out, RELAY_FROM, &src, datagram).ok_or(RelayDrop::TooBig)?;
    Ok((src_ip, to, len))
}

impl Server {
    /// A relay frame from a node registered here to one that is not: forwarded to the server
    /// the destination registered at (see `links`), after the same checks as a frame relayed
    /// here (the sender's endpoint, the pair's trust, the sender's rate). Where the
    /// destination is, is asked of the store the first time; frames until the answer are
    /// dropped (WireGuard resends).
    pub(super) fn forward_elsewhere(
        &mut self,
        from: SocketAddr,
        frame: &[u8],
        now: Instant,
        out: &mut [u8],
    ) -> Result<(SocketAddr, usize), RelayDrop> {
        let (dst, datagram) = parse_relay(frame).ok_or(RelayDrop::Malformed)?;
        let src = self
            .registry
            .key_at(&from)
            .ok_or(RelayDrop::UnknownSender)?;
        if src == dst || !self.ledger.trusted(&src, &dst) {
            return Err(RelayDrop::NotAllowed);
        }
        let home = match self.home_of(&dst, now) {
            Some(home) => home,
            None => {
                self.locate_for_relay(dst, now);
                // A store that answers at once (simulations) has answered already; else the
                // last known home serves until it does.
                (self.home_of(&dst, now))
                    .or_else(|| self.last_home(&dst))
                    .ok_or(RelayDrop::UnknownTarget)?
            }
        };
        let (rate, me) = (self.relay_rate, self.key);
        let sender = (self.registry)
            .fresh_mut(&src, now)
            .ok_or(RelayDrop::UnknownSender)?;
        if !sender.relay.take(rate, frame.len() as u64, now) {
            return Err(RelayDrop::RateLimited);
        }
        // A server listening on a wildcard cannot be reached (it says so at start).
        let peer = (self.instances.iter())
            .find(|i| i.key == home)
            .filter(|i| !i.main.ip().is_unspecified());
        let (main, theirs) = peer
            .map(|i| (i.main, i.incarnation))
            .ok_or(RelayDrop::UnknownTarget)?;
        let link = self.link(home, theirs).ok_or(RelayDrop::UnknownTarget)?;
        let len = link
            .seal(&me, &src, &dst, datagram, out)
            .ok_or(RelayDrop::TooBig)?;
        Ok((main, len))
    }

    /// A frame another server forwarded: checked (its server is in the heartbeats and it
    /// comes from that server's address, its tag and counter are good) and relayed to its
    /// destination, registered here, if this server's ledger trusts the pair. The cheap checks
    /// come first: a stranger's frames cost no HMAC unless they come from a server's address.
    pub(super) fn forwarded_in(
        &mut self,
        from: SocketAddr,
        frame: &[u8],
        now: Instant,
        out: &mut [u8],
    ) -> Result<(Option<IpAddr>, SocketAddr, usize), RelayDrop> {
        if frame.len() > links::MAX_FRAME {
            return Err(RelayDrop::Malformed);
        }
        let id = links::sender_id(frame).ok_or(RelayDrop::Malformed)?;
        let peer = self
            .instances
            .iter()
            .find(|i| i.key != self.key && links::is_sender(&i.key, id))
            .filter(|i| i.main.ip().is_unspecified() || i.main.ip() == from.ip())
            .map(|i| (i.key, i.incarnation));
        let (server, theirs) = peer.ok_or(RelayDrop::BadForward)?;
        let link = self.link(server, theirs).ok_or(RelayDrop::BadForward)?;
        let (src, dst, datagram) = link.open(frame).ok_or(RelayDrop::BadForward)?;
        if !self.ledger.trusted(&src, &dst) {
            return Err(RelayDrop::NotAllowed);
        }
        let target = self
            .registry
            .fresh(&dst, now)
            .ok_or(RelayDrop::UnknownTarget)?;
        let (src_ip, to) = (target.local_ip, target.observed);
        let len = write_relay(out, RELAY_FROM, &src, datagram).ok_or(RelayDrop::TooBig)?;
        // The answers go back through the same server, without a store read.
        if self.home_of(&src, now) != Some(server) {
            self.remember_home(src, server, now);
        }
        Ok((src_ip, to, len))
    }

    /// The link with the server `peer` at its incarnation `theirs`, made (keys derived) when
    /// there is none for this pair of incarnations.
    fn link(&mut self, peer: NodeKey, theirs: u64) -> Option<&mut Link> {
        let mine = self.incarnation;
        let current = self.links.get(&peer).map(|l| l.incarnations);
        if current != Some((mine, theirs)) {
            let link = Link::new(&self.config.identity, mine, &peer, theirs)?;
            self.links.insert(peer, link);
        }
        self.links.get_mut(&peer)
    }
}
