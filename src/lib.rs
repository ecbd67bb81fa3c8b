//! Pilot: a kernel-visible overlay network.
//!
//! Two crates. `pilot_proto` is the protocol core with no I/O: `addr`, `identity` (keys),
//! `clock`, `wire`, `node`, `portmap` and `rendezvous` (the server's state machine, its
//! `Store` trait and the in-memory store) are its modules, re-exported here under the same
//! names. This crate does the rest: `io` is the real I/O (TUN, netlink, batched UDP, the
//! rendezvous' TLS stream, the message service's framing) the `daemon` feeds to the sans-IO
//! node and server; `store` keeps the rendezvous' registry on disk; `identity` adds the
//! identity file; `api` is the control protocol and its client, through which alone
//! `pilotctl`'s half of `cli` reaches the daemon.
//!
//! Module map (dependencies point down the list): `cli` → `daemon` → `api`, `store`, `io` →
//! the protocol core.

pub use pilot_proto::{addr, clock, hex, node, portmap, wire};

pub mod api;
pub mod cli;
pub mod daemon;
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod io;
pub mod store;

/// The rendezvous server (`pilot_proto::rendezvous`), and its registry in SQLite.
pub mod rendezvous {
    pub use crate::store::sqlite::{SqliteStore, DB_FILE};
    pub use pilot_proto::rendezvous::*;
}
