//! Pilot: a kernel-visible overlay network.
//!
//! Module map (dependencies point down the list): `cli` → `daemon` → `api` → `node` → `wire`
//! → `addr`, `identity` → `hex`. `api` is the control protocol and its client: `pilotctl`'s
//! half of `cli` reaches the daemon through it alone. `io` is the real I/O (TUN, netlink,
//! batched UDP, the rendezvous' TLS stream) the daemon feeds to the sans-IO `node`.

pub mod addr;
pub mod api;
pub mod cli;
pub mod clock;
pub mod daemon;
#[doc(hidden)]
pub mod fuzzing;
pub mod hex;
pub mod identity;
pub mod io;
pub mod node;
pub mod portmap;
pub mod rendezvous;
pub mod wire;
