//! Wall-clock time for the sans-IO state machines, which never read a clock themselves.
//!
//! Signed control messages carry a UNIX timestamp, but the state machines only get
//! `now: Instant`. A [`WallClock`] pins one `Instant` to the UNIX time it stood for, so any
//! later `Instant` converts deterministically: the daemon makes one from the system clock at
//! start, a simulation makes one at any epoch it likes.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    at: Instant,
    unix_ms: u64,
}

impl WallClock {
    /// `at` stood for `unix_ms` milliseconds since the UNIX epoch.
    pub fn new(at: Instant, unix_ms: u64) -> WallClock {
        WallClock { at, unix_ms }
    }

    /// The `Instant` this clock was pinned at.
    pub fn origin(&self) -> Instant {
        self.at
    }

    /// Reads the system clock once, now.
    pub fn system() -> WallClock {
        WallClock::new(Instant::now(), unix_ms_now())
    }

    /// Milliseconds since the UNIX epoch at `now`.
    pub fn unix_ms(&self, now: Instant) -> u64 {
        match now.checked_duration_since(self.at) {
            Some(after) => self.unix_ms.saturating_add(after.as_millis() as u64),
            None => self
                .unix_ms
                .saturating_sub(self.at.duration_since(now).as_millis() as u64),
        }
    }
}

/// Milliseconds since the UNIX epoch by the system clock (0 if it is set before 1970).
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn instants_map_to_unix_milliseconds_both_ways() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let clock = WallClock::new(t0, 1_000_000);
        assert_eq!(clock.unix_ms(t0), 1_000_000);
        assert_eq!(clock.unix_ms(t0 + Duration::from_millis(1500)), 1_001_500);
        assert_eq!(clock.unix_ms(t0 - Duration::from_millis(2500)), 997_500);
    }
}
