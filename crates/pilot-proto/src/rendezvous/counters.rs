//! What the rendezvous did and refused, counted. Counting is all the packet path does for a
//! refused or dropped datagram: no logging above TRACE, no allocation.

use std::fmt;

/// Why a signed control message got no service (and usually no reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a control envelope (too short, unknown version, bad key) or an undecodable body.
    Malformed,
    /// The signature does not verify.
    BadSignature,
    /// The timestamp is outside the accepted window.
    Stale,
    /// The (sender, nonce) pair was seen before.
    Replay,
    /// A message the rendezvous never takes, or on the wrong port (e.g. `Register` on the
    /// alternate port).
    Unexpected,
    /// `Connect` or `Submit` from a node that is not registered (or expired).
    NotRegistered,
    /// `Connect` to a node that is not registered (or expired).
    UnknownTarget,
    /// `Connect` between nodes without a valid mutual trust record.
    NotAllowed,
    /// `Connect`, `Submit` or `Lookup` over the sender's rate.
    RateLimited,
    /// `Register` of a new node while the registry is at its size limit.
    RegistryFull,
    /// `Register` or `Submit` that could not be stored durably, so it was not acknowledged.
    StoreFailed,
    /// `Register` claiming a hostname another key holds.
    NameTaken,
    /// `Submit` of a statement that does not verify or is not the sender's to submit.
    BadStatement,
    /// `Submit` of a request or approval for a node with a full outbox, or while the outbox
    /// is at its global cap and the sender's source holds as many as any other.
    OutboxFull,
    /// A reply larger than its request, withheld because the endpoint it would go to has
    /// not been proven (no amplification towards a spoofed address).
    Unproven,
    /// `Register` of a known key over its registration rate.
    RegisterRate,
    /// `Register` claiming a new hostname over its source address' rate of name claims, or
    /// while the names held are at their limit.
    NameClaims,
    /// `Submit` of a record or revocation for a pair the ledger does not hold, while the
    /// ledger is at its size limit.
    LedgerFull,
    /// `Submit` of a record or revocation for a pair the ledger does not hold, over its
    /// source address' rate of new pairs.
    NewPairs,
    /// A datagram from a stream endpoint at a UDP port (spoofed), or over a stream from an
    /// endpoint that is not one.
    WrongTransport,
    /// `Submit` while the submissions waiting for the store's writes are at their limit.
    StoreBusy,
}

/// Why a relay frame was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayDrop {
    /// Too short, or no datagram after the header.
    Malformed,
    /// Arrived at the alternate port (relaying happens on the main port only).
    WrongPort,
    /// The source endpoint is no fresh node's registered endpoint.
    UnknownSender,
    /// The destination key is not a fresh registered node.
    UnknownTarget,
    /// The two nodes have no valid mutual trust record.
    NotAllowed,
    /// Over the sender's relay rate (or relaying is off).
    RateLimited,
    /// Larger than the caller's output buffer.
    TooBig,
    /// A forwarded frame (from another server) whose server is unknown, whose tag fails or
    /// whose counter was seen.
    BadForward,
}

impl Refusal {
    pub const ALL: [Refusal; 21] = [
        Refusal::Malformed,
        Refusal::BadSignature,
        Refusal::Stale,
        Refusal::Replay,
        Refusal::Unexpected,
        Refusal::NotRegistered,
        Refusal::UnknownTarget,
        Refusal::NotAllowed,
        Refusal::RateLimited,
        Refusal::RegistryFull,
        Refusal::StoreFailed,
        Refusal::NameTaken,
        Refusal::BadStatement,
        Refusal::OutboxFull,
        Refusal::Unproven,
        Refusal::RegisterRate,
        Refusal::NameClaims,
        Refusal::LedgerFull,
        Refusal::NewPairs,
        Refusal::WrongTransport,
        Refusal::StoreBusy,
    ];

    /// Stable snake_case name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::BadSignature => "bad_signature",
            Refusal::Stale => "stale",
            Refusal::Replay => "replay",
            Refusal::Unexpected => "unexpected",
            Refusal::NotRegistered => "not_registered",
            Refusal::UnknownTarget => "unknown_target",
            Refusal::NotAllowed => "not_allowed",
            Refusal::RateLimited => "rate_limited",
            Refusal::RegistryFull => "registry_full",
            Refusal::StoreFailed => "store_failed",
            Refusal::NameTaken => "name_taken",
            Refusal::BadStatement => "bad_statement",
            Refusal::OutboxFull => "outbox_full",
            Refusal::Unproven => "unproven",
            Refusal::RegisterRate => "register_rate",
            Refusal::NameClaims => "name_claims",
            Refusal::LedgerFull => "ledger_full",
            Refusal::NewPairs => "new_pairs",
            Refusal::WrongTransport => "wrong_transport",
            Refusal::StoreBusy => "store_busy",
        }
    }
}

impl RelayDrop {
    pub const ALL: [RelayDrop; 8] = [
        RelayDrop::Malformed,
        RelayDrop::WrongPort,
        RelayDrop::UnknownSender,
        RelayDrop::UnknownTarget,
        RelayDrop::NotAllowed,
        RelayDrop::RateLimited,
        RelayDrop::TooBig,
        RelayDrop::BadForward,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RelayDrop::Malformed => "malformed",
            RelayDrop::WrongPort => "wrong_port",
            RelayDrop::UnknownSender => "unknown_sender",
            RelayDrop::UnknownTarget => "unknown_target",
            RelayDrop::NotAllowed => "not_allowed",
            RelayDrop::RateLimited => "rate_limited",
            RelayDrop::TooBig => "too_big",
            RelayDrop::BadForward => "bad_forward",
        }
    }
}

/// Everything the server counts since it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    /// `Register` messages acknowledged (new registrations and refreshes).
    pub registrations: u64,
    /// `NatProbe` messages answered.
    pub nat_probes: u64,
    /// `Challenge`s sent: address cookies for requests from endpoints not yet proven.
    pub challenges: u64,
    /// Introductions made (each sends a `Punch` to both nodes).
    pub punches: u64,
    /// Relay frames forwarded, and the bytes of those frames.
    pub relay_frames: u64,
    pub relay_bytes: u64,
    /// Relay frames forwarded to another server sharing the store (their destination is
    /// registered there), and the bytes of those frames.
    pub relay_forwarded_frames: u64,
    pub relay_forwarded_bytes: u64,
    /// Registrations that expired.
    pub expired: u64,
    /// `Submit`s that changed something (a new delivery, a ledger change) and were stored.
    pub statements_stored: u64,
    /// Requests and approvals dropped unacknowledged to make room in a full outbox (the
    /// oldest of the source holding the most).
    pub outbox_evicted: u64,
    /// Registrations whose ledger digest differed from ours: the two sides exchanged what
    /// they hold.
    pub ledger_resyncs: u64,
    /// `Deliver` messages sent (first sends and resends).
    pub deliveries: u64,
    /// `Ack`s that removed a delivered statement.
    pub acks: u64,
    /// `Lookup`s answered (found or not).
    pub lookups: u64,
    /// Trust statements another server sharing the store took (ledger changes and
    /// deliveries), learnt from the store.
    pub statements_shared: u64,
    /// Store operations that failed (writes are retried; see `Refusal::StoreFailed`).
    pub store_errors: u64,
    refused: [u64; Refusal::ALL.len()],
    relay_drops: [u64; RelayDrop::ALL.len()],
}

impl Counters {
    #[inline]
    pub fn refuse(&mut self, reason: Refusal) {
        self.refused[reason as usize] += 1;
    }

    #[inline]
    pub fn relay_drop(&mut self, reason: RelayDrop) {
        self.relay_drops[reason as usize] += 1;
    }

    pub fn refused(&self, reason: Refusal) -> u64 {
        self.refused[reason as usize]
    }

    pub fn relay_dropped(&self, reason: RelayDrop) -> u64 {
        self.relay_drops[reason as usize]
    }
}

/// One line, `name=value` pairs: the totals, then every non-zero refusal (`refused_REASON`)
/// and relay drop (`relay_dropped_REASON`).
impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "registrations={} nat_probes={} punches={} relay_frames={} relay_bytes={} \
             relay_forwarded_bytes={} \
             expired={} statements_stored={} statements_shared={} deliveries={} acks={} \
             lookups={} store_errors={}",
            self.registrations,
            self.nat_probes,
            self.punches,
            self.relay_frames,
            self.relay_bytes,
            self.relay_forwarded_bytes,
            self.expired,
            self.statements_stored,
            self.statements_shared,
            self.deliveries,
            self.acks,
            self.lookups,
            self.store_errors
        )?;
        for r in Refusal::ALL {
            if self.refused(r) > 0 {
                write!(f, " refused_{}={}", r.name(), self.refused(r))?;
            }
        }
        for d in RelayDrop::ALL {
            if self.relay_dropped(d) > 0 {
                write!(f, " relay_dropped_{}={}", d.name(), self.relay_dropped(d))?;
            }
        }
        Ok(())
    }
}
