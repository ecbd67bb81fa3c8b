//! Wall-clock time for the sans-IO state machines, which never read a clock themselves.
//!
//! Signed control messages carry a UNIX timestamp, but the state machines only get
//! `now: Instant`. A [`WallClock`] pins one `Instant` to the UNIX time it stood for, so any
//! later `Instant` converts deterministically: the daemon makes one from the system clock at
//! start, a simulation makes one at any epoch it likes.
//!
//! A node whose system clock is wrong (a board without RTC before NTP, a network without NTP)
//! corrects its clock by an offset learnt from the rendezvous ([`WallClock::set_offset_ms`]),
//! so what it signs is dated in the time the rest of the network keeps.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Moves WireGuard's clock (boringtun's timers: handshake retry, rekey, keepalive, session
/// expiry) forward by `by`, on this thread. Only with the `simulated-clock` feature, where
/// boringtun reads this clock instead of the system's; a simulation calls it as its own time
/// advances.
#[cfg(feature = "simulated-clock")]
pub fn advance_wireguard(by: std::time::Duration) {
    mock_instant::MockClock::advance(by);
}

#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    at: Instant,
    unix_ms: u64,
    /// Added to every reading: the correction learnt from the rendezvous (0 if none).
    offset_ms: i64,
}

impl WallClock {
    /// `at` stood for `unix_ms` milliseconds since the UNIX epoch.
    pub fn new(at: Instant, unix_ms: u64) -> WallClock {
        WallClock {
            at,
            unix_ms,
            offset_ms: 0,
        }
    }

    /// Corrects every later reading by `offset_ms` (replacing any earlier correction).
    pub fn set_offset_ms(&mut self, offset_ms: i64) {
        self.offset_ms = offset_ms;
    }

    /// The correction in force.
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms
    }

    /// Milliseconds since the UNIX epoch at `now` by the clock this was made from, without
    /// the correction.
    pub fn uncorrected_ms(&self, now: Instant) -> u64 {
        match now.checked_duration_since(self.at) {
            Some(after) => self.unix_ms.saturating_add(after.as_millis() as u64),
            None => self
                .unix_ms
                .saturating_sub(self.at.duration_since(now).as_millis() as u64),
        }
    }

    /// The `Instant` this clock was pinned at.
    pub fn origin(&self) -> Instant {
        self.at
    }

    /// Reads the system clock once, now.
    pub fn system() -> WallClock {
        WallClock::new(Instant::now(), unix_ms_now())
    }

    /// Milliseconds since the UNIX epoch at `now`, corrected.
    pub fn unix_ms(&self, now: Instant) -> u64 {
        self.uncorrected_ms(now)
            .saturating_add_signed(self.offset_ms)
    }
}

/// Milliseconds since the UNIX epoch by the system clock (0 if it is set before 1970).
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// How far a clock is off, in words: "3.2 s behind", "5 h 12 min ahead", "365 days 0 h
/// behind". `offset_ms` is what must be added to the clock to get the reference time.
pub fn describe_offset(offset_ms: i64) -> String {
    let direction = if offset_ms > 0 { "behind" } else { "ahead" };
    let ms = offset_ms.unsigned_abs();
    let amount = if ms < 120_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 48 * 3_600_000 {
        let minutes = (ms + 30_000) / 60_000;
        format!("{} h {} min", minutes / 60, minutes % 60)
    } else {
        let hours = (ms + 1_800_000) / 3_600_000;
        format!("{} days {} h", hours / 24, hours % 24)
    };
    format!("{amount} {direction}")
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

    #[test]
    fn a_correction_shifts_every_reading_and_can_be_replaced() {
        let t0 = Instant::now();
        let mut clock = WallClock::new(t0, 1_000_000);
        clock.set_offset_ms(-400_000);
        assert_eq!(clock.unix_ms(t0), 600_000);
        assert_eq!(clock.uncorrected_ms(t0), 1_000_000);
        clock.set_offset_ms(5_000);
        assert_eq!(clock.unix_ms(t0 + Duration::from_secs(1)), 1_006_000);
        assert_eq!(clock.offset_ms(), 5_000);
    }

    #[test]
    fn offsets_read_in_the_unit_that_fits() {
        assert_eq!(describe_offset(3_210), "3.2 s behind");
        assert_eq!(
            describe_offset(-3_600_000 - 12 * 60_000),
            "1 h 12 min ahead"
        );
        assert_eq!(describe_offset(365 * 86_400_000), "365 days 0 h behind");
        // Measured offsets are a few milliseconds off the round figure.
        assert_eq!(describe_offset(3_599_990), "1 h 0 min behind");
        assert_eq!(describe_offset(-86_399_990), "24 h 0 min ahead");
    }
}
