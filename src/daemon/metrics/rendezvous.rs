//! The rendezvous' metrics page (`pilotd rendezvous --metrics`), rendered from a snapshot its
//! loop hands over.

use std::time::Duration;

use super::exposition::{Exposition, Kind, Value};
use crate::rendezvous::{Counters, Refusal, RelayDrop};

/// What the rendezvous loop knows at one moment.
#[derive(Debug, Clone, Default)]
pub struct RendezvousMetrics {
    pub version: String,
    pub uptime: Duration,
    pub counters: Counters,
    /// Registrations held (fresh ones, and expired ones not yet swept).
    pub registered: usize,
    /// Trust statements in force (one per pair), and statements waiting for delivery.
    pub ledger: usize,
    pub outbox: usize,
    /// Datagrams the kernel refused or that found the send buffer full.
    pub send_errors: u64,
    /// The database's size on disk (file and write-ahead log), when it could be read.
    pub store_bytes: Option<u64>,
    /// Writes of new and changed registrations (one per receive batch that had any), the
    /// registrations they held, the time they took in all, and the slowest.
    pub commits: CommitStats,
    pub streams: StreamStats,
    /// Rendezvous instances sharing the registry, this one included (1 on SQLite).
    pub instances: usize,
    /// Every store call's time and outcome, by operation.
    pub calls: StoreCalls,
}

/// The upper bounds (seconds) of the store calls' histogram buckets.
pub const CALL_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// How the store's calls went, by operation ([`StoreOp::NAMES`]).
///
/// [`StoreOp::NAMES`]: crate::rendezvous::StoreOp::NAMES
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StoreCalls {
    pub ops: [CallStats; crate::rendezvous::StoreOp::NAMES.len()],
}

/// One operation's calls: a histogram of their time, and how many failed.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CallStats {
    /// Calls at or below each of [`CALL_BUCKETS`] (cumulative).
    pub buckets: [u64; CALL_BUCKETS.len()],
    pub count: u64,
    pub seconds: f64,
    pub errors: u64,
}

impl StoreCalls {
    /// One call of operation `op` that took `took`, and whether it failed.
    pub fn record(&mut self, op: usize, took: Duration, failed: bool) {
        let Some(stats) = self.ops.get_mut(op) else {
            return;
        };
        let secs = took.as_secs_f64();
        for (bound, n) in CALL_BUCKETS.iter().zip(&mut stats.buckets) {
            if secs <= *bound {
                *n += 1;
            }
        }
        stats.count += 1;
        stats.seconds += secs;
        stats.errors += u64::from(failed);
    }
}

/// The TLS streams of nodes whose network blocks UDP (`--tcp-listen`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Connections open now.
    pub open: usize,
    /// Datagrams for a stream that was gone or not reading (its queue full).
    pub dropped: u64,
    /// Connections closed at once: over the total or the per-address limit, or a rate.
    pub over_limit: u64,
    /// TLS handshakes that failed or took too long.
    pub handshakes_failed: u64,
}

/// How the registry's writes of registrations went (`Server::commit` and `Server::flush`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CommitStats {
    pub writes: u64,
    pub registrations: u64,
    pub seconds: f64,
    pub slowest_seconds: f64,
}

impl CommitStats {
    /// One write of `registrations` that took `took`.
    pub fn record(&mut self, registrations: usize, took: Duration) {
        self.writes += 1;
        self.registrations += registrations as u64;
        self.seconds += took.as_secs_f64();
        self.slowest_seconds = self.slowest_seconds.max(took.as_secs_f64());
    }
}

/// The text exposition of `m`, families in a fixed order, every reason always.
pub fn render(m: &RendezvousMetrics) -> String {
    let c = &m.counters;
    let mut page = Exposition::new();
    page.process(
        &m.version,
        (
            "pilot_rendezvous_uptime_seconds",
            "Seconds since the rendezvous started.",
        ),
        m.uptime,
    );
    page.single(
        "pilot_rendezvous_registered_nodes",
        Kind::Gauge,
        "Registrations held (fresh, and expired ones not yet swept).",
        m.registered,
    );
    for (name, help, value) in [
        (
            "pilot_rendezvous_registrations_total",
            "Register messages acknowledged (new registrations and refreshes).",
            c.registrations,
        ),
        (
            "pilot_rendezvous_expired_total",
            "Registrations that expired.",
            c.expired,
        ),
        (
            "pilot_rendezvous_nat_probes_total",
            "NAT probes answered (both ports).",
            c.nat_probes,
        ),
        (
            "pilot_rendezvous_challenges_total",
            "Address cookies sent to requests from endpoints not yet proven.",
            c.challenges,
        ),
        (
            "pilot_rendezvous_punches_total",
            "Introductions made (a Punch sent to both nodes).",
            c.punches,
        ),
        (
            "pilot_rendezvous_relay_frames_total",
            "Relay frames forwarded.",
            c.relay_frames,
        ),
        (
            "pilot_rendezvous_relay_bytes_total",
            "Bytes of relay frames forwarded.",
            c.relay_bytes,
        ),
        (
            "pilot_rendezvous_relay_forwarded_frames_total",
            "Relay frames sent on to another instance sharing the database, where their destination is registered.",
            c.relay_forwarded_frames,
        ),
        (
            "pilot_rendezvous_relay_forwarded_bytes_total",
            "Bytes of relay frames sent on to another instance.",
            c.relay_forwarded_bytes,
        ),
    ] {
        page.single(name, Kind::Counter, help, value);
    }
    let mut drops = page.family(
        "pilot_rendezvous_relay_drops_total",
        Kind::Counter,
        "Relay frames not forwarded, by reason.",
    );
    for d in RelayDrop::ALL {
        drops.sample(&[("reason", d.name())], c.relay_dropped(d));
    }
    let mut refusals = page.family(
        "pilot_rendezvous_refusals_total",
        Kind::Counter,
        "Control messages refused, by reason.",
    );
    for r in Refusal::ALL {
        refusals.sample(&[("reason", r.name())], c.refused(r));
    }
    for (name, help, value) in [
        (
            "pilot_rendezvous_statements_stored_total",
            "Trust statements submitted that changed something and were stored.",
            c.statements_stored,
        ),
        (
            "pilot_rendezvous_statements_shared_total",
            "Trust statements another instance sharing the database took, learnt from it.",
            c.statements_shared,
        ),
        (
            "pilot_rendezvous_outbox_evicted_total",
            "Requests and approvals dropped undelivered to make room in a full outbox.",
            c.outbox_evicted,
        ),
        (
            "pilot_rendezvous_ledger_resyncs_total",
            "Registrations whose trust-ledger digest differed from ours (statements exchanged).",
            c.ledger_resyncs,
        ),
        (
            "pilot_rendezvous_deliveries_total",
            "Deliver messages sent (first sends and resends).",
            c.deliveries,
        ),
        (
            "pilot_rendezvous_acks_total",
            "Acks that removed a delivered statement.",
            c.acks,
        ),
        (
            "pilot_rendezvous_lookups_total",
            "Lookups answered (found or not).",
            c.lookups,
        ),
        (
            "pilot_rendezvous_store_errors_total",
            "Store operations that failed.",
            c.store_errors,
        ),
        (
            "pilot_rendezvous_send_errors_total",
            "Datagrams the kernel refused or that found the send buffer full.",
            m.send_errors,
        ),
        (
            "pilot_rendezvous_stream_drops_total",
            "Datagrams for a node's TLS stream dropped: the stream was gone or not reading.",
            m.streams.dropped,
        ),
        (
            "pilot_rendezvous_streams_refused_total",
            "TLS stream connections closed at once, over the total or per-address limit or rate.",
            m.streams.over_limit,
        ),
        (
            "pilot_rendezvous_stream_handshakes_failed_total",
            "TLS stream handshakes that failed or took too long.",
            m.streams.handshakes_failed,
        ),
    ] {
        page.single(name, Kind::Counter, help, value);
    }
    page.single(
        "pilot_rendezvous_streams",
        Kind::Gauge,
        "TLS stream connections open (nodes whose network blocks UDP).",
        m.streams.open,
    );
    page.single(
        "pilot_rendezvous_instances",
        Kind::Gauge,
        "Rendezvous instances sharing the registry, this one included (1 on SQLite).",
        m.instances,
    );
    page.single(
        "pilot_rendezvous_trust_pairs",
        Kind::Gauge,
        "Trust statements in force, one per pair (records and revocations).",
        m.ledger,
    );
    page.single(
        "pilot_rendezvous_outbox_items",
        Kind::Gauge,
        "Trust statements waiting for delivery to their target.",
        m.outbox,
    );
    let k = &m.commits;
    for (name, kind, help, value) in [
        (
            "pilot_rendezvous_store_commits_total",
            Kind::Counter,
            "Writes of registrations: a receive batch's new and changed ones in one transaction, and lazily kept refreshes.",
            Value::from(k.writes),
        ),
        (
            "pilot_rendezvous_store_committed_total",
            Kind::Counter,
            "Registrations those writes held.",
            Value::from(k.registrations),
        ),
        (
            "pilot_rendezvous_store_commit_seconds_total",
            Kind::Counter,
            "Time those writes took, in all (on the store's thread: answers wait for them, the packet loop does not).",
            Value::from(k.seconds),
        ),
        (
            "pilot_rendezvous_store_commit_slowest_seconds",
            Kind::Gauge,
            "The slowest of those writes since the rendezvous started.",
            Value::from(k.slowest_seconds),
        ),
    ] {
        page.single(name, kind, help, value);
    }
    if let Some(bytes) = m.store_bytes {
        page.single(
            "pilot_rendezvous_store_bytes",
            Kind::Gauge,
            "Size of the registry database on disk (file and write-ahead log).",
            bytes,
        );
    }
    let mut calls = page.family(
        "pilot_rendezvous_store_call_seconds",
        Kind::Histogram,
        "How long each call of the registry store took, by operation (on the store's thread; PostgreSQL's include the round trip).",
    );
    for (name, s) in crate::rendezvous::StoreOp::NAMES.iter().zip(&m.calls.ops) {
        calls.histogram(
            &[("op", name)],
            &CALL_BUCKETS,
            &s.buckets,
            s.seconds,
            s.count,
        );
    }
    let mut failed = page.family(
        "pilot_rendezvous_store_call_errors_total",
        Kind::Counter,
        "Calls of the registry store that failed, by operation.",
    );
    for (name, s) in crate::rendezvous::StoreOp::NAMES.iter().zip(&m.calls.ops) {
        failed.sample(&[("op", name)], s.errors);
    }
    page.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_state_renders_exactly() {
        let mut counters = Counters::default();
        counters.registrations = 12;
        counters.nat_probes = 8;
        counters.punches = 3;
        counters.relay_frames = 40;
        counters.relay_bytes = 52_000;
        counters.expired = 1;
        counters.statements_stored = 4;
        counters.deliveries = 5;
        counters.acks = 4;
        counters.lookups = 2;
        counters.refuse(Refusal::Replay);
        counters.refuse(Refusal::NameTaken);
        counters.refuse(Refusal::NameTaken);
        counters.relay_drop(RelayDrop::NotAllowed);
        let m = RendezvousMetrics {
            version: "0.1.0".into(),
            uptime: Duration::from_secs(3600),
            counters,
            registered: 2,
            ledger: 1,
            outbox: 0,
            send_errors: 7,
            store_bytes: Some(4096),
            commits: CommitStats {
                writes: 3,
                registrations: 5,
                seconds: 0.25,
                slowest_seconds: 0.125,
            },
            streams: StreamStats {
                open: 2,
                dropped: 3,
                over_limit: 1,
                handshakes_failed: 4,
            },
            instances: 2,
            calls: StoreCalls::default(),
        };
        let page = render(&m);
        // The store calls' families close the page (`store_calls_render_as_histograms`).
        let calls_at = page
            .find("# HELP pilot_rendezvous_store_call_seconds")
            .unwrap();
        let (page, _) = page.split_at(calls_at);
        let expected = "\
# HELP pilot_build_info The running pilotd's version; always 1.
# TYPE pilot_build_info gauge
pilot_build_info{version=\"0.1.0\"} 1
# HELP pilot_rendezvous_uptime_seconds Seconds since the rendezvous started.
# TYPE pilot_rendezvous_uptime_seconds gauge
pilot_rendezvous_uptime_seconds 3600
# HELP pilot_rendezvous_registered_nodes Registrations held (fresh, and expired ones not yet swept).
# TYPE pilot_rendezvous_registered_nodes gauge
pilot_rendezvous_registered_nodes 2
# HELP pilot_rendezvous_registrations_total Register messages acknowledged (new registrations and refreshes).
# TYPE pilot_rendezvous_registrations_total counter
pilot_rendezvous_registrations_total 12
# HELP pilot_rendezvous_expired_total Registrations that expired.
# TYPE pilot_rendezvous_expired_total counter
pilot_rendezvous_expired_total 1
# HELP pilot_rendezvous_nat_probes_total NAT probes answered (both ports).
# TYPE pilot_rendezvous_nat_probes_total counter
pilot_rendezvous_nat_probes_total 8
# HELP pilot_rendezvous_challenges_total Address cookies sent to requests from endpoints not yet proven.
# TYPE pilot_rendezvous_challenges_total counter
pilot_rendezvous_challenges_total 0
# HELP pilot_rendezvous_punches_total Introductions made (a Punch sent to both nodes).
# TYPE pilot_rendezvous_punches_total counter
pilot_rendezvous_punches_total 3
# HELP pilot_rendezvous_relay_frames_total Relay frames forwarded.
# TYPE pilot_rendezvous_relay_frames_total counter
pilot_rendezvous_relay_frames_total 40
# HELP pilot_rendezvous_relay_bytes_total Bytes of relay frames forwarded.
# TYPE pilot_rendezvous_relay_bytes_total counter
pilot_rendezvous_relay_bytes_total 52000
# HELP pilot_rendezvous_relay_forwarded_frames_total Relay frames sent on to another instance sharing the database, where their destination is registered.
# TYPE pilot_rendezvous_relay_forwarded_frames_total counter
pilot_rendezvous_relay_forwarded_frames_total 0
# HELP pilot_rendezvous_relay_forwarded_bytes_total Bytes of relay frames sent on to another instance.
# TYPE pilot_rendezvous_relay_forwarded_bytes_total counter
pilot_rendezvous_relay_forwarded_bytes_total 0
# HELP pilot_rendezvous_relay_drops_total Relay frames not forwarded, by reason.
# TYPE pilot_rendezvous_relay_drops_total counter
pilot_rendezvous_relay_drops_total{reason=\"malformed\"} 0
pilot_rendezvous_relay_drops_total{reason=\"wrong_port\"} 0
pilot_rendezvous_relay_drops_total{reason=\"unknown_sender\"} 0
pilot_rendezvous_relay_drops_total{reason=\"unknown_target\"} 0
pilot_rendezvous_relay_drops_total{reason=\"not_allowed\"} 1
pilot_rendezvous_relay_drops_total{reason=\"rate_limited\"} 0
pilot_rendezvous_relay_drops_total{reason=\"too_big\"} 0
pilot_rendezvous_relay_drops_total{reason=\"bad_forward\"} 0
# HELP pilot_rendezvous_refusals_total Control messages refused, by reason.
# TYPE pilot_rendezvous_refusals_total counter
pilot_rendezvous_refusals_total{reason=\"malformed\"} 0
pilot_rendezvous_refusals_total{reason=\"bad_signature\"} 0
pilot_rendezvous_refusals_total{reason=\"stale\"} 0
pilot_rendezvous_refusals_total{reason=\"replay\"} 1
pilot_rendezvous_refusals_total{reason=\"unexpected\"} 0
pilot_rendezvous_refusals_total{reason=\"not_registered\"} 0
pilot_rendezvous_refusals_total{reason=\"unknown_target\"} 0
pilot_rendezvous_refusals_total{reason=\"not_allowed\"} 0
pilot_rendezvous_refusals_total{reason=\"rate_limited\"} 0
pilot_rendezvous_refusals_total{reason=\"registry_full\"} 0
pilot_rendezvous_refusals_total{reason=\"store_failed\"} 0
pilot_rendezvous_refusals_total{reason=\"name_taken\"} 2
pilot_rendezvous_refusals_total{reason=\"bad_statement\"} 0
pilot_rendezvous_refusals_total{reason=\"outbox_full\"} 0
pilot_rendezvous_refusals_total{reason=\"unproven\"} 0
pilot_rendezvous_refusals_total{reason=\"register_rate\"} 0
pilot_rendezvous_refusals_total{reason=\"name_claims\"} 0
pilot_rendezvous_refusals_total{reason=\"ledger_full\"} 0
pilot_rendezvous_refusals_total{reason=\"new_pairs\"} 0
pilot_rendezvous_refusals_total{reason=\"wrong_transport\"} 0
pilot_rendezvous_refusals_total{reason=\"store_busy\"} 0
# HELP pilot_rendezvous_statements_stored_total Trust statements submitted that changed something and were stored.
# TYPE pilot_rendezvous_statements_stored_total counter
pilot_rendezvous_statements_stored_total 4
# HELP pilot_rendezvous_statements_shared_total Trust statements another instance sharing the database took, learnt from it.
# TYPE pilot_rendezvous_statements_shared_total counter
pilot_rendezvous_statements_shared_total 0
# HELP pilot_rendezvous_outbox_evicted_total Requests and approvals dropped undelivered to make room in a full outbox.
# TYPE pilot_rendezvous_outbox_evicted_total counter
pilot_rendezvous_outbox_evicted_total 0
# HELP pilot_rendezvous_ledger_resyncs_total Registrations whose trust-ledger digest differed from ours (statements exchanged).
# TYPE pilot_rendezvous_ledger_resyncs_total counter
pilot_rendezvous_ledger_resyncs_total 0
# HELP pilot_rendezvous_deliveries_total Deliver messages sent (first sends and resends).
# TYPE pilot_rendezvous_deliveries_total counter
pilot_rendezvous_deliveries_total 5
# HELP pilot_rendezvous_acks_total Acks that removed a delivered statement.
# TYPE pilot_rendezvous_acks_total counter
pilot_rendezvous_acks_total 4
# HELP pilot_rendezvous_lookups_total Lookups answered (found or not).
# TYPE pilot_rendezvous_lookups_total counter
pilot_rendezvous_lookups_total 2
# HELP pilot_rendezvous_store_errors_total Store operations that failed.
# TYPE pilot_rendezvous_store_errors_total counter
pilot_rendezvous_store_errors_total 0
# HELP pilot_rendezvous_send_errors_total Datagrams the kernel refused or that found the send buffer full.
# TYPE pilot_rendezvous_send_errors_total counter
pilot_rendezvous_send_errors_total 7
# HELP pilot_rendezvous_stream_drops_total Datagrams for a node's TLS stream dropped: the stream was gone or not reading.
# TYPE pilot_rendezvous_stream_drops_total counter
pilot_rendezvous_stream_drops_total 3
# HELP pilot_rendezvous_streams_refused_total TLS stream connections closed at once, over the total or per-address limit or rate.
# TYPE pilot_rendezvous_streams_refused_total counter
pilot_rendezvous_streams_refused_total 1
# HELP pilot_rendezvous_stream_handshakes_failed_total TLS stream handshakes that failed or took too long.
# TYPE pilot_rendezvous_stream_handshakes_failed_total counter
pilot_rendezvous_stream_handshakes_failed_total 4
# HELP pilot_rendezvous_streams TLS stream connections open (nodes whose network blocks UDP).
# TYPE pilot_rendezvous_streams gauge
pilot_rendezvous_streams 2
# HELP pilot_rendezvous_instances Rendezvous instances sharing the registry, this one included (1 on SQLite).
# TYPE pilot_rendezvous_instances gauge
pilot_rendezvous_instances 2
# HELP pilot_rendezvous_trust_pairs Trust statements in force, one per pair (records and revocations).
# TYPE pilot_rendezvous_trust_pairs gauge
pilot_rendezvous_trust_pairs 1
# HELP pilot_rendezvous_outbox_items Trust statements waiting for delivery to their target.
# TYPE pilot_rendezvous_outbox_items gauge
pilot_rendezvous_outbox_items 0
# HELP pilot_rendezvous_store_commits_total Writes of registrations: a receive batch's new and changed ones in one transaction, and lazily kept refreshes.
# TYPE pilot_rendezvous_store_commits_total counter
pilot_rendezvous_store_commits_total 3
# HELP pilot_rendezvous_store_committed_total Registrations those writes held.
# TYPE pilot_rendezvous_store_committed_total counter
pilot_rendezvous_store_committed_total 5
# HELP pilot_rendezvous_store_commit_seconds_total Time those writes took, in all (on the store's thread: answers wait for them, the packet loop does not).
# TYPE pilot_rendezvous_store_commit_seconds_total counter
pilot_rendezvous_store_commit_seconds_total 0.25
# HELP pilot_rendezvous_store_commit_slowest_seconds The slowest of those writes since the rendezvous started.
# TYPE pilot_rendezvous_store_commit_slowest_seconds gauge
pilot_rendezvous_store_commit_slowest_seconds 0.125
# HELP pilot_rendezvous_store_bytes Size of the registry database on disk (file and write-ahead log).
# TYPE pilot_rendezvous_store_bytes gauge
pilot_rendezvous_store_bytes 4096
";
        assert_eq!(page, expected);
        let without = render(&RendezvousMetrics {
            store_bytes: None,
            ..m
        });
        assert!(!without.contains("store_bytes"), "unknown size: no sample");
    }

    #[test]
    fn store_calls_render_as_histograms_by_operation() {
        let mut calls = StoreCalls::default();
        calls.record(0, Duration::from_micros(1500), false);
        calls.record(0, Duration::from_millis(30), false);
        calls.record(8, Duration::from_secs(4), true);
        let page = render(&RendezvousMetrics {
            calls,
            ..RendezvousMetrics::default()
        });
        let at = page
            .find("# HELP pilot_rendezvous_store_call_seconds")
            .unwrap();
        let lines: Vec<&str> = page[at..].lines().collect();
        let save = "\
# TYPE pilot_rendezvous_store_call_seconds histogram
pilot_rendezvous_store_call_seconds_bucket{op=\"save\",le=\"0.0005\"} 0
pilot_rendezvous_store_call_seconds_bucket{op=\"save\",le=\"0.001\"} 0
pilot_rendezvous_store_call_seconds_bucket{op=\"save\",le=\"0.002\"} 1
pilot_rendezvous_store_call_seconds_bucket{op=\"save\",le=\"0.005\"} 1
pilot_rendezvous_store_call_seconds_bucket{op=\"save\",le=\"0.01\"} 1
pilot_rendezvous_store_call_seconds_bucket{op=\"save\",le=\"0.025\"} 1
pilot_rendezvous_store_call_seconds_bucket{op=\"save\",le=\"0.05\"} 2
pilot_rendezvous_store_call_seconds_bucket{op=\"save\",le=\"0.1\"} 2
pilot_rendezvous_store_call_seconds_bucket{op=\"save\",le=\"0.25\"} 2
pilot_rendezvous_store_call_seconds_bucket{op=\"save\",le=\"0.5\"} 2
pilot_rendezvous_store_call_seconds_bucket{op=\"save\",le=\"1\"} 2
pilot_rendezvous_store_call_seconds_bucket{op=\"save\",le=\"2.5\"} 2
pilot_rendezvous_store_call_seconds_bucket{op=\"save\",le=\"+Inf\"} 2";
        assert_eq!(lines[1..15].join("\n"), save);
        let sum = lines[15].strip_prefix("pilot_rendezvous_store_call_seconds_sum{op=\"save\"} ");
        let sum: f64 = sum.unwrap().parse().unwrap();
        assert!((sum - 0.0315).abs() < 1e-9, "{sum}");
        assert_eq!(
            lines[16],
            "pilot_rendezvous_store_call_seconds_count{op=\"save\"} 2"
        );
        // A slow failed locate: in +Inf only, and counted as an error.
        assert!(page.contains(
            "pilot_rendezvous_store_call_seconds_bucket{op=\"locate\",le=\"2.5\"} 0\n\
             pilot_rendezvous_store_call_seconds_bucket{op=\"locate\",le=\"+Inf\"} 1\n"
        ));
        assert!(page.contains("pilot_rendezvous_store_call_errors_total{op=\"locate\"} 1\n"));
        assert!(page.contains("pilot_rendezvous_store_call_errors_total{op=\"save\"} 0\n"));
        // Every operation, always: 15 lines each, and one error line each.
        let buckets = lines.iter().filter(|l| l.contains("_bucket{")).count();
        assert_eq!(buckets, 9 * 13);
        let errors = lines
            .iter()
            .filter(|l| l.starts_with("pilot_rendezvous_store_call_errors_total{"))
            .count();
        assert_eq!(errors, 9);
    }
}
