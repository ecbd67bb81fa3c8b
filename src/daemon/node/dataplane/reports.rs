//! What the data plane reports: `info`, the trust list, the status summary and the metrics
//! snapshot.
//! Both are copies of counters and one pass over the peers, taken between two batches.

use std::time::Instant;

use super::Core;
use crate::api::{InfoReply, RequestInfo, TrustReply, TrustedPeer};
use crate::api::{PathCounts, StatusReply, TrustCounts};
use crate::daemon::metrics::NodeMetrics;
use crate::node::PathKind;

impl Core {
    /// Peers packets may pass with, by path now.
    pub(super) fn path_counts(&self, now: Instant) -> PathCounts {
        let mut counts = PathCounts::default();
        for peer in self.node.peers(now) {
            match peer.path {
                PathKind::Direct => counts.direct += 1,
                PathKind::Relay => counts.relay += 1,
                PathKind::None => counts.none += 1,
            }
        }
        counts
    }

    /// Drops the loop counts itself: TUN writes, TUN reads, UDP sends.
    pub(super) fn own_drops(&self) -> [(&'static str, u64); 3] {
        [
            ("tun_write_failed", self.out.writer.errors()),
            ("tun_read_malformed", self.offload_errors),
            (
                "udp_send_failed",
                self.out.send.send_errors() + self.out.send_dropped,
            ),
        ]
    }

    /// A copy of everything the metrics page shows: counters, and one entry per peer.
    pub(super) fn metrics(&self) -> NodeMetrics {
        let now = Instant::now();
        let paths = self.path_counts(now);
        let [tun_write, tun_read, udp_send] = self.own_drops().map(|(_, n)| n);
        NodeMetrics {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime: now.saturating_duration_since(self.facts.started),
            direct: paths.direct,
            relay: paths.relay,
            unreachable: paths.none,
            traffic: self.node.traffic().collect(),
            counters: self.node.counters().clone(),
            tun_write_failed: tun_write,
            tun_read_malformed: tun_read,
            udp_send_failed: udp_send,
            trusted: self.node.trust().trusted().count(),
            configured: self.node.configured_peers().count(),
            pending: self.node.trust().incoming(self.node.wall_ms(now)).count(),
            registered: self.node.is_registered(now),
            nat: self.node.net_status(now).nat,
            approvals_evicted: self.node.trust().approvals_evicted(),
        }
    }

    pub(super) fn status(&self) -> StatusReply {
        let now = Instant::now();
        let addr = self.node.addr();
        let net = self.node.net_status(now);
        let counters = self.node.counters();
        let drops = counters.iter().map(|(_, n)| n);
        StatusReply {
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_secs: now.saturating_duration_since(self.facts.started).as_secs(),
            address: addr.to_ipv6().to_string(),
            node: addr.to_string(),
            hostname: self.node.hostname().map(|n| n.to_string()),
            interface: self.facts.interface.clone(),
            listen_port: self.facts.listen_port,
            nat: net.rendezvous.is_some().then_some(net.nat),
            rendezvous: net.rendezvous,
            registered: net.registered,
            endpoint: net.endpoint,
            endpoint_configured: net.endpoint_configured,
            peers: self.path_counts(now),
            trust: TrustCounts {
                trusted: self.node.trust().trusted().count(),
                configured: self.node.configured_peers().count(),
                pending: self.node.trust().incoming(self.node.wall_ms(now)).count(),
                auto_approve: self.node.auto_approve(),
            },
            drops_total: drops.chain(self.own_drops().map(|(_, n)| n)).sum(),
            handshakes: counters.handshakes,
            metrics: self.facts.metrics.map(|a| a.to_string()),
            lan_guard_missing: self.facts.lan_guard_missing.clone(),
            trust_save_error: self.saves.failing().map(str::to_owned),
            trust_save_failures: self.saves.failures(),
            rendezvous_problem: net.problem.clone(),
            rendezvous_preferred: net.preferred.clone(),
            rendezvous_stream: net.stream.clone(),
            clock_offset_ms: net.clock_offset_ms,
            unreachable: self
                .node
                .peers(now)
                .filter(|p| p.unreachable)
                .map(|p| {
                    let name = p.peer.hostname.as_ref().map_or("-", |h| h.as_str());
                    match p.last_heard_secs {
                        Some(s) => format!("{name} ({}), last heard {s} s ago", p.peer.addr),
                        None => format!("{name} ({}), never heard", p.peer.addr),
                    }
                })
                .collect(),
        }
    }

    pub(super) fn trust_list(&self) -> TrustReply {
        let trust = self.node.trust();
        let now_ms = self.node.wall_ms(Instant::now());
        let ago = |ms: u64| Some(now_ms.saturating_sub(ms) / 1000);
        let mut reply = TrustReply::default();
        for key in self.node.configured_peers() {
            reply.trusted.push(TrustedPeer {
                peer: self.peer_ref(key, None),
                since_ms: None,
                since_secs: None,
                configured: true,
            });
        }
        for (key, record) in trust.trusted() {
            reply.trusted.push(TrustedPeer {
                peer: self.peer_ref(key, None),
                since_ms: Some(record.issued_ms),
                since_secs: ago(record.issued_ms),
                configured: false,
            });
        }
        for o in trust.outgoing() {
            reply.requested.push(RequestInfo {
                peer: self.peer_ref(o.request.target, None),
                justification: o.request.justification.clone(),
                issued_ms: o.request.issued_ms,
                age_secs: ago(o.request.issued_ms),
                status: if o.rejected.is_some() {
                    "rejected"
                } else {
                    "pending"
                }
                .into(),
                reason: o.rejected.as_ref().map(|r| r.1.clone()),
            });
        }
        reply.approved = trust.approved().map(|k| self.peer_ref(k, None)).collect();
        reply
    }

    pub(super) fn info(&self) -> InfoReply {
        let now = Instant::now();
        let addr = self.node.addr();
        let net = self.node.net_status(now);
        let mut drops = self.node.counters().to_json();
        for (reason, n) in self.own_drops() {
            drops.insert(reason.into(), n.into());
        }
        if let Some((stack, _)) = &self.out.stack {
            // Userspace mode: limits the stack hit (see io::stack::Limits).
            let stats = stack.stats();
            drops.insert("stack_queue_full".into(), stats.queue_drops.into());
            drops.insert("stack_connection_limit".into(), stats.limit_refusals.into());
            drops.insert(
                "stack_half_open_timeout".into(),
                stats.half_open_timeouts.into(),
            );
        }
        InfoReply {
            address: addr.to_ipv6().to_string(),
            node: addr.to_string(),
            public_key: self.node.key().to_string(),
            hostname: self.node.hostname().map(|n| n.to_string()),
            interface: self.facts.interface.clone(),
            mode: match self.out.stack {
                Some(_) => "userspace",
                None => "kernel",
            }
            .to_owned(),
            socks5: self.facts.socks5.map(|a| a.to_string()),
            expose: self.facts.expose.clone(),
            mtu: self.facts.mtu,
            listen_port: self.facts.listen_port,
            endpoint: net.endpoint,
            endpoint_configured: net.endpoint_configured,
            observed: net.observed,
            nat: net.rendezvous.is_some().then_some(net.nat),
            peers: self.node.peers(now).count(),
            auto_approve: self.node.auto_approve(),
            trusted: self.node.trust().trusted().count(),
            pending: self.node.trust().incoming(self.node.wall_ms(now)).count(),
            drops,
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
        }
    }
}
