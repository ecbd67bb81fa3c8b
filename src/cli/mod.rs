//! Command lines of the two binaries.

pub mod config;
mod control_call;
mod init;
#[cfg(test)]
mod packaging_files;
mod peer_table;
pub mod pilotctl;
pub mod pilotd;
mod readiness;
mod release_name;
pub mod rendezvous;
mod report_text;
mod seed;
mod service;
mod streams;
mod trust_gate;
mod trust_text;
mod up_flags;
pub mod values;
