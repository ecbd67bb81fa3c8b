//! When UDP to the rendezvous gets no answer (a network that blocks UDP: many corporate and
//! guest networks), the node reaches the rendezvous over a TLS stream instead
//! (`RendezvousConfig::stream`, port 443 by default), and its peers through the rendezvous'
//! relay over that stream; and it moves back to UDP as soon as UDP works.
//!
//! - **To the stream.** Once the rendezvous has been silent over UDP for [`STREAM_AFTER`]
//!   (several registrations, across failovers), the link goes over the stream:
//!   [`Node::rendezvous_stream`] names it, and the daemon opens it and carries every datagram
//!   for the rendezvous' main address down it, and feeds what comes back in as if it came
//!   from that address. The node registers again there (the stream is a new endpoint: the
//!   rendezvous challenges it first).
//! - **What changes.** The rendezvous sees the stream, not the node's NAT: the endpoint it
//!   reports is not kept, NAT behaviour is not measured, and it never offers the stream to
//!   peers as an address. Peers' punches towards the node's LAN addresses still go out over
//!   UDP (harmless where blocked, direct where a peer shares the LAN); traffic uses the relay.
//! - **Back to UDP.** Every [`UDP_RECHECK`] the node asks the rendezvous' alternate port for
//!   a NAT probe over UDP (one small signed datagram). A signed answer proves UDP works both
//!   ways: the link leaves the stream and registers over UDP at once, and NAT measurement and
//!   direct paths resume.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::timers::{Earliest, Timer};
use super::Node;
use crate::identity::NodeKey;
use crate::wire::control::Message;

/// UDP to the rendezvous unanswered this long moves the link to the stream.
pub const STREAM_AFTER: Duration = Duration::from_secs(10);
/// How often a node on the stream asks over UDP whether UDP works again.
pub const UDP_RECHECK: Duration = Duration::from_secs(30);

/// The stream the daemon is to hold open for the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamTarget {
    /// Where the rendezvous accepts TLS.
    pub tls: SocketAddr,
    /// The rendezvous' main UDP address: what is sent to it goes down the stream instead,
    /// and what comes up the stream is handed in as from it.
    pub rendezvous: SocketAddr,
    /// The key its TLS must present: the pinned one (or learned on first contact); `None`
    /// before any (the signed answers inside then settle it, as over UDP).
    pub key: Option<NodeKey>,
}

/// The node's part: since when UDP has been silent, and the probe asking whether it is back.
#[derive(Debug, Default)]
pub(super) struct StreamFallback {
    /// Since when no signed answer has come over UDP from any rendezvous (registrations were
    /// unanswered); `None` while UDP is answered.
    udp_silent_since: Option<Instant>,
    /// The nonce of the UDP NAT probe asking whether UDP works again.
    probe: Option<u64>,
    next_probe: Option<Instant>,
}

impl Node {
    /// The stream to hold open, while the link uses one.
    pub fn rendezvous_stream(&self) -> Option<StreamTarget> {
        let link = self.link.as_ref().filter(|l| l.over_stream)?;
        Some(StreamTarget {
            tls: link.config.stream?,
            rendezvous: link.config.addr,
            key: link.key,
        })
    }

    /// The stream's part of the rendezvous timers: move to the stream when UDP has been
    /// silent long enough, and while on it, ask now and then whether UDP works again.
    pub(super) fn drive_stream(&mut self, now: Instant) {
        let Some(link) = &mut self.link else {
            return;
        };
        if link.config.stream.is_none() {
            return;
        }
        if !link.over_stream {
            let silent = link.unanswered_for(now);
            if silent.is_zero() {
                return;
            }
            let since = *self.stream.udp_silent_since.get_or_insert(now - silent);
            if now.saturating_duration_since(since) >= STREAM_AFTER {
                link.use_stream(now);
                self.stream.next_probe = Some(now + UDP_RECHECK);
                self.counters.rendezvous_streams += 1;
                tracing::info!(
                    rendezvous = %link.config.addr,
                    "no answer over UDP for {} s: reaching the rendezvous over TLS",
                    now.saturating_duration_since(since).as_secs()
                );
            }
            return;
        }
        if self.stream.next_probe.is_none_or(|t| now >= t) {
            // To the alternate port: over UDP whatever the daemon does with the main one.
            self.stream.probe = Some(self.send_to_rendezvous(1, &Message::NatProbe, now));
            self.stream.next_probe = Some(now + UDP_RECHECK);
        }
    }

    /// When [`Node::drive_stream`] next has work: the move to the stream once UDP has been
    /// silent long enough, and on the stream, the next UDP recheck.
    pub(super) fn stream_deadlines(&self, base: Instant, next: &mut Earliest) {
        let Some(link) = self.link.as_ref().filter(|l| l.config.stream.is_some()) else {
            return;
        };
        if link.over_stream {
            next.at(self.stream.next_probe.or(Some(base)), Timer::StreamRecheck);
        } else if let Some(unanswered) = link.unanswered_since() {
            let since = self.stream.udp_silent_since.unwrap_or(unanswered);
            next.at(Some(since + STREAM_AFTER), Timer::Register);
        }
    }

    /// A signed answer from the rendezvous arrived over UDP (or, with the link on UDP, at
    /// all): UDP is not silent.
    pub(super) fn udp_answered(&mut self) {
        self.stream.udp_silent_since = None;
    }

    /// A NAT probe's answer from the alternate port while on the stream: if it answers our
    /// UDP probe, UDP works again and the link returns to it. Returns whether it did.
    pub(super) fn on_udp_probe_answer(&mut self, echo: u64, now: Instant) -> bool {
        let on_stream = self.link.as_ref().is_some_and(|l| l.over_stream);
        if !on_stream || self.stream.probe != Some(echo) {
            return false;
        }
        self.stream = StreamFallback::default();
        if let Some(link) = &mut self.link {
            link.use_udp(now);
            tracing::info!(rendezvous = %link.config.addr, "UDP answers again: back from TLS");
        }
        true
    }

    /// The daemon (re)connected the stream: the rendezvous knows the connection as a new
    /// endpoint, so register there at once rather than at the next refresh (until then it
    /// would send our relayed traffic down a connection that is gone).
    pub fn stream_connected(&mut self, now: Instant) {
        self.touch();
        if let Some(link) = self.link.as_mut().filter(|l| l.over_stream) {
            link.use_stream(now);
            // Now, not at the next timer tick.
            self.wake_by(now, Timer::Register);
        }
    }

    /// The rendezvous in use changed (failover): UDP's silence so far still counts.
    pub(super) fn stream_on_switch(&mut self) {
        self.stream.probe = None;
    }
}
