//! The LAN guard: overlay addresses arrive through the TUN or not at all.
//!
//! Linux accepts a packet for a local address on any interface (the weak host model), so a LAN
//! neighbour could send a packet with a forged overlay source (`fd70::…` of a trusted peer) to
//! the node's underlay interface and reach a program listening on `[::]`, which would take the
//! overlay source as that peer's identity; or reach the node's own overlay address from the
//! LAN without any trust at all. Policy routing cannot stop that (the `local` table is
//! consulted first), so, as wg-quick does, an nftables table drops every packet with an overlay
//! source or destination that arrives on another interface and does not come from this host
//! itself. It is installed after the interface is configured and removed at shutdown; the
//! table is named after the interface, so two daemons on one host keep theirs apart.

use std::io::Write;
use std::process::{Command, Stdio};

/// The overlay prefix the guard protects.
const OVERLAY: &str = "fd70::/80";

/// The table's name for `interface`.
pub fn table_name(interface: &str) -> String {
    format!("pilot-{interface}")
}

/// The nftables script that (re)creates the guard for `interface`, atomically: an existing
/// table of that name (a daemon that crashed) is replaced.
pub fn ruleset(interface: &str) -> String {
    let table = table_name(interface);
    format!(
        "{}\
         table inet {table} {{\n\
         \tchain guard {{\n\
         \t\ttype filter hook prerouting priority raw; policy accept;\n\
         \t\tiifname != \"{interface}\" ip6 saddr {OVERLAY} fib saddr type != local counter drop\n\
         \t\tiifname != \"{interface}\" ip6 daddr {OVERLAY} fib saddr type != local counter drop\n\
         \t}}\n\
         }}\n",
        removal(&table)
    )
}

/// Deletes the table, existing or not (declaring it first makes the delete always valid).
fn removal(table: &str) -> String {
    format!("table inet {table} {{}}\ndelete table inet {table}\n")
}

/// Why the guard could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("nft is not installed (Debian: apt install nftables)")]
    NoNft,
    #[error("nft refused the guard: {0}")]
    Refused(String),
    #[error("running nft: {0}")]
    Io(#[from] std::io::Error),
}

/// Installs (or replaces) the guard for `interface`.
pub fn install(interface: &str) -> Result<(), GuardError> {
    nft(&ruleset(interface))
}

/// Removes the guard for `interface`; a missing table is not an error.
pub fn remove(interface: &str) -> Result<(), GuardError> {
    nft(&removal(&table_name(interface)))
}

fn nft(script: &str) -> Result<(), GuardError> {
    let mut child = match Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(GuardError::NoNft),
        Err(e) => return Err(e.into()),
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(GuardError::Refused(err.trim().replace('\n', "; ")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_drops_overlay_traffic_from_elsewhere_only() {
        let rules = ruleset("pilot0");
        assert!(rules.starts_with("table inet pilot-pilot0 {}\ndelete table inet pilot-pilot0\n"));
        assert!(rules.contains(
            "iifname != \"pilot0\" ip6 saddr fd70::/80 fib saddr type != local counter drop"
        ));
        assert!(rules.contains(
            "iifname != \"pilot0\" ip6 daddr fd70::/80 fib saddr type != local counter drop"
        ));
        assert!(rules.contains("hook prerouting priority raw"));
    }
}
