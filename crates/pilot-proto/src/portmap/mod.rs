//! Port mapping on the home router: where the default gateway speaks PCP (RFC 6887) or
//! NAT-PMP (RFC 6886) — or else UPnP-IGD, whose messages are in [`upnp`] and whose exchanges
//! `daemon::portmap::upnp` runs — the node asks it to forward a public UDP port to its own socket, renews
//! the mapping at half its lifetime, and deletes it when the node stops. The mapped endpoint
//! is one more candidate peers probe: behind a symmetric NAT whose router cooperates, the
//! peer's probes reach the node through the mapping, so even two symmetric NATs go direct.
//!
//! [`PortMapper`] is sans-IO: the daemon (`daemon::portmap`) feeds it datagrams from the
//! gateway and the time, sends what it returns, and hands [`PortMapper::mapped`] to the node.
//! It believes only answers from the gateway's PCP/NAT-PMP port that match its request (the
//! PCP nonce, the protocol and internal port). A gateway that does not answer costs a few
//! retries (7.5 s in all, then an SSDP search of 3 s) and then one quiet try every
//! [`REDISCOVER`]: nothing waits on it.

mod client;
pub mod natpmp;
pub mod pcp;
pub mod upnp;

pub use client::{PortMapper, ATTEMPTS, REDISCOVER, REQUESTED_LIFETIME};

use serde::{Deserialize, Serialize};

/// The UDP port PCP and NAT-PMP servers listen on.
pub const SERVER_PORT: u16 = 5351;

/// Why a datagram is not a well-formed answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("too short")]
    Short,
    #[error("version {0}")]
    Version(u8),
    #[error("opcode {0}")]
    Opcode(u8),
}

/// Which protocol made (or is trying to make) the mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    #[serde(rename = "pcp")]
    Pcp,
    #[serde(rename = "nat-pmp")]
    NatPmp,
    /// UPnP-IGD, tried when the gateway answers neither PCP nor NAT-PMP (`daemon::portmap::upnp`).
    #[serde(rename = "upnp-igd")]
    UpnpIgd,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Pcp => "PCP",
            Protocol::NatPmp => "NAT-PMP",
            Protocol::UpnpIgd => "UPnP-IGD",
        })
    }
}

/// Where port mapping stands, as `pilotctl netcheck` shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MapState {
    /// Switched off (`port_mapping = false`, `--no-port-mapping`).
    #[default]
    Off,
    /// No IPv4 default gateway to ask.
    NoGateway,
    /// Asking the gateway.
    Asking,
    /// The gateway mapped a port.
    Mapped,
    /// The gateway answered none of PCP, NAT-PMP and UPnP-IGD (no port mapping offered).
    NoAnswer,
    /// The gateway answered with a refusal.
    Refused,
}

/// What the router offered, for `pilotctl netcheck` and `status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapStatus {
    pub state: MapState,
    /// The gateway asked (its PCP/NAT-PMP address).
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// The mapped public endpoint, advertised to peers.
    #[serde(default)]
    pub external: Option<String>,
    /// The lifetime the gateway granted, seconds (renewed at half of it).
    #[serde(default)]
    pub lifetime_secs: Option<u32>,
    /// The gateway's result code when it refused.
    #[serde(default)]
    pub result_code: Option<u16>,
}

impl PortMapStatus {
    pub fn off() -> PortMapStatus {
        PortMapStatus::default()
    }

    pub fn no_gateway() -> PortMapStatus {
        PortMapStatus {
            state: MapState::NoGateway,
            ..PortMapStatus::default()
        }
    }
}
