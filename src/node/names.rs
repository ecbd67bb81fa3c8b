//! The names this node answers for: its own hostname and its trusted peers' — through the DNS
//! stub on the reserved overlay address (`fd70::53`, answered straight back into the TUN) and
//! as the entry list for an opt-in hosts file. Untrusted peers' names are not answered, so a
//! name resolves exactly when packets to it can pass.

use std::net::Ipv6Addr;
use std::time::Instant;

use super::{DropReason, Node, TunOutput};
use crate::addr::Hostname;
use crate::wire::dns;
use crate::wire::ip::UnreachableCode;

impl Node {
    /// A packet to one of the reserved addresses (`fd70::` to `fd70::ffff`): a DNS query to
    /// the stub is answered; anything else gets "no route".
    pub(super) fn serve_reserved<'a>(
        &mut self,
        packet: &[u8],
        now: Instant,
        out: &'a mut [u8],
    ) -> TunOutput<'a> {
        let Some(query) = dns::parse_query(packet) else {
            self.counters.drop(DropReason::NoPeer);
            return self.unreachable(UnreachableCode::NoRoute, packet, now, out);
        };
        let answer = dns::answer(&query, |label| self.address_of(label));
        match dns::write_response(out, &query, answer) {
            Some(len) => TunOutput::Reply(&out[..len]),
            None => TunOutput::Nothing,
        }
    }

    /// This node's and its trusted peers' names with their addresses, sorted by name.
    pub fn names(&self) -> Vec<(Hostname, Ipv6Addr)> {
        let mut names: Vec<(Hostname, Ipv6Addr)> = self
            .trust
            .names()
            .filter(|(key, _)| self.is_trusted(key))
            .map(|(key, name)| (name.clone(), key.address().to_ipv6()))
            .chain(self.hostname.clone().map(|name| (name, self.ip)))
            .collect();
        names.sort();
        names
    }

    /// The address `label` (a lowercase hostname) stands for, if it is ours or a trusted peer's.
    fn address_of(&self, label: &str) -> Option<Ipv6Addr> {
        if self.hostname.as_ref().is_some_and(|h| h.as_str() == label) {
            return Some(self.ip);
        }
        self.trust
            .names()
            .find(|(key, name)| name.as_str() == label && self.is_trusted(key))
            .map(|(key, _)| key.address().to_ipv6())
    }
}
