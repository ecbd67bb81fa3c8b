//! The names this node answers for: its own hostname and its trusted peers' — through the DNS
//! stub on the reserved overlay address (`fd70::53`, answered straight back into the TUN) and
//! as the entry list for an opt-in hosts file. Untrusted peers' names are not answered, so a
//! name resolves exactly when packets to it can pass. And giving up our own hostname at the
//! rendezvous (`pilotctl release-name`).

use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use super::timers::{Earliest, Timer};
use super::{DropReason, Event, Node, TunOutput};
use crate::addr::Hostname;
use crate::wire::control::Message;
use crate::wire::dns;
use crate::wire::ip::UnreachableCode;

/// A release is sent again after this long without an answer…
const RELEASE_RETRY: Duration = Duration::from_secs(1);
/// …and given up after this long.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why [`Node::release_name`] did not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReleaseError {
    #[error("this node holds no hostname (none is configured, or it was released)")]
    NoHostname,
    #[error("no rendezvous is configured: hostnames are held there")]
    NoRendezvous,
    #[error(
        "not registered with the rendezvous{0}, so it cannot be asked now; nothing was changed \
         (try again once `pilotctl netcheck` shows it registered)"
    )]
    NotRegistered(String),
    #[error("a release of `{0}` is under way")]
    Busy(Hostname),
}

/// How a release ended, as [`Event::NameReleased`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// The rendezvous freed the name: any node may claim it now.
    Released,
    /// The rendezvous says this node did not hold the name (another key does, or nobody).
    /// The node claims it again, as before.
    NotHeld,
    /// No answer in time. The node claims the name again, as before (a registration sent
    /// meanwhile without it may have freed it; the next one takes it back if still free).
    Unconfirmed,
}

/// A `ReleaseName` waiting for its answer.
pub(super) struct PendingRelease {
    name: Hostname,
    nonce: u64,
    next_send: Instant,
    deadline: Instant,
}

impl Node {
    /// Gives up this node's hostname at the rendezvous: the node stops claiming it at once
    /// (its registrations go without it) and asks the rendezvous to free it now; the answer
    /// comes as [`Event::NameReleased`]. Returns the name. Refused, changing nothing, while
    /// not registered.
    pub fn release_name(&mut self, now: Instant) -> Result<Hostname, ReleaseError> {
        self.touch();
        if let Some(pending) = &self.release {
            return Err(ReleaseError::Busy(pending.name.clone()));
        }
        let Some(name) = self.hostname.clone() else {
            return Err(ReleaseError::NoHostname);
        };
        let Some(link) = &self.link else {
            return Err(ReleaseError::NoRendezvous);
        };
        if !link.is_registered(now) {
            let why = link
                .problem(now)
                .map_or_else(String::new, |p| format!(" ({p})"));
            return Err(ReleaseError::NotRegistered(why));
        }
        // Before the request: a registration sent meanwhile must not claim it again.
        self.hostname = None;
        self.release = Some(PendingRelease {
            name: name.clone(),
            nonce: 0,
            next_send: now,
            deadline: now + RELEASE_TIMEOUT,
        });
        self.drive_release(now);
        Ok(name)
    }

    /// When [`Node::drive_release`] next has work.
    pub(super) fn release_deadlines(&self, base: Instant, next: &mut Earliest) {
        let Some(pending) = &self.release else {
            return;
        };
        next.at(Some(pending.deadline), Timer::Release);
        if self.link.as_ref().is_some_and(|l| l.is_registered(base)) {
            next.at(Some(pending.next_send), Timer::Release);
        }
    }

    /// Timer work: resend the release while registered; give it up at its deadline.
    pub(super) fn drive_release(&mut self, now: Instant) {
        let registered = self.link.as_ref().is_some_and(|l| l.is_registered(now));
        let Some(pending) = &mut self.release else {
            return;
        };
        if now >= pending.deadline {
            let name = pending.name.clone();
            self.release = None;
            self.hostname.get_or_insert_with(|| name.clone());
            self.events.push_back(Event::NameReleased {
                name,
                outcome: ReleaseOutcome::Unconfirmed,
            });
            return;
        }
        if !registered || now < pending.next_send {
            return;
        }
        pending.next_send = now + RELEASE_RETRY;
        let release = Message::ReleaseName {
            name: pending.name.clone(),
        };
        let nonce = self.send_to_rendezvous(0, &release, now);
        if let Some(pending) = &mut self.release {
            pending.nonce = nonce;
        }
    }

    /// The rendezvous' answer to our `ReleaseName`.
    pub(super) fn on_name_released(&mut self, echo: u64, held: bool) -> bool {
        if self.release.as_ref().is_none_or(|p| p.nonce != echo) {
            return false;
        }
        let Some(pending) = self.release.take() else {
            return false;
        };
        let outcome = if held {
            ReleaseOutcome::Released
        } else {
            self.hostname.get_or_insert_with(|| pending.name.clone());
            ReleaseOutcome::NotHeld
        };
        self.events.push_back(Event::NameReleased {
            name: pending.name,
            outcome,
        });
        true
    }
}

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
