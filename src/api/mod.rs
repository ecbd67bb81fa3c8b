//! The control API: what `pilotctl` (or any program) and `pilotd` say to each other over the
//! control socket, and the client that says it.
//!
//! A Unix stream socket, owner-only, speaking newline-delimited JSON: each request is one
//! JSON object on one line, `{"cmd": "...", ...}` ([`Request`]); each answer one line,
//! `{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}` ([`Response`]), the
//! result being one of the replies here. A connection may carry any number of requests in
//! turn. The protocol is documented in README.md ("Control protocol").
//!
//! In userspace mode programs reach peers through the daemon's SOCKS5 proxy instead;
//! [`socks5`] is that protocol, both sides (the proxy in `daemon::services`, the client
//! `pilotctl connect` uses).
//!
//! The CLI depends on this module alone for talking to the daemon (as Tailscale's CLI imports
//! only its client and state types); the daemon's side of the socket is `daemon::control`.

mod client;
mod error;
mod reply;
mod request;
pub mod socks5;

pub use client::{default_socket_path, request, ClientError};
pub use error::ControlError;
pub use reply::{
    HandshakeReply, InboxReply, InfoReply, PathCounts, PingReply, ReleasedName, RequestInfo,
    StatusReply, StoredMessage, TrustCounts, TrustReply, TrustedPeer,
};
pub use request::{Request, Response};

// The node's own types that replies carry as they are.
pub use crate::node::{HandshakeOutcome, NetStatus, PathKind, PeerRef, PeerStatus};
pub use crate::wire::control::NatKind;
pub use crate::wire::message::MessageKind;
