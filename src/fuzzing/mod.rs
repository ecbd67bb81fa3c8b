//! The bodies of the fuzz targets in `fuzz/` (cargo-fuzz, nightly), kept in the library so the
//! fuzzers and the corpus replay test (`tests/fuzz_corpus.rs`, stable `cargo test`) run the
//! very same code. Each body feeds its bytes to a real parser (or a real `Node`/`Server`) and
//! asserts what must hold for any input: no panic, round trips that give back what was read,
//! replies no larger than the requests that earned them. A failed assertion is a bug.
//!
//! Not an API: nothing outside the fuzz targets and their replay test calls these.

mod daemon;
mod files;
mod input;
mod ledger;
mod memo;
mod node;
mod offload;
mod portmap;
mod rendezvous;
mod seeds;
mod wire;

pub use daemon::{control_json, message_frames, metrics_http, socks5};
pub use files::{config_toml, hosts_file, state_files};
pub use ledger::trust_ledger;
pub use node::node_datagrams;
pub use offload::{offload_coalesce, offload_segment};
pub use portmap::port_mapping;
pub use rendezvous::{rendezvous_datagrams, rendezvous_queued};
pub use seeds::seeds;
pub use wire::{control_message, dns_query, envelope, ip_packet, trust_statement};

/// A fuzz target: its name (the file in `fuzz/fuzz_targets/` and the folder in
/// `fuzz/corpus/`) and its body.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: &[Target] = &[
    ("control_message", control_message),
    ("envelope", envelope),
    ("trust_statement", trust_statement),
    ("trust_ledger", trust_ledger),
    ("dns_query", dns_query),
    ("ip_packet", ip_packet),
    ("message_frames", message_frames),
    ("socks5", socks5),
    ("control_json", control_json),
    ("metrics_http", metrics_http),
    ("config_toml", config_toml),
    ("state_files", state_files),
    ("hosts_file", hosts_file),
    ("offload_segment", offload_segment),
    ("offload_coalesce", offload_coalesce),
    ("node_datagrams", node_datagrams),
    ("rendezvous_datagrams", rendezvous_datagrams),
    ("rendezvous_queued", rendezvous_queued),
    ("port_mapping", port_mapping),
];

/// The body of the target called `name`.
pub fn target(name: &str) -> Option<fn(&[u8])> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}
