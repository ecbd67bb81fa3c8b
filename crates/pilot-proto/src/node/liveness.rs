//! Whether a peer answers, from what actually arrives: WireGuard's session age says nothing
//! about a peer whose daemon died a minute ago (a session lives for three minutes).
//!
//! Two signs, both from authenticated datagrams only:
//! - data we sent went unanswered: a live peer answers data within WireGuard's passive
//!   keepalive (10 s) or a handshake retry (5 s), so [`ANSWER_WITHIN`] of silence after our
//!   first unanswered packet means it is gone;
//! - with persistent keepalives, both sides send at least one datagram per interval even when
//!   idle, so silence for an interval plus [`ANSWER_WITHIN`] means the same.

use std::time::{Duration, Instant};

/// How long a live peer takes at most to answer data (passive keepalive, handshake retry,
/// round trips).
pub const ANSWER_WITHIN: Duration = Duration::from_secs(15);

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Liveness {
    /// When an authenticated datagram from the peer last arrived.
    last_heard: Option<Instant>,
    /// The first of the data we sent that nothing has answered yet.
    unanswered_since: Option<Instant>,
}

impl Liveness {
    /// An authenticated datagram (data, keepalive, handshake) arrived from the peer.
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = Some(now);
        self.unanswered_since = None;
    }

    /// We sent (or queued behind a handshake) data for the peer.
    pub fn sent_data(&mut self, now: Instant) {
        self.unanswered_since.get_or_insert(now);
    }

    pub fn last_heard(&self) -> Option<Instant> {
        self.last_heard
    }

    /// Whether the peer should be taken for gone at `now`, with `keepalive` the persistent
    /// keepalive interval both sides use (pilotd's default), if any.
    pub fn is_unreachable(&self, keepalive: Option<u16>, now: Instant) -> bool {
        let unanswered = self
            .unanswered_since
            .is_some_and(|t| now.saturating_duration_since(t) > ANSWER_WITHIN);
        let silent = match (keepalive, self.last_heard) {
            (Some(k), Some(heard)) if k > 0 => {
                now.saturating_duration_since(heard) > Duration::from_secs(k.into()) + ANSWER_WITHIN
            }
            _ => false,
        };
        unanswered || silent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_unanswered_for_long_enough_means_gone_and_an_answer_clears_it() {
        let t0 = Instant::now();
        let mut l = Liveness::default();
        assert!(
            !l.is_unreachable(None, t0),
            "idle and never heard: not known to be gone"
        );
        l.sent_data(t0);
        l.sent_data(t0 + Duration::from_secs(10));
        assert!(!l.is_unreachable(None, t0 + ANSWER_WITHIN));
        assert!(l.is_unreachable(None, t0 + ANSWER_WITHIN + Duration::from_millis(1)));
        l.heard(t0 + Duration::from_secs(20));
        assert!(!l.is_unreachable(None, t0 + Duration::from_secs(21)));
        assert_eq!(l.last_heard(), Some(t0 + Duration::from_secs(20)));
    }

    #[test]
    fn with_keepalives_silence_means_gone_even_when_idle() {
        let t0 = Instant::now();
        let mut l = Liveness::default();
        l.heard(t0);
        let limit = Duration::from_secs(25) + ANSWER_WITHIN;
        assert!(!l.is_unreachable(Some(25), t0 + limit));
        assert!(l.is_unreachable(Some(25), t0 + limit + Duration::from_millis(1)));
        // Without keepalives an idle peer is not suspected.
        assert!(!l.is_unreachable(None, t0 + Duration::from_secs(3600)));
    }
}
