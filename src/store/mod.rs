//! The rendezvous registry on real storage: implementations of `rendezvous::Store` (the
//! trait, and the in-memory store the tests and the simulation use, live in the protocol
//! crate, which does no I/O).

pub mod sqlite;
