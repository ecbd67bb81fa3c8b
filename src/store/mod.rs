//! The rendezvous registry on real storage: implementations of `rendezvous::Store` on SQLite
//! (one box, no set-up) and PostgreSQL (a database the operator runs). The trait, and the
//! in-memory store the tests and the simulation use, live in the protocol crate, which does
//! no I/O.

pub mod postgres;
mod rows;
pub mod sqlite;
#[cfg(test)]
mod testdata;
