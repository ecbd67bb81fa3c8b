//! Pilot's protocol core, sans I/O (as quinn-proto is to quinn): everything that decides what
//! to send, and nothing that sends. The `pilot` crate (the daemon, its I/O, files and
//! databases, the command lines) re-exports these modules under the same names.
//!
//! Module map (dependencies point down the list): `node` (a node's state machine) and
//! `rendezvous` (the server's, with its `Store` trait and the in-memory store) → `portmap`
//! (the PCP/NAT-PMP client) → `wire` (every format on the wire) → `identity`, `addr`, `clock`
//! → `hex`. None of them imports tokio, libc, nix or a database: this crate has no dependency
//! on them (boringtun uses libc and nix inside, for its clock), so such a leak does not
//! compile.

pub mod addr;
pub mod clock;
pub mod hex;
pub mod identity;
pub mod node;
pub mod portmap;
pub mod rendezvous;
pub mod wire;
