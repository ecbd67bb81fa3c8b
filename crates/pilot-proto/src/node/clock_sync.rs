//! The time the node signs with. Control messages carry a timestamp that receivers accept
//! only within [`MAX_SKEW`] of their own clock, so a node whose system clock is wrong — a
//! board without RTC that booted before NTP, a network without NTP at all — would never
//! register. Instead it takes the rendezvous' time:
//!
//! - every answer to a registration (`Registered`, `Challenge`, `Refused`) is signed by the
//!   pinned rendezvous key and echoes the registration's random nonce, so it is fresh
//!   whatever the clocks say, and its envelope's timestamp is the rendezvous' time;
//! - a registration dated outside the rendezvous' window is answered `Refused { Stale }`
//!   (and nothing else changes there), so even a node off by a year gets such an answer;
//! - when the measured offset is more than [`CORRECT_BEYOND`] from the correction in force,
//!   the node's clock is corrected by it, the change logged once, and `netcheck`/`status`
//!   report it. The node then registers again at once.
//!
//! Replay protection is unchanged: the rendezvous still refuses anything outside its window
//! or seen before, and the node accepts an answer dated outside its own window only when it
//! echoes the registration it is waiting for — a captured answer echoes an old nonce.

use std::time::{Duration, Instant};

use super::Node;
use crate::clock::describe_offset;
use crate::wire::control::Message;
use crate::wire::envelope::Opened;
#[cfg(doc)]
use crate::wire::envelope::MAX_SKEW;

/// A measured offset this far from the correction in force replaces it: well inside the
/// receivers' window, well above the error of half a round trip.
pub const CORRECT_BEYOND: Duration = Duration::from_secs(10);

impl Node {
    /// Measures our clock against an answer from the rendezvous (already known to come from
    /// it: its address and key) and corrects it when it is off. Call before the answer's
    /// freshness is checked: the correction is what makes it fresh.
    pub(super) fn sync_clock(&mut self, opened: &Opened<'_>, message: &Message, now: Instant) {
        let echo = match message {
            Message::Registered { echo, .. }
            | Message::Challenge { echo, .. }
            | Message::Refused { echo, .. } => *echo,
            _ => return,
        };
        let Some(link) = &mut self.link else {
            return;
        };
        let local_ms = self.clock.uncorrected_ms(now);
        let Some(measured) = link.measure_clock(echo, opened.timestamp_ms, local_ms, now) else {
            return;
        };
        let in_force = self.clock.offset_ms();
        if measured.abs_diff(in_force) <= CORRECT_BEYOND.as_millis() as u64 {
            return;
        }
        self.clock.set_offset_ms(measured);
        self.counters.clock_corrections += 1;
        if measured.unsigned_abs() > CORRECT_BEYOND.as_millis() as u64 {
            tracing::warn!(
                "this system's clock is {} the rendezvous' (no RTC, or NTP not synchronised?): \
                 signing with the rendezvous' time; set the clock to fix it",
                describe_offset(measured)
            );
        } else {
            tracing::info!("this system's clock agrees with the rendezvous' again");
        }
    }

    /// The correction the node signs with (ms added to its system clock; 0 if none).
    pub fn clock_correction_ms(&self) -> i64 {
        self.clock.offset_ms()
    }
}
