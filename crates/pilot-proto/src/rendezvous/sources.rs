//! Where requests come from, for limits that an attacker must pay for in addresses rather than
//! in keys (keys are free). A source is an IPv4 address, or an IPv6 /56: an IPv6 host gets
//! at least a /64 and a home network a /56, so counting single IPv6 addresses would give one
//! attacker 2^64 fresh sources.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Instant;

use super::rate::{Rate, TokenBucket};

/// Source addresses with a rate bucket remembered at most, per kind of bucket; beyond it,
/// idle (full) buckets are forgotten, and if none is idle a new source is refused.
pub const MAX_SOURCES: usize = 65_536;

/// A source address, as limits count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// Not known: an outbox item restored from the store whose sender has no stored
    /// registration.
    Unknown,
    V4([u8; 4]),
    /// The first 56 bits.
    V6([u8; 7]),
}

impl Source {
    pub fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source::V4(v4.octets()),
            IpAddr::V6(v6) => {
                let mut prefix = [0; 7];
                prefix.copy_from_slice(&v6.octets()[..7]);
                Source::V6(prefix)
            }
        }
    }
}

/// A token bucket per source, bounded to [`MAX_SOURCES`] sources.
#[derive(Debug, Default)]
pub struct SourceBuckets {
    buckets: BTreeMap<Source, TokenBucket>,
}

impl SourceBuckets {
    /// Takes `cost` tokens from `source`'s bucket at `rate`; false when it has too few, or
    /// when `source` is new and every remembered source is busy.
    pub fn take(&mut self, source: Source, rate: Rate, cost: u64, now: Instant) -> bool {
        if self.buckets.len() >= MAX_SOURCES && !self.buckets.contains_key(&source) {
            self.buckets.retain(|_, bucket| !bucket.is_full(now));
            if self.buckets.len() >= MAX_SOURCES {
                return false;
            }
        }
        self.buckets
            .entry(source)
            .or_default()
            .take(rate, cost, now)
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_source_is_its_slash_56_and_a_mapped_ipv4_address_is_the_ipv4_address() {
        let a: IpAddr = "2001:db8:1:2300::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:23ff:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:2400::1".parse().unwrap();
        assert_eq!(Source::of(a), Source::of(b));
        assert_ne!(Source::of(a), Source::of(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(Source::of(mapped), Source::of(v4));
        assert_ne!(Source::of(v4), Source::of("192.0.2.8".parse().unwrap()));
    }

    #[test]
    fn sources_are_bounded_and_idle_ones_make_room() {
        let rate = Rate {
            per_sec: 1,
            burst: 1,
        };
        let start = Instant::now();
        let mut buckets = SourceBuckets::default();
        for n in 0..MAX_SOURCES as u32 {
            let source = Source::V4(n.to_be_bytes());
            assert!(buckets.take(source, rate, 1, start));
        }
        let newcomer = Source::V4([255; 4]);
        assert!(!buckets.take(newcomer, rate, 1, start), "all busy");
        assert_eq!(buckets.len(), MAX_SOURCES);
        let later = start + std::time::Duration::from_secs(2);
        assert!(
            buckets.take(newcomer, rate, 1, later),
            "idle ones forgotten"
        );
        assert_eq!(buckets.len(), 1);
    }
}
