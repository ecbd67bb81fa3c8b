//! Pilot: a kernel-visible overlay network.
//!
//! Module map (dependencies point down the list): `cli` → `daemon` → `node` → `wire`, `addr`,
//! `identity`; `io` is the real I/O the daemon feeds to the sans-IO `node`.

pub mod addr;
pub mod identity;
pub mod node;
pub mod wire;
