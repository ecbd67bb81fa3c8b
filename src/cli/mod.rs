//! Command lines of the two binaries.

pub mod pilotctl;
pub mod pilotd;
pub mod rendezvous;
mod service;
