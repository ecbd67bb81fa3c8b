//! Why the daemon refused a request or could not carry it out.

use std::io;
use std::net::Ipv6Addr;

use crate::addr::{Hostname, NodeAddr};
use crate::identity::NodeKey;
use crate::node::{PingError, ReleaseError, VerbError};

/// A request's failure, as the daemon's verbs return it. On the socket only its text travels,
/// as the `error` of `{"ok": false, ...}` (what `pilotctl` prints); each case says what to do
/// next where there is something to do.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("request longer than {0} bytes")]
    RequestTooLong(usize),
    #[error("the daemon is shutting down")]
    ShuttingDown,

    // Naming a peer.
    #[error(
        "`{0}` is not a peer: give a hostname, a node address (xxxx.xxxx.xxxx), an fd70:: \
         address or a public key"
    )]
    NotAPeerName(String),
    /// Two keys answer to the name: the trusted one known here by it, and the one the
    /// rendezvous has since given it to.
    #[error(
        "`{name}` is ambiguous: the trusted peer {holder} is known here as {name}, but the \
         rendezvous now gives that name to {other} (the trusted peer's registration may have \
         lapsed and someone else claimed it); name the peer by its key"
    )]
    Ambiguous {
        name: Hostname,
        holder: NodeKey,
        other: NodeKey,
    },
    /// Not known here, and the rendezvous cannot be asked.
    #[error("`{name}` is not known locally, and {source}")]
    CannotAsk { name: String, source: VerbError },
    /// The rendezvous was asked and did not answer (why, as far as the node can tell).
    #[error("cannot look up `{name}`: {why}")]
    LookupFailed { name: String, why: String },
    #[error("no node `{0}` is registered at the rendezvous")]
    NotRegistered(String),
    #[error("`{0}` is not a peer this node knows (trust it first: pilotctl handshake)")]
    UnknownPeer(String),
    #[error("`{0}` is not a trusted peer of this node")]
    NotTrustedName(String),
    #[error("{0} is not a trusted peer of this node")]
    NotTrusted(NodeAddr),

    // The verbs themselves.
    #[error(transparent)]
    Trust(#[from] VerbError),
    #[error(transparent)]
    Ping(#[from] PingError),
    #[error("no reply within {0} ms")]
    NoReply(u128),
    #[error(transparent)]
    Release(#[from] ReleaseError),
    #[error(
        "the rendezvous says this node does not hold `{0}` (another node does, or nobody); \
         nothing changed"
    )]
    NameNotHeld(Hostname),
    /// `why`: what the node knows of the rendezvous' silence, ` (…)`, or empty.
    #[error(
        "the rendezvous did not confirm releasing `{name}`{why}; this node claims it again as \
         before: try again (pilotctl netcheck shows the rendezvous)"
    )]
    ReleaseUnconfirmed { name: Hostname, why: String },
    #[error("the inbox is unavailable")]
    InboxUnavailable,
    #[error("clearing the inbox: {0}")]
    ClearInbox(#[source] io::Error),

    // Userspace mode's streams (the SOCKS5 proxy's CONNECT).
    #[error("{0}: only overlay (fd70::) addresses are reachable through this proxy")]
    NotOverlayV4(std::net::SocketAddrV4),
    #[error("{0} is not an overlay address (fd70::/80)")]
    NotOverlay(Ipv6Addr),
    #[error("not in userspace mode")]
    NotUserspace,
    #[error(transparent)]
    Connect(#[from] crate::io::stack::ConnectError),
}
