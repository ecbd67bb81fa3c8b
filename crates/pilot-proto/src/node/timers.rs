//! When the node next needs the clock, and why: quinn's timer table, with each deadline read
//! from the state it guards rather than set beside it, so that none can go stale.
//!
//! Every subsystem says when it next has something to do ([`Timer`] names them). While work
//! runs in steps finer than its own bookkeeping (WireGuard's timers after data or during a
//! handshake, a direct path under traffic, a registration awaiting its answer), it asks for
//! the [`TIMER_TICK`], as boringtun counts in seconds; otherwise it gives its exact deadline.
//! An idle node with trusted peers thus wakes for its keepalives and its registration
//! refresh, not every second.
//!
//! Inputs change state between runs of the timers. [`Node::poll_timeout`] keeps the answer
//! computed by the last run while it is at most a tick away (any deadline an input brought
//! forward is then late by less than a tick, as with a fixed tick); when it is further, it
//! reads the table again, so a datagram or a verb that makes work due is seen at once.

use std::time::{Duration, Instant};

use super::path::Route;
use super::peer::{Peer, SESSION_LIFETIME};
use super::Node;

/// The step of work that runs finer than its state says (see the module doc): boringtun keeps
/// its timers to the second, and every control timer counts in seconds.
pub(super) const TIMER_TICK: Duration = Duration::from_secs(1);
/// How long after the last data packet, either way, WireGuard's data timers run at the tick:
/// a passive keepalive 10 s after data received unanswered, a new handshake 15 s after data
/// sent unanswered (boringtun's `KEEPALIVE_TIMEOUT` and `REKEY_TIMEOUT`), and a second.
const DATA_TIMERS: Duration = Duration::from_secs(16);
/// How long after an initiation with no session since WireGuard's handshake timers run at
/// the tick: boringtun retries every 5 s and gives up after 90 s (`REKEY_ATTEMPT_TIME`).
const HANDSHAKE_TIMERS: Duration = Duration::from_secs(91);
/// When boringtun must look at a session again after its handshake, with nothing else going
/// on: it drops the session's keys after 180 s (`REJECT_AFTER_TIME`, "more than") and clears
/// everything after three times that. A second late each, as at the tick.
const SESSION_ENDS: [Duration; 2] = [Duration::from_secs(181), Duration::from_secs(541)];

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// The first run, at the node's start.
    Start,
    /// WireGuard's own timers of a peer (handshake retry, rekey, passive keepalive, session
    /// expiry), run by `Tunn::update_timers`.
    WireGuard,
    /// Our persistent keepalive to a peer (see `Node::keepalive_due`).
    Keepalive,
    /// The higher key's deferred handshake (see `Node::kick_handshake`).
    Kick,
    /// A punch round, the end of a punch window, or a direct path under traffic.
    Path,
    /// A relayed pair asks the rendezvous for a new punch.
    Connect,
    /// Path MTU probing (see `pmtu`).
    PathMtu,
    /// Registration with the rendezvous: refresh, retry, and what silence leads to (the
    /// next rendezvous, the TLS stream).
    Register,
    /// NAT type measurement.
    NatProbe,
    /// While on the TLS stream: whether UDP answers again.
    StreamRecheck,
    /// While on another rendezvous: whether the first is back.
    Failback,
    /// Trust statements not yet confirmed by the rendezvous.
    TrustSubmit,
    /// Lookups: resend, or give up.
    Lookup,
    /// A pending trust request expires.
    TrustExpiry,
    /// A hostname release: resend, or give up.
    Release,
    /// Birthday probing (see `birthday`).
    Birthday,
}

impl Timer {
    pub fn name(self) -> &'static str {
        match self {
            Timer::Start => "start",
            Timer::WireGuard => "wireguard timers",
            Timer::Keepalive => "keepalive",
            Timer::Kick => "handshake kick",
            Timer::Path => "path",
            Timer::Connect => "punch request",
            Timer::PathMtu => "path mtu",
            Timer::Register => "registration",
            Timer::NatProbe => "nat probe",
            Timer::StreamRecheck => "udp recheck",
            Timer::Failback => "failback probe",
            Timer::TrustSubmit => "trust submit",
            Timer::Lookup => "lookup",
            Timer::TrustExpiry => "trust request expiry",
            Timer::Release => "name release",
            Timer::Birthday => "birthday probing",
        }
    }
}

/// The earliest deadline seen, with its timer. `base` is when the timers last ran: a deadline
/// not after it is one that run did not clear, so it is taken as a tick after it (a
/// subsystem whose deadline and work disagree then runs at the tick, never in a loop).
pub(super) struct Earliest {
    base: Instant,
    best: Option<(Instant, Timer)>,
}

impl Earliest {
    pub fn new(base: Instant) -> Earliest {
        Earliest { base, best: None }
    }

    pub fn at(&mut self, at: Option<Instant>, timer: Timer) {
        let Some(mut at) = at else {
            return;
        };
        if at <= self.base {
            at = self.base + TIMER_TICK;
        }
        if self.best.is_none_or(|(t, _)| at < t) {
            self.best = Some((at, timer));
        }
    }

    /// The tick after `base`: for work that runs in steps finer than its state says.
    pub fn tick(&mut self, timer: Timer) {
        self.at(Some(self.base + TIMER_TICK), timer);
    }

    pub fn get(&self) -> Option<(Instant, Timer)> {
        self.best
    }
}

impl Node {
    /// Every timer's next deadline, read from state; `base` is when the timers last ran.
    pub(super) fn deadline(&self, base: Instant) -> Option<(Instant, Timer)> {
        let mut next = Earliest::new(base);
        if let Some(link) = &self.link {
            next.at(link.next_register.or(Some(base)), Timer::Register);
            next.at(link.nat_probe_deadline(), Timer::NatProbe);
        }
        self.stream_deadlines(base, &mut next);
        self.failover_deadlines(base, &mut next);
        self.trust_deadlines(base, &mut next);
        self.release_deadlines(base, &mut next);
        self.birthday_deadlines(base, &mut next);
        let registered = self.link.as_ref().is_some_and(|l| l.is_registered(base));
        for index in 0..self.peers.len() {
            if self.peers[index].trusted {
                self.peer_deadlines(index, registered, base, &mut next);
            }
        }
        next.get()
    }

    fn peer_deadlines(&self, index: usize, registered: bool, base: Instant, next: &mut Earliest) {
        let peer = &self.peers[index];
        next.at(peer.kick_at, Timer::Kick);
        next.at(wireguard_deadline(peer, base), Timer::WireGuard);
        if let Some(at) = self.keepalive_deadline(index, base) {
            next.at(Some(at), Timer::Keepalive);
        }
        let path = &peer.path;
        if let Some(at) = path.punch_deadline() {
            next.at(Some(at), Timer::Path);
        }
        if path.watches_direct(base) {
            next.tick(Timer::Path);
        }
        if registered {
            next.at(path.connect_deadline(base), Timer::Connect);
        }
        let (endpoint, active) = (path.direct_endpoint(), path.is_active(base));
        next.at(peer.pmtu.deadline(endpoint, active, base), Timer::PathMtu);
    }

    /// Work for `timer` is due at `at`: the timers run then at the latest. For what an input
    /// makes due within the tick (see `timers`).
    pub(super) fn wake_by(&mut self, at: Instant, timer: Timer) {
        if self.asked.is_none_or(|(t, _)| at < t) {
            self.asked = Some((at, timer));
        }
    }

    /// An input that may have changed a deadline: the table is read afresh at the next
    /// `poll_timeout` (see [`Node::table_since`]). Every public entry point but the timers'
    /// own calls it, except for a datagram that was only dropped.
    pub(super) fn touch(&mut self) {
        self.generation = self.generation.wrapping_add(1);
    }

    /// The table read at `ran`: afresh only when an input came since the last read, so junk
    /// from the internet costs no walk over every peer per batch.
    pub(super) fn table_since(&self, ran: Instant) -> Option<(Instant, Timer)> {
        let (generation, table) = self.table.get();
        if generation == self.generation {
            // The tests and fuzzers build with debug assertions: an entry point that changed a
            // deadline without `touch` fails them here.
            debug_assert_eq!(table, self.deadline(ran), "a deadline changed untouched");
            return table;
        }
        let table = self.deadline(ran);
        self.table.set((self.generation, table));
        table
    }

    /// A punch of peer `index` started: its rounds are due within the tick.
    pub(super) fn punch_started(&mut self, index: usize) {
        if let Some(at) = self.peers[index].path.punch_deadline() {
            self.wake_by(at, Timer::Path);
        }
    }

    /// Whether our keepalive to peer `index` goes out at this run of the timers: when due, or
    /// due within half the interval. Early is harmless (a NAT mapping only needs one in time),
    /// and it pulls the keepalives to every peer into step: an idle node with many peers wakes
    /// about once an interval for them all, not once per peer.
    pub(super) fn keepalive_soon(&self, index: usize, now: Instant) -> bool {
        let Some(due) = self.keepalive_deadline(index, now) else {
            return false;
        };
        let every = Duration::from_secs(self.keepalive.unwrap_or(0).into());
        now + every / 2 >= due
    }

    /// When our persistent keepalive to peer `index` is due: the interval after the last
    /// datagram we sent it (or the last keepalive tried), while there is a way to send.
    pub(super) fn keepalive_deadline(&self, index: usize, now: Instant) -> Option<Instant> {
        let every = Duration::from_secs(self.keepalive.filter(|k| *k > 0)?.into());
        let peer = &self.peers[index];
        if !peer.trusted || self.route(index, now) == Route::Nowhere {
            return None;
        }
        Some(peer.keepalive_from.unwrap_or(self.clock.origin()) + every)
    }
}

/// When peer's WireGuard timers are next due: at the tick while they count in seconds (after
/// data, during a handshake), else when a session ends; `None` once nothing is left to time.
pub(super) fn wireguard_deadline(peer: &Peer, now: Instant) -> Option<Instant> {
    let data = peer.data_at.is_some_and(|t| now < t + DATA_TIMERS);
    // The session as of `now` by our own record (boringtun's reads the clock), so that the
    // table is a function of the state and `now` alone.
    let session = peer.session_at.is_some_and(|t| now < t + SESSION_LIFETIME);
    let handshake = peer
        .handshake_at
        .is_some_and(|t| now < t + HANDSHAKE_TIMERS)
        && !session;
    if data || handshake {
        return Some(peer.timers_at.map_or(now, |t| t + TIMER_TICK));
    }
    let session = peer.session_at?;
    SESSION_ENDS
        .iter()
        .map(|d| session + *d)
        .find(|end| peer.timers_at.is_none_or(|t| t < *end))
}

/// The earlier of two deadlines, each with what it is for.
pub(super) fn earlier<T>(a: Option<(Instant, T)>, b: Option<(Instant, T)>) -> Option<(Instant, T)> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}
