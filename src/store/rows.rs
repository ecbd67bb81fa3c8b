//! Rows as a database returns them, checked into the registry's types: shared by the SQLite
//! and PostgreSQL stores, which keep the same columns.

use std::net::SocketAddr;

use crate::addr::Hostname;
use crate::identity::NodeKey;
use crate::rendezvous::{OutboxItem, Registration};
use crate::wire::control::{NatKind, MAX_LAN_ENDPOINTS};
use crate::wire::trust::Statement;

pub(super) fn key_of(bytes: &[u8]) -> Option<NodeKey> {
    bytes.try_into().ok().map(NodeKey)
}

/// Databases' integers are signed; times and ids beyond `i64::MAX` do not occur.
pub(super) fn to_sql(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The `lan` column: endpoints separated by spaces.
pub(super) fn lan_text(lan: &[SocketAddr]) -> String {
    let lan: Vec<String> = lan.iter().map(|e| e.to_string()).collect();
    lan.join(" ")
}

/// A registration row before it is checked.
pub(super) struct RawRegistration {
    pub key: Vec<u8>,
    pub observed: String,
    pub lan: String,
    pub nat: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub name: Option<String>,
}

impl RawRegistration {
    /// The registration, or why the row cannot be one (the store reports it as corrupt: a
    /// registration is never skipped silently).
    pub fn decode(self) -> Result<Registration, String> {
        let key = key_of(&self.key).ok_or_else(|| "a key is not 32 bytes".to_string())?;
        let endpoint = |text: &str| {
            text.parse::<SocketAddr>()
                .map_err(|_| format!("bad endpoint `{text}` for key {key}"))
        };
        let lan = self
            .lan
            .split_ascii_whitespace()
            .map(endpoint)
            .collect::<Result<Vec<_>, _>>()?;
        if lan.len() > MAX_LAN_ENDPOINTS {
            return Err(format!("too many LAN endpoints for key {key}"));
        }
        // A bad name costs the node its name, not its registration: it claims one again with
        // its next `Register`.
        let hostname = self.name.and_then(|name| match name.parse::<Hostname>() {
            Ok(hostname) => Some(hostname),
            Err(e) => {
                tracing::warn!(node = %key, "ignoring stored hostname: {e}");
                None
            }
        });
        Ok(Registration {
            key,
            observed: endpoint(&self.observed)?,
            lan,
            hostname,
            nat: nat_from_name(&self.nat)
                .ok_or_else(|| format!("unknown NAT kind `{}` for key {key}", self.nat))?,
            first_seen_ms: u64::try_from(self.first_seen_ms)
                .map_err(|_| format!("negative time for key {key}"))?,
            last_seen_ms: u64::try_from(self.last_seen_ms)
                .map_err(|_| format!("negative time for key {key}"))?,
        })
    }
}

/// A ledger row's statement; `None` (with a warning naming the pair) when it does not decode
/// or is filed under another pair: the nodes hold their own copies and resubmit.
pub(super) fn ledger_row(low: &[u8], high: &[u8], bytes: &[u8]) -> Option<Statement> {
    let (Some(low), Some(high)) = (key_of(low), key_of(high)) else {
        tracing::warn!("skipping a ledger row whose keys are not 32 bytes");
        return None;
    };
    match Statement::decode(bytes) {
        Ok(s) if s.pair() == (low, high) => Some(s),
        Ok(_) => {
            tracing::warn!(%low, %high, "skipping ledger row: filed under another pair");
            None
        }
        Err(e) => {
            tracing::warn!(%low, %high, "skipping ledger row: {e}");
            None
        }
    }
}

/// An outbox row's item; `None` (with a warning naming it) when it does not decode.
pub(super) fn outbox_row(
    id: i64,
    target: &[u8],
    bytes: &[u8],
    stored_ms: i64,
) -> Option<OutboxItem> {
    let item = (|| {
        Some(OutboxItem {
            id: u64::try_from(id).ok()?,
            target: key_of(target)?,
            statement: Statement::decode(bytes).ok()?,
            stored_ms: u64::try_from(stored_ms).ok()?,
        })
    })();
    if item.is_none() {
        tracing::warn!(id, "skipping outbox row: it does not decode");
    }
    item
}

pub(super) fn nat_from_name(name: &str) -> Option<NatKind> {
    Some(match name {
        "unknown" => NatKind::Unknown,
        "none" => NatKind::None,
        "endpoint_independent" => NatKind::EndpointIndependent,
        "endpoint_dependent" => NatKind::EndpointDependent,
        _ => return None,
    })
}
