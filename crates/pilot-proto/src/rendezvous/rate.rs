//! Rates with a burst allowance, and the token buckets that enforce them: per node (requests,
//! relayed bytes), per source address (new keys, name claims, new ledger pairs).

use std::time::{Duration, Instant};

/// A rate with a burst allowance, in units (bytes, requests) per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_sec: u64,
    pub burst: u64,
}

/// A token bucket kept as GCRA's "theoretical arrival time": one `Instant` per bucket, integer
/// arithmetic only, and an idle bucket costs nothing to refill.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokenBucket {
    /// When the bucket would be full again if nothing more were taken; `None` = full.
    tat: Option<Instant>,
}

impl TokenBucket {
    /// Whether nothing has been taken lately: the bucket is as if new.
    pub fn is_full(&self, now: Instant) -> bool {
        self.tat.is_none_or(|t| t <= now)
    }

    /// Takes `cost` units at `now` if the rate allows it. A zero rate allows nothing.
    pub fn take(&mut self, rate: Rate, cost: u64, now: Instant) -> bool {
        if rate.per_sec == 0 {
            return false;
        }
        let per_unit = |units: u64| {
            let nanos = u128::from(units) * 1_000_000_000 / u128::from(rate.per_sec);
            Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
        };
        let start = self.tat.map_or(now, |t| t.max(now));
        let Some(tat) = start.checked_add(per_unit(cost)) else {
            return false;
        };
        if tat.saturating_duration_since(now) > per_unit(rate.burst) {
            return false;
        }
        self.tat = Some(tat);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_the_rate() {
        let rate = Rate {
            per_sec: 5,
            burst: 10,
        };
        let t0 = Instant::now();
        let mut b = TokenBucket::default();
        assert_eq!((0..20).filter(|_| b.take(rate, 1, t0)).count(), 10);
        // 200 ms later one more unit has come back.
        let t1 = t0 + Duration::from_millis(200);
        assert!(b.take(rate, 1, t1));
        assert!(!b.take(rate, 1, t1));
        // Idle for long: full again, but never more than the burst.
        let t2 = t1 + Duration::from_secs(3600);
        assert_eq!((0..20).filter(|_| b.take(rate, 1, t2)).count(), 10);
    }

    #[test]
    fn byte_bucket_holds_the_long_run_rate() {
        let rate = Rate {
            per_sec: 1_000_000,
            burst: 100_000,
        };
        let t0 = Instant::now();
        let mut b = TokenBucket::default();
        let mut sent = 0u64;
        // 10 s of 1400-byte frames offered every 100 µs (14 MB/s offered, 1 MB/s allowed).
        for i in 0..100_000u64 {
            if b.take(rate, 1400, t0 + Duration::from_micros(i * 100)) {
                sent += 1400;
            }
        }
        assert!((10_000_000..=10_100_000 + 1400).contains(&sent), "{sent}");
        assert!(!TokenBucket::default().take(
            Rate {
                per_sec: 0,
                burst: 1
            },
            1,
            t0
        ));
        assert!(!TokenBucket::default().take(rate, rate.burst + 1, t0));
    }
}
