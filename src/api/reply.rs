//! The results of the requests, as `Response::result` carries them.

use serde::{Deserialize, Serialize};

use crate::node::{HandshakeOutcome, PeerRef};
use crate::wire::control::NatKind;
use crate::wire::message::MessageKind;

/// `info`'s result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InfoReply {
    pub address: String,
    pub node: String,
    pub public_key: String,
    pub hostname: Option<String>,
    /// The TUN's name; empty in userspace mode.
    pub interface: String,
    /// `kernel` (a TUN) or `userspace` (a smoltcp stack, SOCKS5 and exposed ports).
    #[serde(default)]
    pub mode: String,
    /// Userspace mode: the SOCKS5 proxy's address, if it runs.
    #[serde(default)]
    pub socks5: Option<String>,
    /// Userspace mode: exposed ports as `PORT:LOCALPORT`.
    #[serde(default)]
    pub expose: Vec<String>,
    pub mtu: u32,
    pub listen_port: u16,
    /// The public endpoint peers are told first: configured (`--endpoint`) or as the
    /// rendezvous sees it.
    pub endpoint: Option<String>,
    /// `endpoint` comes from `--endpoint`.
    #[serde(default)]
    pub endpoint_configured: bool,
    /// This node's endpoint as the rendezvous sees it.
    #[serde(default)]
    pub observed: Option<String>,
    /// NAT mapping behaviour, when a rendezvous is configured.
    pub nat: Option<NatKind>,
    pub peers: usize,
    /// Whether incoming trust requests are approved automatically.
    pub auto_approve: bool,
    /// Peers with a valid mutual trust record.
    pub trusted: usize,
    /// Trust requests waiting for approval.
    pub pending: usize,
    pub drops: serde_json::Map<String, serde_json::Value>,
    pub version: String,
    /// The daemon's process id (for `pilotctl daemon stop`).
    pub pid: u32,
}

/// `status`'s result: what an operator checks first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusReply {
    pub version: String,
    pub uptime_secs: u64,
    pub address: String,
    pub node: String,
    pub hostname: Option<String>,
    pub interface: String,
    pub listen_port: u16,
    /// The rendezvous configured, if any, and whether this node is registered with it now.
    pub rendezvous: Option<String>,
    pub registered: bool,
    /// Public endpoint (configured, or as the rendezvous sees it) and NAT behaviour.
    pub endpoint: Option<String>,
    /// `endpoint` comes from `--endpoint`.
    #[serde(default)]
    pub endpoint_configured: bool,
    pub nat: Option<NatKind>,
    /// Peers packets may pass with, by how they are reached now.
    pub peers: PathCounts,
    pub trust: TrustCounts,
    /// Every drop since start, all reasons together (`pilotctl info` has them by reason).
    pub drops_total: u64,
    /// WireGuard sessions established since start.
    pub handshakes: u64,
    /// Where the Prometheus endpoint listens (`--metrics`), if it does.
    pub metrics: Option<String>,
    /// Kernel mode: why the LAN guard (overlay addresses only through the TUN) is missing.
    #[serde(default)]
    pub lan_guard_missing: Option<String>,
    /// Why `trust.json` cannot be written, while it cannot, and failed writes since start.
    #[serde(default)]
    pub trust_save_error: Option<String>,
    #[serde(default)]
    pub trust_save_failures: u64,
    /// Why the rendezvous does not register this node, while it does not.
    #[serde(default)]
    pub rendezvous_problem: Option<String>,
    /// The first rendezvous, while the node uses a standby one because it stopped answering.
    #[serde(default)]
    pub rendezvous_preferred: Option<String>,
    /// The TLS stream the node reaches the rendezvous over, while UDP to it gets no answer.
    #[serde(default)]
    pub rendezvous_stream: Option<String>,
    /// Peers that no longer answer, as `NAME (NODE), last heard N s ago`.
    #[serde(default)]
    pub unreachable: Vec<String>,
    /// How far this system's clock is from the rendezvous' (ms to add), once measured.
    #[serde(default)]
    pub clock_offset_ms: Option<i64>,
}

/// Peers by path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathCounts {
    pub direct: usize,
    pub relay: usize,
    pub none: usize,
}

/// Trust in numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustCounts {
    /// Peers with a valid mutual trust record.
    pub trusted: usize,
    /// Peers configured with `--peer`.
    pub configured: usize,
    /// Requests waiting for `pilotctl approve`.
    pub pending: usize,
    pub auto_approve: bool,
}

/// `handshake`'s result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HandshakeReply {
    pub peer: PeerRef,
    pub outcome: HandshakeOutcome,
    /// Trust held already and nothing was sent (`outcome` is `already_trusted`): for scripts
    /// that call `handshake` idempotently.
    #[serde(default)]
    pub already_trusted: bool,
}

/// `trust`'s result.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TrustReply {
    pub trusted: Vec<TrustedPeer>,
    /// Our requests: pending, or rejected (with the reason given).
    pub requested: Vec<RequestInfo>,
    /// Requests we approved whose requester has not countersigned yet.
    pub approved: Vec<PeerRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrustedPeer {
    #[serde(flatten)]
    pub peer: PeerRef,
    /// When the record was signed (UNIX ms); `None` for a configured (`--peer`) peer.
    pub since_ms: Option<u64>,
    /// How long ago that was by the node's clock (corrected from the rendezvous' time when
    /// this system's clock is off, unlike the reader's).
    #[serde(default)]
    pub since_secs: Option<u64>,
    pub configured: bool,
}

/// A trust request, ours or a peer's.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestInfo {
    #[serde(flatten)]
    pub peer: PeerRef,
    pub justification: String,
    pub issued_ms: u64,
    /// How long ago it was made, by the node's clock (see [`TrustedPeer::since_secs`]).
    #[serde(default)]
    pub age_secs: Option<u64>,
    /// `pending` or `rejected`.
    pub status: String,
    pub reason: Option<String>,
}

/// `ping`'s result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PingReply {
    pub address: String,
    pub node: String,
    pub seq: u16,
    pub rtt_ms: f64,
    pub path: String,
}

/// `release_name`'s result: the hostname the rendezvous freed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleasedName {
    pub hostname: String,
}

/// `inbox`'s result.
/// One message as `pilotctl inbox --json` shows it. Exactly one of `data` (text: a JSON
/// string; json: the document itself) and `data_base64` (binary: standard base64) is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub id: String,
    /// Who sent it, as the control socket names peers.
    pub from: PeerRef,
    pub kind: MessageKind,
    pub received_ms: u64,
    /// Payload bytes.
    pub size: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct InboxReply {
    pub messages: Vec<StoredMessage>,
    /// How many were removed, when clearing was asked.
    pub cleared: Option<usize>,
}
