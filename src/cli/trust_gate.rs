//! Whether a peer is trusted, asked of the daemon before `connect` or `send-message` opens a
//! stream to it. In kernel mode the stream is this process's own socket, and the kernel would
//! only say `Network is unreachable` (the daemon answers a packet to an untrusted address with
//! an ICMPv6 error); the daemon's trust state says why, and what to type.

use std::path::Path;

use super::control_call::{call, parse};
use super::peer_table::{age, who};
use crate::api::{ClientError, PeerRef, Request, RequestInfo, TrustReply};

/// `Ok` when packets to `peer` may pass; otherwise why not, naming the next step. `typed` is
/// how the user named the peer, `me` how the peer names this node (hostname, else address).
pub(super) fn check(
    socket: &Path,
    typed: &str,
    peer: &PeerRef,
    me: &str,
) -> Result<(), ClientError> {
    let trust: TrustReply = parse(call(socket, &Request::Trust {})?)?;
    if trust.trusted.iter().any(|t| t.peer.key == peer.key) {
        return Ok(());
    }
    let pending: Vec<RequestInfo> = parse(call(socket, &Request::Pending {})?)?;
    let asked_us = pending.iter().any(|r| r.peer.key == peer.key);
    Err(ClientError::Daemon(explain(
        typed, peer, me, &trust, asked_us,
    )))
}

/// The refusal, by where trust between the two stands.
fn explain(typed: &str, peer: &PeerRef, me: &str, trust: &TrustReply, asked_us: bool) -> String {
    let base = format!(
        "{} is not a trusted peer of this node, so nothing reaches it",
        who(peer)
    );
    let ours = trust.requested.iter().find(|r| r.peer.key == peer.key);
    if let Some(request) = ours {
        return match &request.reason {
            Some(reason) if !reason.is_empty() => {
                format!("{base}: it rejected this node's trust request ({reason})")
            }
            Some(_) => format!("{base}: it rejected this node's trust request"),
            None => format!(
                "{base}: it has not approved this node's trust request yet (asked {}); on its \
                 side: `pilotctl approve {me}`",
                age(request.issued_ms, request.age_secs)
            ),
        };
    }
    if trust.approved.iter().any(|a| a.key == peer.key) {
        return format!(
            "{base} yet: this node approved its request, and its node countersigns as soon as \
             it hears of it; try again in a moment"
        );
    }
    if asked_us {
        return format!(
            "{base}: it asked this node for trust; approve with `pilotctl approve {typed}`"
        );
    }
    format!(
        "{base}: ask it for trust with `pilotctl handshake {typed}`; once it approves \
         (`pilotctl approve {me}` on its side), try again"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bob() -> PeerRef {
        PeerRef {
            key: crate::identity::NodeKey([0x0b; 32]),
            addr: "a1b2.c3d4.e5f6".parse().unwrap(),
            hostname: Some("bob".parse().unwrap()),
        }
    }

    fn request(reason: Option<&str>) -> RequestInfo {
        RequestInfo {
            peer: bob(),
            justification: String::new(),
            issued_ms: crate::clock::unix_ms_now(),
            age_secs: None,
            status: if reason.is_some() {
                "rejected"
            } else {
                "pending"
            }
            .into(),
            reason: reason.map(Into::into),
        }
    }

    #[test]
    fn each_state_of_trust_names_the_next_step() {
        let none = TrustReply::default();
        let base = "bob (fd70::a1b2:c3d4:e5f6) is not a trusted peer of this node, so nothing \
                    reaches it";
        assert_eq!(
            explain("bob", &bob(), "alice", &none, false),
            format!(
                "{base}: ask it for trust with `pilotctl handshake bob`; once it approves \
                 (`pilotctl approve alice` on its side), try again"
            )
        );
        assert_eq!(
            explain("bob.pilot", &bob(), "alice", &none, true),
            format!(
                "{base}: it asked this node for trust; approve with `pilotctl approve bob.pilot`"
            )
        );
        let asked = TrustReply {
            requested: vec![request(None)],
            ..TrustReply::default()
        };
        assert_eq!(
            explain("bob", &bob(), "alice", &asked, false),
            format!(
                "{base}: it has not approved this node's trust request yet (asked 0s ago); on \
                 its side: `pilotctl approve alice`"
            )
        );
        let rejected = TrustReply {
            requested: vec![request(Some("who are you?"))],
            ..TrustReply::default()
        };
        assert_eq!(
            explain("bob", &bob(), "alice", &rejected, false),
            format!("{base}: it rejected this node's trust request (who are you?)")
        );
        let approved = TrustReply {
            approved: vec![bob()],
            ..TrustReply::default()
        };
        assert!(explain("bob", &bob(), "alice", &approved, false).contains("countersigns"));
    }
}
