//! The opt-in Prometheus endpoint (`--metrics ADDR`) of both daemons: a small HTTP server
//! ([`MetricsListener`]) and the pages it serves, rendered in the text exposition format from
//! snapshots the daemons' loops hand over ([`NodeMetrics`], [`RendezvousMetrics`]). Building
//! a snapshot is a copy of counters (and one entry per peer); the text is made outside the
//! loop, so a scrape costs the data plane next to nothing.

mod exposition;
mod http;
mod node;
mod rendezvous;

pub use exposition::CONTENT_TYPE;
pub(crate) use http::answer;
pub use http::{MetricsListener, MAX_REQUEST};
pub use node::{render as render_node, NodeMetrics};
pub use rendezvous::{
    render as render_rendezvous, CommitStats, RendezvousMetrics, StoreCalls, StreamStats,
};
