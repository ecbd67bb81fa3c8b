//! `pilotctl pending` and `pilotctl trust` for people. Justifications, reasons and hostnames
//! come from other nodes: every one goes through [`printable`], so a newline or an escape
//! sequence in them cannot forge a row or recolour the terminal.

use std::fmt::Write;

use crate::api::{RequestInfo, TrustReply};
use crate::wire::printable::printable;

use super::peer_table::{age, who};

/// The table of requests waiting for approval.
pub(super) fn pending_text(requests: &[RequestInfo]) -> String {
    if requests.is_empty() {
        return "no pending trust requests\n".into();
    }
    let mut text = format!(
        "{:<20} {:<24} {:>9}  JUSTIFICATION\n",
        "FROM", "ADDRESS", "ASKED"
    );
    for r in requests {
        // Padding counts chars: format the escaped name first.
        let from = printable(&r.peer.name()).to_string();
        let _ = writeln!(
            text,
            "{from:<20} {:<24} {:>9}  {}",
            r.peer.addr.to_ipv6().to_string(),
            age(r.issued_ms, r.age_secs),
            printable(&r.justification)
        );
    }
    text
}

/// Trusted peers, our requests (with a rejection's reason), our approvals in flight.
pub(super) fn trust_text(reply: &TrustReply) -> String {
    if reply.trusted.is_empty() && reply.requested.is_empty() && reply.approved.is_empty() {
        return "no trusted peers (ask one with `pilotctl handshake PEER`)\n".into();
    }
    let mut text = String::new();
    for t in &reply.trusted {
        let since = match t.since_ms {
            Some(ms) => format!("since {}", age(ms, t.since_secs)),
            None => "configured (--peer)".into(),
        };
        let _ = writeln!(text, "trusted    {:<44} {since}", who(&t.peer));
    }
    for r in &reply.requested {
        let state = match &r.reason {
            Some(reason) if !reason.is_empty() => format!("rejected: {}", printable(reason)),
            Some(_) => "rejected".into(),
            None => format!(
                "waiting for approval, asked {}",
                age(r.issued_ms, r.age_secs)
            ),
        };
        let _ = writeln!(text, "requested  {:<44} {state}", who(&r.peer));
    }
    for a in &reply.approved {
        let _ = writeln!(
            text,
            "approved   {:<44} waiting for its countersignature",
            who(a)
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PeerRef;

    const HOSTILE: &str = "hi\nmallory          fd70::6666:6666:6666     1s ago  \x1b[31mURGENT";

    fn peer(hostname: Option<&str>) -> PeerRef {
        PeerRef {
            key: crate::identity::NodeKey([0; 32]),
            addr: "a1b2.c3d4.e5f6".parse().unwrap(),
            hostname: hostname.map(|h| h.parse().unwrap()),
        }
    }

    fn request(justification: &str, reason: Option<&str>) -> RequestInfo {
        RequestInfo {
            peer: peer(Some("bob")),
            justification: justification.into(),
            issued_ms: crate::clock::unix_ms_now(),
            age_secs: None,
            status: "pending".into(),
            reason: reason.map(str::to_owned),
        }
    }

    #[test]
    fn a_hostile_justification_stays_on_its_row_escaped() {
        let text = pending_text(&[request(HOSTILE, None), request("ok", None)]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "a header and one row per request:\n{text}");
        assert!(
            lines[1].starts_with("bob                  fd70::a1b2:c3d4:e5f6")
                && lines[1].ends_with(
                    "  hi\\nmallory          fd70::6666:6666:6666     1s ago  \\u{1b}[31mURGENT"
                ),
            "{}",
            lines[1]
        );
        assert!(lines[2].ends_with("  ok"));
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn a_hostile_reason_is_escaped_in_trust_and_a_hostile_hostname_is_not_read_at_all() {
        let reply = TrustReply {
            trusted: Vec::new(),
            requested: vec![RequestInfo {
                peer: peer(Some("eve")),
                ..request("", Some(HOSTILE))
            }],
            approved: Vec::new(),
        };
        let text = trust_text(&reply);
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.starts_with("requested  eve (fd70::a1b2:c3d4:e5f6)"));
        assert!(text.contains("rejected: hi\\nmallory"), "{text}");
        assert!(!text.contains('\x1b'));

        // A hostname is a `Hostname`: what is not one never becomes a `PeerRef` to print.
        let mut json =
            serde_json::to_value(PeerRef::new(crate::identity::NodeKey([7; 32]), None)).unwrap();
        json["hostname"] = "eve\n\x1b[2J".into();
        assert!(serde_json::from_value::<PeerRef>(json).is_err());
    }
}
