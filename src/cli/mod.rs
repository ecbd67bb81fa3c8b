//! Command lines of the two binaries.

pub mod config;
pub mod pilotctl;
pub mod pilotd;
pub mod rendezvous;
mod service;
mod streams;
