//! The path MTU of a direct IPv6 path. IPv6 routers never fragment: a full-size tunnel
//! packet (the TUN's MTU + 32 bytes of WireGuard, + 48 of IPv6 and UDP) that does not fit a
//! link on the path is dropped, and the sender hears of it only through an ICMPv6 Packet Too
//! Big that many networks filter. Then every full-size packet is lost while pings and
//! handshakes still pass.
//!
//! So the node measures: on a new direct IPv6 path, and every [`RECHECK`] after
//! ([`RECHECK_ACTIVE`] while traffic flows), it sends the
//! peer a `Probe` padded to the size of a full tunnel packet. Unanswered within [`WAIT`], it
//! tries the next smaller size of [`LADDER`]; the largest answered sets the inner MTU of the
//! path. A packet from the TUN larger than that is answered with an ICMPv6 Packet Too Big
//! into the TUN (the node's own, which no filter drops), so the kernel's TCP sends smaller
//! segments to that peer. A probe lost by chance costs a step down until the next check.
//! Below 1,280 bytes inside there is nothing to step down to (IPv6's minimum): the
//! kernel then fragments, if it hears of the path's MTU.
//!
//! IPv4 paths need none of this: the node sends IPv4 without DF, and routers fragment.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Inner sizes tried below the TUN's MTU, largest first.
pub const LADDER: [u16; 4] = [1400, 1340, 1300, 1280];
/// What WireGuard adds to an inner packet (data header and tag).
pub const WIREGUARD_OVERHEAD: u16 = 32;
/// How long a probe waits for its answer.
pub const WAIT: Duration = Duration::from_secs(1);
/// How often a measured path is measured again (its MTU may change, both ways)…
pub const RECHECK: Duration = Duration::from_secs(30);
/// …and while traffic flows to the peer, so that a route change onto a smaller link stalls
/// a transfer for seconds, not half a minute.
pub const RECHECK_ACTIVE: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub(super) struct PathMtu {
    /// The direct endpoint measured (a new one is measured afresh).
    endpoint: Option<SocketAddr>,
    /// The largest inner size known to pass, when below the TUN's MTU.
    inner: Option<u16>,
    /// The probe out: its nonce, the inner size it tests, when it went.
    probe: Option<(u64, u16, Instant)>,
    next: Option<Instant>,
    /// When the last measurement ended.
    measured: Option<Instant>,
}

impl PathMtu {
    /// The inner MTU packets to the peer must keep to, when smaller than the TUN's.
    pub fn inner(&self) -> Option<u16> {
        self.inner
    }

    /// The inner size to probe now, if any, for the direct path at `endpoint` (None: no
    /// direct path) and a TUN of `tun_mtu`.
    pub fn poll(
        &mut self,
        endpoint: Option<SocketAddr>,
        tun_mtu: u16,
        active: bool,
        now: Instant,
    ) -> Option<u16> {
        let endpoint = endpoint.filter(SocketAddr::is_ipv6);
        if endpoint != self.endpoint {
            *self = PathMtu {
                endpoint,
                next: Some(now),
                ..PathMtu::default()
            };
        }
        self.endpoint?;
        if let Some((_, size, sent)) = self.probe {
            if now < sent + WAIT {
                return None;
            }
            // Unanswered: the next size down, or the floor.
            return match LADDER.iter().copied().find(|s| *s < size && *s < tun_mtu) {
                Some(smaller) => Some(smaller),
                None => {
                    self.inner = Some(size.min(tun_mtu));
                    self.probe = None;
                    self.next = Some(now + RECHECK);
                    self.measured = Some(now);
                    None
                }
            };
        }
        let recheck = if active { RECHECK_ACTIVE } else { RECHECK };
        if self.next.is_some_and(|t| now >= t) || self.measured.is_some_and(|t| now >= t + recheck)
        {
            return Some(tun_mtu);
        }
        None
    }

    /// When [`PathMtu::poll`] next has something to say, with the same arguments.
    pub fn deadline(
        &self,
        endpoint: Option<SocketAddr>,
        active: bool,
        now: Instant,
    ) -> Option<Instant> {
        let endpoint = endpoint.filter(SocketAddr::is_ipv6);
        if endpoint != self.endpoint {
            // A new path: measured at once.
            return endpoint.map(|_| now);
        }
        self.endpoint?;
        if let Some((_, _, sent)) = self.probe {
            return Some(sent + WAIT);
        }
        let recheck = if active { RECHECK_ACTIVE } else { RECHECK };
        let again = self.measured.map(|t| t + recheck);
        match (self.next, again) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A probe of inner size `size` went out with `nonce`.
    pub fn sent(&mut self, nonce: u64, size: u16, now: Instant) {
        self.probe = Some((nonce, size, now));
        self.next = None;
    }

    /// A probe answer: true if it answered our size probe (and is consumed here).
    pub fn on_ack(&mut self, echo: u64, tun_mtu: u16, now: Instant) -> bool {
        let Some((nonce, size, _)) = self.probe else {
            return false;
        };
        if echo != nonce {
            return false;
        }
        self.inner = (size < tun_mtu).then_some(size);
        self.probe = None;
        self.next = Some(now + RECHECK);
        self.measured = Some(now);
        true
    }
}

/// The padded `Probe` datagram's length for inner size `inner`: a full tunnel packet's.
pub fn probe_len(inner: u16) -> usize {
    usize::from(inner + WIREGUARD_OVERHEAD)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v6() -> Option<SocketAddr> {
        Some("[2001:db8:2::10]:51870".parse().unwrap())
    }

    #[test]
    fn sizes_step_down_until_one_is_answered_and_are_checked_again() {
        let t0 = Instant::now();
        let mut p = PathMtu::default();
        assert_eq!(p.poll(v6(), 1380, false, t0), Some(1380), "full size first");
        p.sent(1, 1380, t0);
        assert_eq!(
            p.poll(v6(), 1380, false, t0 + WAIT / 2),
            None,
            "waits for the answer"
        );
        // Unanswered: 1,340 (1,400 is not below the TUN's 1,380).
        assert_eq!(p.poll(v6(), 1380, false, t0 + WAIT), Some(1340));
        p.sent(2, 1340, t0 + WAIT);
        assert!(
            !p.on_ack(1, 1380, t0 + WAIT),
            "a late answer to the old probe is not it"
        );
        assert!(p.on_ack(2, 1380, t0 + WAIT));
        assert_eq!(p.inner(), Some(1340));
        assert_eq!(
            p.poll(v6(), 1380, false, t0 + WAIT + RECHECK),
            Some(1380),
            "checked again"
        );
        p.sent(3, 1380, t0 + WAIT + RECHECK);
        assert!(p.on_ack(3, 1380, t0 + WAIT + RECHECK));
        assert_eq!(p.inner(), None, "the full size passes now");
        // Under traffic it is checked every few seconds.
        let t1 = t0 + WAIT + RECHECK;
        assert_eq!(p.poll(v6(), 1380, true, t1 + RECHECK_ACTIVE / 2), None);
        assert_eq!(p.poll(v6(), 1380, true, t1 + RECHECK_ACTIVE), Some(1380));
    }

    #[test]
    fn nothing_answered_leaves_the_floor_and_ipv4_or_no_path_is_not_measured() {
        let t0 = Instant::now();
        let mut p = PathMtu::default();
        let mut now = t0;
        let mut probed = Vec::new();
        while let Some(size) = p.poll(v6(), 1420, false, now) {
            probed.push(size);
            p.sent(probed.len() as u64, size, now);
            now += WAIT;
        }
        assert_eq!(probed, vec![1420, 1400, 1340, 1300, 1280]);
        assert_eq!(p.inner(), Some(1280));
        // Another endpoint: measured afresh.
        let other = Some("[2001:db8:2::11]:51870".parse().unwrap());
        assert_eq!(p.poll(other, 1420, false, now), Some(1420));
        assert_eq!(p.inner(), None);
        let v4 = Some("203.0.113.2:51870".parse().unwrap());
        assert_eq!(p.poll(v4, 1420, false, now), None);
        assert_eq!(p.poll(None, 1420, false, now), None);
        assert_eq!(p.inner(), None);
    }
}
