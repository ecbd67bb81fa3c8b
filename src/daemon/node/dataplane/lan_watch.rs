//! The node's own addresses, looked at again every [`RESCAN`]: a box that moves to another
//! network, gets a new DHCP lease or rotates its IPv6 temporary addresses keeps offering
//! peers the endpoints it has now, not the ones it started with (a stale IPv6 candidate
//! would cost a pair its direct path over IPv6). A change is registered at once.

use std::time::{Duration, Instant};

use super::Core;

/// How often the interfaces' addresses are read (one getifaddrs call).
const RESCAN: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub(super) struct LanWatch {
    next: Instant,
}

impl LanWatch {
    pub fn new(now: Instant) -> LanWatch {
        LanWatch { next: now + RESCAN }
    }

    /// When the addresses are read next (the loop wakes for it).
    pub fn next(&self) -> Instant {
        self.next
    }
}

impl Core {
    pub(super) fn watch_lan(&mut self, now: Instant) {
        if now < self.lan_watch.next {
            return;
        }
        self.lan_watch.next = now + RESCAN;
        let lan = crate::daemon::node::lan_endpoints(&self.facts.interface, self.facts.listen_port);
        if self.node.set_lan(lan.clone(), now) {
            let lan: Vec<String> = lan.iter().map(ToString::to_string).collect();
            tracing::info!(endpoints = %lan.join(" "), "this host's addresses changed: offering peers the new ones");
        }
    }
}
