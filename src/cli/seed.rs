//! Habits from the seed, the Go "Pilot Protocol" that Pilot descends from, that do not fit our
//! design: recognising them, and saying what to type instead.
//!
//! The seed numbers its nodes (`approve 42`) and writes addresses as `0:0000.0000.002A`
//! (network, then the number in hex). Our nodes are named by what they are: a hostname, the
//! node address `xxxx.xxxx.xxxx` derived from the key, the fd70:: address, or the key itself.

use crate::api::ClientError;

/// The forms `pilotctl` accepts for a peer, for messages.
pub const PEER_FORMS: &str =
    "a hostname, a node address (xxxx.xxxx.xxxx), an fd70:: address or a public key";

/// What a seed-style node id looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedId {
    /// `42`: also a valid hostname, so only an error from the daemon tells it apart.
    Number,
    /// `0:0000.0000.002A`: never a name of ours.
    Address,
}

/// Whether `text` is a seed-style node id, and which kind.
pub fn seed_id(text: &str) -> Option<SeedId> {
    let digits = |s: &str| !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit());
    if digits(text) {
        return Some(SeedId::Number);
    }
    let (network, rest) = text.split_once(':')?;
    let mut groups = rest.split('.');
    let hex4 = |g: Option<&str>| {
        g.is_some_and(|g| g.len() == 4 && g.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    let address = digits(network)
        && hex4(groups.next())
        && hex4(groups.next())
        && hex4(groups.next())
        && groups.next().is_none();
    address.then_some(SeedId::Address)
}

/// Where requesters are listed in our forms (for approve and reject).
pub const HINT_PENDING: &str = "`pilotctl pending` lists requesters in those forms";
/// Where peers are listed in our forms (for the verbs on trusted peers).
pub const HINT_TRUST: &str = "`pilotctl trust` lists trusted peers in those forms";
/// Where a node not known yet tells its names.
pub const HINT_INFO: &str = "`pilotctl info` on that node prints them";

/// The error for a seed-style id given where a peer was expected; `hint` says where to find
/// the peer's name in our forms (one of the `HINT_*`).
pub fn seed_id_error(text: &str, hint: &str, daemon: Option<&str>) -> ClientError {
    let because = daemon
        .map(|e| format!(" (pilotd: {e})"))
        .unwrap_or_default();
    ClientError::Daemon(format!(
        "`{text}` looks like a Pilot Protocol node id{because}; pilot names a node by \
         {PEER_FORMS}: {hint}"
    ))
}

/// Runs a command on `peer`; when `peer` is a seed-style id the command fails with
/// [`seed_id_error`] instead: at once for the seed's address form, and, for a plain number
/// (which may be a hostname), only if the daemon did not know it.
pub fn refuse_seed_ids<T>(
    peer: &str,
    hint: &str,
    run: impl FnOnce() -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    match seed_id(peer) {
        Some(SeedId::Address) => Err(seed_id_error(peer, hint, None)),
        Some(SeedId::Number) => run().map_err(|e| match e {
            ClientError::Daemon(e) => seed_id_error(peer, hint, Some(&e)),
            other => other,
        }),
        None => run(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_ids_are_told_from_our_names() {
        assert_eq!(seed_id("42"), Some(SeedId::Number));
        assert_eq!(seed_id("0:0000.0000.002A"), Some(SeedId::Address));
        assert_eq!(seed_id("1:00ab.0000.ffff"), Some(SeedId::Address));
        for ours in [
            "alice",
            "agent-42",
            "a1b2.c3d4.e5f6",
            "fd70::a1b2:c3d4:e5f6",
            "[fd70::1]",
            "0:0000.0000",
            "0:0000.0000.002A.1",
            ":0000.0000.002A",
            "",
            &"ab".repeat(32),
        ] {
            assert_eq!(seed_id(ours), None, "{ours}");
        }
    }

    #[test]
    fn the_error_names_our_forms_and_the_listing_command() {
        let address = refuse_seed_ids("0:0000.0000.002A", HINT_PENDING, || -> Result<(), _> {
            panic!("the daemon is not asked about a form that is never ours")
        });
        let text = address.unwrap_err().to_string();
        assert!(
            text.contains("looks like a Pilot Protocol node id"),
            "{text}"
        );
        assert!(
            text.contains(PEER_FORMS) && text.ends_with(HINT_PENDING),
            "{text}"
        );

        // A number the daemon knows (a hostname) works; one it does not gets the seed error.
        assert_eq!(refuse_seed_ids("42", HINT_TRUST, || Ok(7)).unwrap(), 7);
        let unknown = refuse_seed_ids("42", HINT_TRUST, || -> Result<(), _> {
            Err(ClientError::Daemon(
                "no node `42` is registered at the rendezvous".into(),
            ))
        });
        let text = unknown.unwrap_err().to_string();
        assert!(
            text.contains("(pilotd: no node `42` is registered"),
            "{text}"
        );
        assert!(text.ends_with(HINT_TRUST), "{text}");
        // Others pass through untouched.
        let other = refuse_seed_ids("alice", HINT_TRUST, || -> Result<(), _> {
            Err(ClientError::Daemon("nope".into()))
        });
        assert_eq!(other.unwrap_err().to_string(), "nope");
    }
}
