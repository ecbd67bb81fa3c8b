//! How `NAME.pilot` reaches the resolvers of unmodified programs.
//!
//! The daemon answers DNS for the `pilot.` zone itself, on the reserved overlay address
//! `fd70::53` ([`crate::wire::dns`]): the kernel already routes it into the TUN, so the stub
//! needs no socket and cannot clash with a resolver listening on port 53 of loopback. What is
//! left is telling the system resolver to ask it, and only it, about `pilot.`:
//!
//! - With systemd-resolved ([`resolved_running`]), the stub becomes the per-link DNS server of
//!   the Pilot interface with the routing-only domain `~pilot` and `default-route` off
//!   ([`register_with_resolved`]). Only `*.pilot` lookups go to the stub, every other lookup
//!   keeps going where it went, and the setting vanishes with the link (and is reverted on a
//!   clean stop, [`revert_resolved`]). Nothing global (`/etc/resolv.conf`, `resolved.conf`) is
//!   touched, so nothing is left behind if the daemon dies.
//! - Without it, an administrator points `resolv.conf` at `fd70::53` (the stub refuses names
//!   outside `pilot.`, and glibc then asks the next `nameserver`). The daemon does not edit
//!   `resolv.conf` itself: it is owned by too many tools (NetworkManager, resolvconf, DHCP
//!   clients) to share safely.
//! - As an opt-in fallback for hosts where neither is possible (containers whose resolver
//!   config is fixed, static binaries that only read `/etc/hosts`), [`HostsFile`] keeps a
//!   managed block in `/etc/hosts`. It is opt-in because it writes a file other software owns
//!   and because every line is visible to every local user and cached by nothing: it should
//!   list only peers this node trusts. Which entries go in is the caller's decision; this module
//!   only writes them safely.

mod hosts;
mod resolved;

pub use hosts::HostsFile;
pub(crate) use hosts::{render as render_hosts_block, splice as splice_hosts_block};
pub use resolved::{register_with_resolved, resolved_running, revert_resolved};
