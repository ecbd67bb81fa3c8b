//! The relay: forwards `RELAY_TO [dst][datagram]` from a registered node as
//! `RELAY_FROM [src][datagram]` to another, if the ledger holds a valid mutual trust record for
//! the pair, within a per-node rate.
//!
//! This is the server's packet path: it allocates nothing, writes nothing to the store, logs
//! nothing, and looks up four map entries per frame (source endpoint, target, trust, sender).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use super::counters::RelayDrop;
use super::rate::Rate;
use super::registry::Registry;
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
