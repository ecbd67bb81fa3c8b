//! The node's side of the rendezvous: registration and its refresh (which also holds the NAT
//! mapping open), NAT-behaviour discovery from two rendezvous ports, and checking that every
//! answer is signed by the rendezvous we trust.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::identity::NodeKey;
use crate::wire::control::{NatKind, COOKIE_LEN};

/// Until the first `Registered`, and after a lost one, registration is retried this often.
const REGISTER_RETRY: Duration = Duration::from_secs(2);
/// Least time between two registrations sent at once because of a `Challenge`.
const CHALLENGE_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// NAT behaviour is measured again this often (and whenever the public endpoint changes).
const NAT_RECHECK: Duration = Duration::from_secs(300);
/// NAT probes are answered within this, or the measurement is retried.
const NAT_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the rendezvous is and, if known, its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RendezvousConfig {
    pub addr: SocketAddr,
    /// The second port used to tell endpoint-independent from endpoint-dependent mapping.
    pub alt_port: u16,
    /// Pinned key. `None`: trust the first key that answers and report it (see
    /// `Event::RendezvousKey`) so the daemon can pin it from then on.
    pub key: Option<NodeKey>,
    /// Where it accepts TLS streams (`pilotd rendezvous --tcp-listen`), for when UDP to it
    /// gets no answer (see `node::stream`); `None`: UDP only.
    pub stream: Option<SocketAddr>,
}

/// What `pilotctl netcheck` reports.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct NetStatus {
    pub rendezvous: Option<String>,
    pub registered: bool,
    /// The other rendezvous the node moves to if this one stops answering, in order.
    #[serde(default)]
    pub standby: Vec<String>,
    /// The first rendezvous, while the node uses another because it stopped answering.
    #[serde(default)]
    pub preferred: Option<String>,
    /// The TLS stream the node reaches the rendezvous over, while UDP to it gets no answer.
    #[serde(default)]
    pub stream: Option<String>,
    /// The public endpoint peers are told first: the configured one (`--endpoint`), else the
    /// one the rendezvous sees.
    pub endpoint: Option<String>,
    /// `endpoint` is configured (`--endpoint`), not discovered; NAT behaviour is then not
    /// measured.
    #[serde(default)]
    pub endpoint_configured: bool,
    /// This node's endpoint as the rendezvous sees it.
    #[serde(default)]
    pub observed: Option<String>,
    pub nat: NatKind,
    /// The NAT kept the local port number.
    pub port_preserved: Option<bool>,
    /// Endpoints seen at the rendezvous' two ports (equal for endpoint-independent mapping).
    pub mapped_main: Option<String>,
    pub mapped_alt: Option<String>,
    /// Why the node is not registered, when it knows (see [`RendezvousProblem`]).
    #[serde(default)]
    pub problem: Option<String>,
    /// How far this system's clock is from the rendezvous' (ms to add to it), as measured by
    /// the last answer to a registration; `None` before one.
    #[serde(default)]
    pub clock_offset_ms: Option<i64>,
    /// The correction the node signs with (0: its own clock is close enough).
    #[serde(default)]
    pub clock_correction_ms: i64,
    /// What the router offered for port mapping (PCP, NAT-PMP), and the mapping.
    #[serde(default)]
    pub port_mapping: crate::portmap::PortMapStatus,
}

/// Why the rendezvous does not register this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RendezvousProblem {
    /// Registrations went unanswered for this long.
    NoAnswer { secs: u64 },
    /// Registrations over the TLS stream (UDP to the rendezvous is blocked) went unanswered
    /// for this long.
    NoAnswerOverTls { secs: u64, tls: SocketAddr },
    /// Answers came signed by `got`, but `pinned` is the key this node trusts.
    WrongKey { got: String, pinned: String },
}

impl std::fmt::Display for RendezvousProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RendezvousProblem::NoAnswer { secs } => write!(
                f,
                "no answer for {secs} s (is it running and reachable over UDP, at that address \
                 and port?)"
            ),
            RendezvousProblem::NoAnswerOverTls { secs, tls } => write!(
                f,
                "no answer over UDP, and none over TLS at {tls} for {secs} s either (does it \
                 take TLS there: `pilotd rendezvous --tcp-listen`, this node's \
                 --rendezvous-tls-port? is TCP to it let through?)"
            ),
            RendezvousProblem::WrongKey { got, pinned } => write!(
                f,
                "it answers signed by key {got}, but this node trusts key {pinned} (a different \
                 rendezvous, or its key changed: give the right one with --rendezvous \
                 KEY@HOST:PORT, or remove rendezvous.json from the state directory to pin anew)"
            ),
        }
    }
}

/// Registrations unanswered this long make a problem worth telling (a few retries).
const NO_ANSWER_AFTER: Duration = Duration::from_secs(5);

pub(crate) struct RendezvousLink {
    pub config: RendezvousConfig,
    /// The key replies must be signed with (pinned, or learned on first contact).
    pub key: Option<NodeKey>,
    pub keepalive: Duration,
    /// Nonce of the registration awaiting its answer, and when it was sent.
    pub pending_register: Option<u64>,
    register_sent_at: Option<Instant>,
    /// How far our system clock is from the rendezvous' (ms to add), from the last answer
    /// to a registration.
    pub clock_offset_ms: Option<i64>,
    pub next_register: Option<Instant>,
    /// Last `Registered`, and when; registration lapses after three missed refreshes.
    pub last_registered: Option<Instant>,
    pub observed: Option<SocketAddr>,
    /// The public endpoint the operator configured, if any (`--endpoint`).
    pub configured: Option<SocketAddr>,
    /// Since when registrations have gone unanswered (reset by an answer).
    unanswered_since: Option<Instant>,
    /// A signed answer from the rendezvous' address under another key than the pinned one,
    /// since the last registration that succeeded.
    pub wrong_key: Option<NodeKey>,
    /// The rendezvous' address cookie for our endpoint (from its last `Challenge`), sent
    /// with every registration: it proves we receive where we send from.
    pub cookie: Option<[u8; COOKIE_LEN]>,
    /// When a `Challenge`, and a `Refused { Stale }`, last made us register at once.
    last_challenge: Option<Instant>,
    last_stale: Option<Instant>,
    pub nat: NatKind,
    pub nat_probes: [Option<u64>; 2],
    pub mapped: [Option<SocketAddr>; 2],
    pub next_nat_probe: Option<Instant>,
    /// Everything for the main address goes over the TLS stream (UDP got no answer; see
    /// `node::stream`).
    pub over_stream: bool,
}

impl RendezvousLink {
    /// `configured`: the public endpoint the operator gave, if any.
    pub fn new(
        config: RendezvousConfig,
        keepalive: Duration,
        configured: Option<SocketAddr>,
    ) -> RendezvousLink {
        RendezvousLink {
            key: config.key,
            config,
            keepalive,
            pending_register: None,
            register_sent_at: None,
            clock_offset_ms: None,
            next_register: None,
            last_registered: None,
            observed: None,
            configured,
            unanswered_since: None,
            wrong_key: None,
            cookie: None,
            last_challenge: None,
            last_stale: None,
            nat: NatKind::Unknown,
            nat_probes: [None; 2],
            mapped: [None; 2],
            next_nat_probe: None,
            over_stream: false,
        }
    }

    /// From now on over the stream: a new endpoint to the rendezvous, so register afresh
    /// (without the UDP endpoint's cookie), and forget what UDP told of our NAT.
    pub fn use_stream(&mut self, now: Instant) {
        self.over_stream = true;
        self.reset_endpoint(now);
    }

    /// Back on UDP: register there at once (the rendezvous challenges the endpoint first).
    pub fn use_udp(&mut self, now: Instant) {
        self.over_stream = false;
        self.reset_endpoint(now);
    }

    fn reset_endpoint(&mut self, now: Instant) {
        self.cookie = None;
        self.pending_register = None;
        self.unanswered_since = None;
        self.next_register = Some(now);
        self.observed = None;
        self.nat = NatKind::Unknown;
        self.nat_probes = [None; 2];
        self.mapped = [None; 2];
        self.next_nat_probe = None;
    }

    /// The two rendezvous endpoints: main, then alternate.
    pub fn ports(&self) -> [SocketAddr; 2] {
        let mut alt = self.config.addr;
        alt.set_port(self.config.alt_port);
        [self.config.addr, alt]
    }

    /// Registered and not lapsed: the relay will carry our frames.
    pub fn is_registered(&self, now: Instant) -> bool {
        self.last_registered
            .is_some_and(|t| now.saturating_duration_since(t) < self.keepalive * 3)
    }

    /// Whether a datagram from `from` comes from the rendezvous (either port).
    pub fn is_rendezvous(&self, from: SocketAddr) -> bool {
        self.ports().contains(&from)
    }

    /// Whether `sender` may speak for the rendezvous. On first contact without a pinned key,
    /// the first signed answer to our own registration decides (trust on first use).
    pub fn accepts(&self, sender: &NodeKey) -> bool {
        self.key.is_none_or(|k| k == *sender)
    }

    /// Since when registrations have gone unanswered (`None` while answered).
    pub fn unanswered_since(&self) -> Option<Instant> {
        self.unanswered_since
    }

    /// How long registrations have gone unanswered (zero while answered).
    pub fn unanswered_for(&self, now: Instant) -> Duration {
        self.unanswered_since
            .map_or(Duration::ZERO, |t| now.saturating_duration_since(t))
    }

    /// Makes the next refresh come at most `within` after the last answer (unless one is in
    /// flight, which retries on its own).
    pub fn refresh_within(&mut self, within: Duration, now: Instant) {
        if self.pending_register.is_some() {
            return;
        }
        let due = self.last_registered.map_or(now, |t| t + within);
        if self.next_register.is_none_or(|t| t > due) {
            self.next_register = Some(due);
        }
    }

    /// A registration is due.
    pub fn register_due(&self, now: Instant) -> bool {
        self.next_register.is_none_or(|t| now >= t)
    }

    /// A `Challenge`: keep the cookie and register again at once with it — at most once per
    /// [`CHALLENGE_MIN_INTERVAL`], so a confused rendezvous cannot make us loop. Returns
    /// whether a registration is now due.
    pub fn on_challenge(&mut self, cookie: [u8; COOKIE_LEN], now: Instant) -> bool {
        self.cookie = Some(cookie);
        register_now(&mut self.last_challenge, &mut self.next_register, now)
    }

    /// The rendezvous refused our registration as dated outside its window: our clock was
    /// wrong, and has been corrected from that answer. Register again at once (as rate-limited
    /// as after a challenge, and apart from it: the challenge usually follows). Returns
    /// whether a registration is now due.
    pub fn on_stale(&mut self, now: Instant) -> bool {
        register_now(&mut self.last_stale, &mut self.next_register, now)
    }

    pub fn register_sent(&mut self, nonce: u64, now: Instant) {
        self.unanswered_since.get_or_insert(now);
        self.pending_register = Some(nonce);
        self.register_sent_at = Some(now);
        self.next_register = Some(now + REGISTER_RETRY);
    }

    /// An answer signed by the rendezvous to registration `echo`, dated `rendezvous_ms` by its
    /// clock, arriving at `now` when our uncorrected clock reads `local_ms`. Echoing our
    /// nonce makes it fresh whatever either clock says, so it measures how far our clock is
    /// off (half the round trip is added to the rendezvous' time). Returns the offset (ms to
    /// add to our clock), or `None` when this answers no pending registration.
    pub fn measure_clock(
        &mut self,
        echo: u64,
        rendezvous_ms: u64,
        local_ms: u64,
        now: Instant,
    ) -> Option<i64> {
        if self.pending_register != Some(echo) {
            return None;
        }
        // The answer is as old as the round trip at most; a slow one (delayed on the way,
        // or a captured registration answered late) measures nothing precise.
        let rtt = now.saturating_duration_since(self.register_sent_at?);
        if rtt > REGISTER_RETRY {
            return None;
        }
        let half_rtt = rtt.as_millis() as u64 / 2;
        let offset = (rendezvous_ms.saturating_add(half_rtt) as i128 - local_ms as i128)
            .clamp(i64::MIN as i128, i64::MAX as i128) as i64;
        self.clock_offset_ms = Some(offset);
        Some(offset)
    }

    /// A `Registered` answer. Returns true if our public endpoint changed (or is new), which
    /// means NAT behaviour must be measured again and peers re-introduced.
    pub fn on_registered(
        &mut self,
        sender: NodeKey,
        echo: u64,
        observed: SocketAddr,
        keepalive_secs: u16,
        now: Instant,
    ) -> bool {
        if self.pending_register != Some(echo) {
            return false;
        }
        self.key.get_or_insert(sender);
        self.pending_register = None;
        self.last_registered = Some(now);
        self.unanswered_since = None;
        self.wrong_key = None;
        if keepalive_secs > 0 {
            self.keepalive = Duration::from_secs(u64::from(keepalive_secs));
        }
        self.next_register = Some(now + self.keepalive);
        if self.over_stream {
            // The stream's endpoint at the rendezvous: nothing of our NAT, nothing to tell.
            return false;
        }
        let changed = self.observed != Some(observed);
        self.observed = Some(observed);
        if let Some(configured) = self.configured {
            // Not measured: seen at the configured endpoint itself, nothing in between
            // translates; seen elsewhere, a port forward or a second address does, unknown how.
            self.nat = if observed == configured {
                NatKind::None
            } else {
                NatKind::Unknown
            };
        } else if changed {
            self.next_nat_probe = Some(now);
            self.mapped = [None; 2];
        }
        changed
    }

    /// The rendezvous no longer knows us (it refused with NotRegistered): register now.
    pub fn forget_registration(&mut self, now: Instant) {
        self.last_registered = None;
        self.next_register = Some(now);
    }

    /// When the NAT is next measured (see [`RendezvousLink::nat_probe_due`]).
    pub fn nat_probe_deadline(&self) -> Option<Instant> {
        (!self.over_stream && self.last_registered.is_some())
            .then_some(self.next_nat_probe)
            .flatten()
    }

    pub fn nat_probe_due(&self, now: Instant) -> bool {
        !self.over_stream
            && self.last_registered.is_some()
            && self.next_nat_probe.is_some_and(|t| now >= t)
    }

    pub fn nat_probes_sent(&mut self, nonces: [u64; 2], now: Instant) {
        self.nat_probes = nonces.map(Some);
        self.mapped = [None; 2];
        self.next_nat_probe = Some(now + NAT_PROBE_TIMEOUT);
    }

    /// A `NatProbeReply`; once both ports answered, classify the mapping. `own` are the
    /// node's own (LAN) endpoints.
    pub fn on_nat_probe_reply(
        &mut self,
        echo: u64,
        observed: SocketAddr,
        own: &[SocketAddr],
        now: Instant,
    ) {
        let Some(i) = self.nat_probes.iter().position(|n| *n == Some(echo)) else {
            return;
        };
        self.nat_probes[i] = None;
        self.mapped[i] = Some(observed);
        if let [Some(main), Some(alt)] = self.mapped {
            self.nat = if own.contains(&main) {
                NatKind::None
            } else if main == alt {
                NatKind::EndpointIndependent
            } else {
                NatKind::EndpointDependent
            };
            self.next_nat_probe = Some(now + NAT_RECHECK);
        }
    }

    /// Why this node is not registered, when it can tell: a wrong key beats no answer.
    pub fn problem(&self, now: Instant) -> Option<RendezvousProblem> {
        if self.is_registered(now) {
            return None;
        }
        if let (Some(got), Some(pinned)) = (self.wrong_key, self.key) {
            return Some(RendezvousProblem::WrongKey {
                got: got.to_string(),
                pinned: pinned.to_string(),
            });
        }
        let since = self.unanswered_since?;
        let waited = now.saturating_duration_since(since);
        let secs = waited.as_secs();
        (waited >= NO_ANSWER_AFTER).then_some(match self.config.stream {
            Some(tls) if self.over_stream => RendezvousProblem::NoAnswerOverTls { secs, tls },
            _ => RendezvousProblem::NoAnswer { secs },
        })
    }

    pub fn status(&self, local_port: u16, now: Instant) -> NetStatus {
        NetStatus {
            problem: self.problem(now).map(|p| p.to_string()),
            rendezvous: Some(self.config.addr.to_string()),
            standby: Vec::new(),
            preferred: None,
            stream: (self.config.stream)
                .filter(|_| self.over_stream)
                .map(|s| s.to_string()),
            registered: self.is_registered(now),
            endpoint: self.configured.or(self.observed).map(|e| e.to_string()),
            endpoint_configured: self.configured.is_some(),
            observed: self.observed.map(|e| e.to_string()),
            nat: self.nat,
            port_preserved: self.mapped[0].map(|m| m.port() == local_port),
            mapped_main: self.mapped[0].map(|e| e.to_string()),
            mapped_alt: self.mapped[1].map(|e| e.to_string()),
            clock_offset_ms: self.clock_offset_ms,
            clock_correction_ms: 0,
            port_mapping: Default::default(),
        }
    }
}

/// Makes a registration due now unless the same cause (`last`) did less than
/// [`CHALLENGE_MIN_INTERVAL`] ago, so a confused rendezvous cannot make us loop.
fn register_now(last: &mut Option<Instant>, next: &mut Option<Instant>, now: Instant) -> bool {
    if last.is_some_and(|t| now < t + CHALLENGE_MIN_INTERVAL) {
        return false;
    }
    *last = Some(now);
    *next = Some(now);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link() -> RendezvousLink {
        let config = RendezvousConfig {
            addr: "203.0.113.10:7000".parse().unwrap(),
            alt_port: 7001,
            key: None,
            stream: None,
        };
        RendezvousLink::new(config, Duration::from_secs(25), None)
    }

    #[test]
    fn registration_learns_the_key_once_and_the_public_endpoint() {
        let t0 = Instant::now();
        let mut l = link();
        assert!(l.register_due(t0) && !l.is_registered(t0));
        l.register_sent(11, t0);
        let pub1 = "203.0.113.1:51870".parse().unwrap();
        assert!(
            !l.on_registered(NodeKey([1; 32]), 99, pub1, 25, t0),
            "wrong echo is ignored"
        );
        assert!(l.on_registered(NodeKey([1; 32]), 11, pub1, 25, t0));
        assert!(
            l.is_registered(t0) && l.accepts(&NodeKey([1; 32])) && !l.accepts(&NodeKey([2; 32]))
        );
        assert!(
            !l.register_due(t0 + Duration::from_secs(24))
                && l.register_due(t0 + Duration::from_secs(25))
        );
        assert!(
            !l.is_registered(t0 + Duration::from_secs(75)),
            "lapses after three missed refreshes"
        );
        // Same endpoint on refresh: no change; a new one (NAT rebinding): change.
        l.register_sent(12, t0);
        assert!(!l.on_registered(NodeKey([1; 32]), 12, pub1, 25, t0));
        l.register_sent(13, t0);
        assert!(l.on_registered(
            NodeKey([1; 32]),
            13,
            "203.0.113.1:1024".parse().unwrap(),
            25,
            t0
        ));
    }

    #[test]
    fn a_configured_endpoint_is_reported_and_the_nat_is_not_measured() {
        let t0 = Instant::now();
        let configured: SocketAddr = "203.0.113.7:40000".parse().unwrap();
        for (observed, nat) in [
            ("203.0.113.7:55123", NatKind::Unknown),
            ("203.0.113.7:40000", NatKind::None),
        ] {
            let observed: SocketAddr = observed.parse().unwrap();
            let mut l = link();
            l.configured = Some(configured);
            l.register_sent(1, t0);
            assert!(l.on_registered(NodeKey([1; 32]), 1, observed, 25, t0));
            assert!(!l.nat_probe_due(t0 + NAT_RECHECK), "no NAT measurement");
            assert_eq!(l.nat, nat);
            let status = l.status(51870, t0);
            assert_eq!(status.endpoint, Some(configured.to_string()));
            assert!(status.endpoint_configured);
            assert_eq!(status.observed, Some(observed.to_string()));
        }
        // Without one, the endpoint is the observed one.
        let mut l = link();
        l.register_sent(1, t0);
        let observed: SocketAddr = "203.0.113.7:55123".parse().unwrap();
        l.on_registered(NodeKey([1; 32]), 1, observed, 25, t0);
        let status = l.status(51870, t0);
        assert_eq!(status.endpoint, Some(observed.to_string()));
        assert!(!status.endpoint_configured && l.nat_probe_due(t0));
    }

    #[test]
    fn a_rendezvous_that_does_not_answer_or_answers_under_another_key_is_named() {
        let t0 = Instant::now();
        let mut l = link();
        l.key = Some(NodeKey([7; 32]));
        l.register_sent(1, t0);
        assert_eq!(
            l.problem(t0 + Duration::from_secs(1)),
            None,
            "a few retries first"
        );
        assert_eq!(
            l.problem(t0 + NO_ANSWER_AFTER),
            Some(RendezvousProblem::NoAnswer { secs: 5 })
        );
        l.register_sent(2, t0 + REGISTER_RETRY);
        assert_eq!(
            l.problem(t0 + Duration::from_secs(9)),
            Some(RendezvousProblem::NoAnswer { secs: 9 }),
            "counted from the first unanswered one"
        );
        l.wrong_key = Some(NodeKey([8; 32]));
        let Some(RendezvousProblem::WrongKey { got, pinned }) = l.problem(t0) else {
            panic!("a wrong key is named")
        };
        assert_eq!(
            (got, pinned),
            (NodeKey([8; 32]).to_string(), NodeKey([7; 32]).to_string())
        );
        // An answer clears both.
        let now = t0 + Duration::from_secs(10);
        l.register_sent(3, now);
        assert!(l.on_registered(
            NodeKey([7; 32]),
            3,
            "203.0.113.7:1".parse().unwrap(),
            25,
            now
        ));
        assert_eq!(l.problem(now), None);
        assert_eq!(l.wrong_key, None);
    }

    #[test]
    fn nat_kind_comes_from_the_two_ports() {
        let t0 = Instant::now();
        let own: SocketAddr = "192.0.2.10:51870".parse().unwrap();
        let cases = [
            (own, own, NatKind::None),
            (
                "203.0.113.2:51870".parse().unwrap(),
                "203.0.113.2:51870".parse().unwrap(),
                NatKind::EndpointIndependent,
            ),
            (
                "203.0.113.2:40001".parse().unwrap(),
                "203.0.113.2:40002".parse().unwrap(),
                NatKind::EndpointDependent,
            ),
        ];
        for (main, alt, kind) in cases {
            let mut l = link();
            l.register_sent(1, t0);
            l.on_registered(NodeKey([1; 32]), 1, main, 25, t0);
            assert!(l.nat_probe_due(t0));
            l.nat_probes_sent([5, 6], t0);
            l.on_nat_probe_reply(6, alt, &[own], t0);
            assert_eq!(l.nat, NatKind::Unknown, "one answer is not enough");
            l.on_nat_probe_reply(5, main, &[own], t0);
            assert_eq!(l.nat, kind);
            assert_eq!(
                l.status(51870, t0).port_preserved,
                Some(main.port() == 51870)
            );
        }
    }
}
