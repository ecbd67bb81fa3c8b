//! How the node reaches one peer: straight to an endpoint, or through the rendezvous relay,
//! and the probing that upgrades a relayed pair to direct.
//!
//! A pair starts on the relay the moment the rendezvous introduces it, while both sides probe
//! each other's candidates (public and LAN endpoints) for [`PUNCH_WINDOW`]. The first answered
//! probe makes the path direct; a faster one found later replaces it (a LAN path beats a
//! hairpin through the NAT). While traffic flows on a direct path that has gone quiet, it is
//! probed; after [`DIRECT_TIMEOUT`] without an answer the pair drops back to the relay and asks
//! for a new punch. Relayed pairs ask again every [`RETRY_DIRECT`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::Socket;

/// How long one punch keeps probing.
pub const PUNCH_WINDOW: Duration = Duration::from_secs(5);
/// Time between probe rounds during a punch.
const PUNCH_INTERVAL: Duration = Duration::from_millis(250);
/// A direct path with traffic but nothing heard for this long is probed.
const PROBE_QUIET: Duration = Duration::from_secs(2);
/// A direct path with traffic but nothing heard for this long is given up.
pub const DIRECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A peer sent to within this long is active: its direct path is watched.
const ACTIVE: Duration = Duration::from_secs(10);
/// Relayed pairs ask for a new punch this often.
pub const RETRY_DIRECT: Duration = Duration::from_secs(30);
/// Most candidates kept; beyond it the one heard of least recently is dropped, so a peer that
/// roamed is probed where it is now rather than where it was.
const MAX_CANDIDATES: usize = 16;
/// A newly answered candidate replaces the current one only if this much faster.
const SWITCH_MARGIN: Duration = Duration::from_micros(500);

/// What [`PeerPath::poll_probes`] saw of the punch in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PunchEnd {
    /// No punch ended now (none running, or still probing).
    NotNow,
    /// The punch window closed with a direct path.
    Direct,
    /// The punch window closed with no direct path: the pair stays where it was (the relay).
    Failed,
}

/// What [`PeerPath::start_punch`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PunchStart {
    /// A punch window opened (none was running); false when the running one was extended.
    pub opened: bool,
    /// Candidates dropped past [`MAX_CANDIDATES`]: the oldest held, or the oldest of a list
    /// longer than that.
    pub evicted: u64,
}

/// Where the next datagram for a peer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// To this endpoint, from this one of our sockets.
    Direct(SocketAddr, Socket),
    Relay,
    /// No way to reach the peer yet.
    Nowhere,
}

#[derive(Debug, Clone, Copy)]
struct Direct {
    endpoint: SocketAddr,
    /// Our socket that reaches it (a spare one after birthday probing, see `birthday`).
    socket: Socket,
    /// `None` for a configured endpoint that has not answered yet.
    last_rx: Option<Instant>,
    rtt: Option<Duration>,
}

#[derive(Debug, Clone, Copy)]
struct Outstanding {
    nonce: u64,
    to: SocketAddr,
    socket: Socket,
    sent: Instant,
}

/// The path state of one peer.
#[derive(Debug, Default)]
pub struct PeerPath {
    /// Configured with `--peer KEY@HOST:PORT`: always direct, no relay, no probing.
    fixed: bool,
    direct: Option<Direct>,
    /// Where to probe, and from which of our sockets.
    candidates: Vec<(SocketAddr, Socket)>,
    punch_until: Option<Instant>,
    next_round: Option<Instant>,
    /// Probes sent and not yet answered (bounded ring).
    outstanding: Vec<Outstanding>,
    last_tx: Option<Instant>,
    last_probe: Option<Instant>,
    last_relay_rx: Option<Instant>,
    next_connect: Option<Instant>,
}

impl PeerPath {
    /// A peer at a configured endpoint.
    pub fn fixed(endpoint: SocketAddr) -> PeerPath {
        PeerPath {
            fixed: true,
            direct: Some(Direct {
                endpoint,
                socket: Socket::Main,
                last_rx: None,
                rtt: None,
            }),
            ..PeerPath::default()
        }
    }

    /// A peer found through the rendezvous.
    pub fn discovered() -> PeerPath {
        PeerPath::default()
    }

    pub fn is_fixed(&self) -> bool {
        self.fixed
    }

    /// Where to send now. `relay` says whether the rendezvous can relay for us.
    pub fn route(&self, relay: bool) -> Route {
        match self.direct {
            Some(d) => Route::Direct(d.endpoint, d.socket),
            None if relay => Route::Relay,
            None => Route::Nowhere,
        }
    }

    pub fn direct_endpoint(&self) -> Option<SocketAddr> {
        self.direct.map(|d| d.endpoint)
    }

    /// A direct path answered at or after `since`: found now, not a stale one from before
    /// (the peer restarted or moved, and asks for a new introduction).
    pub fn direct_heard_since(&self, since: Instant) -> bool {
        self.direct
            .is_some_and(|d| d.last_rx.is_some_and(|t| t >= since))
    }

    /// The spare socket the direct path uses, if it uses one.
    pub fn spare(&self) -> Option<u8> {
        match self.direct {
            Some(Direct {
                socket: Socket::Spare(i),
                ..
            }) => Some(i),
            _ => None,
        }
    }

    pub fn direct_rtt(&self) -> Option<Duration> {
        self.direct.and_then(|d| d.rtt)
    }

    /// Traffic flows to the peer (sent to lately).
    pub fn is_active(&self, now: Instant) -> bool {
        self.active(now)
    }

    /// Traffic flows to the peer through the relay (no direct path, sent to lately).
    pub fn relays_traffic(&self, now: Instant) -> bool {
        !self.fixed && self.direct.is_none() && self.active(now)
    }

    pub fn on_tx(&mut self, now: Instant) {
        self.last_tx = Some(now);
    }

    /// An authenticated datagram arrived straight from `from` on `socket`: that is where the
    /// peer is now (roaming and NAT rebinding are followed this way).
    pub fn on_direct_rx(&mut self, from: SocketAddr, socket: Socket, now: Instant) {
        match &mut self.direct {
            Some(d) if d.endpoint == from && d.socket == socket => d.last_rx = Some(now),
            _ => {
                self.direct = Some(Direct {
                    endpoint: from,
                    socket,
                    last_rx: Some(now),
                    rtt: None,
                })
            }
        }
    }

    pub fn on_relay_rx(&mut self, now: Instant) {
        self.last_relay_rx = Some(now);
    }

    /// The rendezvous introduced us: probe these candidates from now on, newest last (a
    /// candidate heard of again moves to the end); the oldest are dropped past
    /// [`MAX_CANDIDATES`].
    pub fn start_punch(&mut self, candidates: &[SocketAddr], now: Instant) -> PunchStart {
        self.start_punch_from(candidates, Socket::Main, now)
    }

    /// [`PeerPath::start_punch`] with the probes sent from `socket`.
    fn start_punch_from(
        &mut self,
        candidates: &[SocketAddr],
        socket: Socket,
        now: Instant,
    ) -> PunchStart {
        // At most the newest MAX_CANDIDATES of a long list can stay anyway.
        let skip = candidates.len().saturating_sub(MAX_CANDIDATES);
        let mut evicted = skip as u64;
        for &c in &candidates[skip..] {
            if let Some(i) = self.candidates.iter().position(|&k| k == (c, socket)) {
                self.candidates.remove(i);
            } else if self.candidates.len() >= MAX_CANDIDATES {
                self.candidates.remove(0);
                evicted += 1;
            }
            self.candidates.push((c, socket));
        }
        let opened = self.punch_until.is_none();
        self.punch_until = Some(now + PUNCH_WINDOW);
        self.next_round = Some(now);
        self.next_connect = Some(now + RETRY_DIRECT);
        PunchStart { opened, evicted }
    }

    /// The peer's probe reached us from `from`, on our `socket`: probe back there too, from
    /// that socket (it is the endpoint its NAT opened towards us, which may be the only one
    /// that works).
    pub fn on_probe_from(&mut self, from: SocketAddr, socket: Socket, now: Instant) -> PunchStart {
        if self.fixed
            || self
                .direct
                .is_some_and(|d| d.endpoint == from && d.socket == socket)
        {
            return PunchStart::default();
        }
        self.start_punch_from(&[from], socket, now)
    }

    /// Remembers a probe the caller sent from `socket`.
    pub fn probe_sent(&mut self, nonce: u64, to: SocketAddr, socket: Socket, now: Instant) {
        if self.outstanding.len() >= 4 * MAX_CANDIDATES {
            self.outstanding.remove(0);
        }
        self.outstanding.push(Outstanding {
            nonce,
            to,
            socket,
            sent: now,
        });
        self.last_probe = Some(now);
    }

    /// A probe answer from `from` on our `socket`, echoing `nonce`. Returns true if it made or
    /// changed the direct path.
    pub fn on_probe_ack(
        &mut self,
        nonce: u64,
        from: SocketAddr,
        socket: Socket,
        now: Instant,
    ) -> bool {
        let Some(i) = self
            .outstanding
            .iter()
            .position(|o| o.nonce == nonce && o.to == from && o.socket == socket)
        else {
            return false;
        };
        let probe = self.outstanding.swap_remove(i);
        self.answered(from, socket, now.saturating_duration_since(probe.sent), now)
    }

    /// A probe sent `rtt` ago to `from`, from our `socket`, was answered (one of ours, or one
    /// of birthday probing's). Returns true if it made or changed the direct path.
    pub fn answered(
        &mut self,
        from: SocketAddr,
        socket: Socket,
        rtt: Duration,
        now: Instant,
    ) -> bool {
        match &mut self.direct {
            Some(d) if d.endpoint == from && d.socket == socket => {
                d.last_rx = Some(now);
                d.rtt = Some(rtt);
                false
            }
            // A live path stays unless this one is faster; a silent one gives way.
            Some(d)
                if d.rtt.is_some_and(|cur| rtt + SWITCH_MARGIN >= cur)
                    && d.last_rx
                        .is_some_and(|t| now.saturating_duration_since(t) < PROBE_QUIET) =>
            {
                false
            }
            _ => {
                self.direct = Some(Direct {
                    endpoint: from,
                    socket,
                    last_rx: Some(now),
                    rtt: Some(rtt),
                });
                true
            }
        }
    }

    /// Probes due at `now`: every candidate once per punch round, and the direct endpoint when
    /// it has gone quiet under traffic. Says whether a punch window closed now, and how.
    pub fn poll_probes(
        &mut self,
        now: Instant,
        mut due: impl FnMut(SocketAddr, Socket),
    ) -> PunchEnd {
        if self.fixed {
            return PunchEnd::NotNow;
        }
        let mut end = PunchEnd::NotNow;
        if let (Some(until), Some(next)) = (self.punch_until, self.next_round) {
            if now >= until {
                self.punch_until = None;
                self.next_round = None;
                end = if self.direct.is_some() {
                    PunchEnd::Direct
                } else {
                    PunchEnd::Failed
                };
            } else if now >= next {
                self.next_round = Some(now + PUNCH_INTERVAL);
                for &(to, socket) in &self.candidates {
                    due(to, socket);
                }
            }
        }
        if let Some(d) = self.direct {
            let quiet = d
                .last_rx
                .map_or(Duration::MAX, |t| now.saturating_duration_since(t));
            let probed_lately = self
                .last_probe
                .is_some_and(|t| now.saturating_duration_since(t) < PROBE_QUIET / 2);
            if self.active(now) && quiet >= PROBE_QUIET && !probed_lately {
                due(d.endpoint, d.socket);
            }
        }
        end
    }

    /// When [`PeerPath::poll_probes`] next has a punch round, or the window's end.
    pub fn punch_deadline(&self) -> Option<Instant> {
        match (self.punch_until, self.next_round) {
            (Some(until), Some(next)) => Some(until.min(next)),
            _ => None,
        }
    }

    /// A direct path under traffic is watched at the timer tick: probed once quiet, given up
    /// once silent (see [`PeerPath::check_direct`]).
    pub fn watches_direct(&self, now: Instant) -> bool {
        !self.fixed && self.direct.is_some() && self.active(now)
    }

    /// When [`PeerPath::wants_connect`] says yes next (asked only while registered).
    pub fn connect_deadline(&self, now: Instant) -> Option<Instant> {
        if self.fixed || self.direct.is_some() {
            return None;
        }
        Some(self.next_connect.unwrap_or(now))
    }

    /// Drops a direct path that went silent under traffic. Returns true if it did.
    pub fn check_direct(&mut self, now: Instant) -> bool {
        let Some(d) = self.direct else {
            return false;
        };
        if self.fixed
            || !self.active(now)
            || d.last_rx
                .is_some_and(|t| now.saturating_duration_since(t) < DIRECT_TIMEOUT)
        {
            return false;
        }
        self.direct = None;
        // Ask for a new punch at once: the peer may have moved.
        self.next_connect = Some(now);
        true
    }

    /// Whether to ask the rendezvous for a punch now.
    pub fn wants_connect(&mut self, now: Instant) -> bool {
        if self.fixed || self.direct.is_some() {
            return false;
        }
        if self.next_connect.is_some_and(|t| now < t) {
            return false;
        }
        self.next_connect = Some(now + RETRY_DIRECT);
        true
    }

    /// Forget the punch schedule (after our own endpoint changed): connect again now.
    pub fn reconnect_now(&mut self, now: Instant) {
        if !self.fixed {
            self.next_connect = Some(now);
        }
    }

    fn active(&self, now: Instant) -> bool {
        self.last_tx
            .is_some_and(|t| now.saturating_duration_since(t) < ACTIVE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: Socket = Socket::Main;

    fn ep(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn probes(path: &mut PeerPath, now: Instant) -> Vec<SocketAddr> {
        let mut v = Vec::new();
        path.poll_probes(now, |to, _| v.push(to));
        v
    }

    #[test]
    fn relayed_until_a_probe_is_answered_then_direct() {
        let t0 = Instant::now();
        let mut p = PeerPath::discovered();
        assert_eq!(p.route(false), Route::Nowhere);
        assert_eq!(p.route(true), Route::Relay);
        assert!(p.wants_connect(t0));
        assert!(!p.wants_connect(t0), "not twice in a row");
        let (public, lan) = (ep("203.0.113.2:40000"), ep("192.0.2.10:51870"));
        p.start_punch(&[public, lan], t0);
        assert_eq!(probes(&mut p, t0), vec![public, lan]);
        assert!(
            probes(&mut p, t0 + Duration::from_millis(50)).is_empty(),
            "rounds are paced"
        );
        p.probe_sent(1, public, M, t0);
        p.probe_sent(2, lan, M, t0);
        assert!(
            !p.on_probe_ack(1, lan, M, t0),
            "an ack must come from where the probe went"
        );
        assert!(p.on_probe_ack(1, public, M, t0 + Duration::from_millis(10)));
        assert_eq!(p.route(true), Route::Direct(public, M));
        // The LAN answers faster: it takes over.
        assert!(p.on_probe_ack(2, lan, M, t0 + Duration::from_millis(2)));
        assert_eq!(p.route(true), Route::Direct(lan, M));
        assert!(
            !p.wants_connect(t0 + RETRY_DIRECT * 2),
            "direct pairs do not re-punch"
        );
        let after = t0 + PUNCH_WINDOW + Duration::from_millis(1);
        assert!(probes(&mut p, after).is_empty(), "the punch window closes");
    }

    #[test]
    fn a_silent_direct_path_under_traffic_falls_back_to_the_relay() {
        let t0 = Instant::now();
        let mut p = PeerPath::discovered();
        let peer = ep("203.0.113.2:40000");
        p.on_direct_rx(peer, M, t0);
        // Idle: nothing is watched, the path stays.
        assert!(!p.check_direct(t0 + DIRECT_TIMEOUT * 3));
        let t1 = t0 + DIRECT_TIMEOUT * 3;
        p.on_tx(t1);
        assert_eq!(
            probes(&mut p, t1),
            vec![peer],
            "quiet under traffic: probe it"
        );
        p.probe_sent(9, peer, M, t1);
        assert!(
            probes(&mut p, t1 + Duration::from_millis(100)).is_empty(),
            "paced"
        );
        p.on_tx(t1 + DIRECT_TIMEOUT);
        assert!(p.check_direct(t1 + DIRECT_TIMEOUT));
        assert_eq!(p.route(true), Route::Relay);
        assert!(p.wants_connect(t1 + DIRECT_TIMEOUT), "a new punch at once");
    }

    #[test]
    fn a_punch_window_ends_failed_or_direct_once() {
        let t0 = Instant::now();
        let candidate = ep("203.0.113.2:40000");
        let end = |p: &mut PeerPath, at: Instant| p.poll_probes(at, |_, _| {});
        let mut p = PeerPath::discovered();
        assert!(p.start_punch(&[candidate], t0).opened, "opens a window");
        assert!(
            !p.start_punch(&[candidate], t0 + Duration::from_secs(1))
                .opened,
            "extends the running one"
        );
        assert_eq!(end(&mut p, t0 + Duration::from_secs(2)), PunchEnd::NotNow);
        let closed = t0 + Duration::from_secs(1) + PUNCH_WINDOW;
        assert_eq!(end(&mut p, closed), PunchEnd::Failed);
        assert_eq!(end(&mut p, closed), PunchEnd::NotNow, "reported once");

        assert!(p.start_punch(&[candidate], closed).opened);
        p.probe_sent(1, candidate, M, closed);
        assert!(p.on_probe_ack(1, candidate, M, closed));
        assert_eq!(end(&mut p, closed + PUNCH_WINDOW), PunchEnd::Direct);
    }

    #[test]
    fn candidates_past_the_limit_evict_the_oldest() {
        let t0 = Instant::now();
        let at = |port: u16| SocketAddr::from(([203, 0, 113, 2], port));
        let mut p = PeerPath::discovered();
        let first: Vec<SocketAddr> = (0..MAX_CANDIDATES as u16).map(at).collect();
        assert_eq!(p.start_punch(&first, t0).evicted, 0);
        // Heard of again: it becomes the newest and survives the next eviction.
        p.start_punch(&[at(0)], t0);
        // The peer roamed: its new endpoints are probed, the oldest old ones are not.
        let start = p.start_punch(&[at(100), at(101)], t0);
        assert_eq!(start.evicted, 2);
        let probed = probes(&mut p, t0);
        assert_eq!(probed.len(), MAX_CANDIDATES);
        for kept in [at(0), at(100), at(101), at(3)] {
            assert!(probed.contains(&kept), "{kept} not probed");
        }
        for gone in [at(1), at(2)] {
            assert!(!probed.contains(&gone), "{gone} still probed");
        }
        // A list longer than the limit keeps its newest.
        let long: Vec<SocketAddr> = (200..200 + 2 * MAX_CANDIDATES as u16).map(at).collect();
        let start = p.start_punch(&long, t0 + PUNCH_INTERVAL);
        assert_eq!(start.evicted, 2 * MAX_CANDIDATES as u64);
        let probed = probes(&mut p, t0 + PUNCH_INTERVAL);
        assert_eq!(probed, long[MAX_CANDIDATES..]);
    }

    #[test]
    fn traffic_from_a_new_endpoint_moves_the_path() {
        let t0 = Instant::now();
        let mut p = PeerPath::discovered();
        p.on_direct_rx(ep("203.0.113.2:40000"), M, t0);
        p.on_direct_rx(ep("203.0.113.2:40999"), M, t0);
        assert_eq!(p.route(true), Route::Direct(ep("203.0.113.2:40999"), M));
    }

    #[test]
    fn fixed_peers_never_probe_or_fall_back() {
        let t0 = Instant::now();
        let mut p = PeerPath::fixed(ep("198.51.100.2:51870"));
        p.on_tx(t0 + Duration::from_secs(60));
        assert!(!p.check_direct(t0 + Duration::from_secs(60)));
        assert!(probes(&mut p, t0 + Duration::from_secs(60)).is_empty());
        assert!(!p.wants_connect(t0));
        assert_eq!(p.route(false), Route::Direct(ep("198.51.100.2:51870"), M));
    }
}
