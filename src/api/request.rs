//! What a client asks (`Request`, one JSON object per line) and the envelope every answer
//! comes in (`Response`).

use serde::{Deserialize, Serialize};

/// A request from `pilotctl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    // Empty struct variants rather than unit ones: serde enforces deny_unknown_fields only on
    // variants with a body.
    Info {},
    Peers {},
    /// Public endpoint and NAT behaviour as measured against the rendezvous.
    Netcheck {},
    /// One ICMPv6 echo across the tunnel. `peer`: hostname, text address, fd70 address or
    /// public key.
    Ping {
        peer: String,
        timeout_ms: u64,
    },
    /// Who a hostname (or address, or key) is.
    Resolve {
        name: String,
    },
    /// Ask `peer` for trust (or approve its request if it asked first).
    Handshake {
        peer: String,
        #[serde(default)]
        justification: String,
    },
    Approve {
        peer: String,
    },
    Reject {
        peer: String,
        #[serde(default)]
        reason: String,
    },
    Untrust {
        peer: String,
    },
    /// Trusted peers, our requests and approvals in flight.
    Trust {},
    /// Requests waiting for our approval.
    Pending {},
    /// A one-screen health summary: info, peers by path, trust counts, drops, uptime.
    Status {},
    /// Messages received from peers (`clear`: remove them after listing).
    Inbox {
        #[serde(default)]
        clear: bool,
    },
    /// Give up this node's hostname: stop claiming it and have the rendezvous free it.
    ReleaseName {},
}

/// The daemon's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let ping = Request::Ping {
            peer: "a1b2.c3d4.e5f6".into(),
            timeout_ms: 1000,
        };
        let text = serde_json::to_string(&ping).unwrap();
        assert_eq!(
            text,
            r#"{"cmd":"ping","peer":"a1b2.c3d4.e5f6","timeout_ms":1000}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), ping);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"info"}"#).unwrap(),
            Request::Info {}
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"status"}"#).unwrap(),
            Request::Status {}
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"info","x":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).is_err());
    }

    #[test]
    fn peers_keep_their_wire_form_and_are_checked_when_read() {
        use crate::api::{PathKind, PeerRef, PeerStatus};
        use crate::identity::NodeKey;
        let key = NodeKey([9; 32]);
        let status = PeerStatus {
            peer: PeerRef::new(key, Some("bob".parse().unwrap())),
            path: PathKind::Relay,
            endpoint: Some("203.0.113.7:7400".parse().unwrap()),
            rx_bytes: 1,
            tx_bytes: 2,
            last_handshake_secs: Some(3),
            rtt_ms: None,
            last_heard_secs: Some(4),
            unreachable: false,
        };
        let json = serde_json::to_value(&status).unwrap();
        let addr = key.address();
        assert_eq!(
            json,
            serde_json::json!({
                "address": addr.to_ipv6().to_string(),
                "node": addr.to_string(),
                "hostname": "bob",
                "public_key": key.to_string(),
                "path": "relay",
                "endpoint": "203.0.113.7:7400",
                "rx_bytes": 1,
                "tx_bytes": 2,
                "last_handshake_secs": 3,
                "rtt_ms": null,
                "last_heard_secs": 4,
                "unreachable": false,
            })
        );
        let back: PeerStatus = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back.peer, status.peer);
        // An address that is not the key's is refused, not believed.
        let mut forged = json;
        forged["node"] = "a1b2.c3d4.e5f6".into();
        assert!(serde_json::from_value::<PeerStatus>(forged).is_err());
    }
}
