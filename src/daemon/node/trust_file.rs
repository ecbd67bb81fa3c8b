//! `trust.json` in the state directory: the node's trust book between runs (mode 0600,
//! replaced atomically). The node verifies every statement in it again when it loads it, so a
//! file edited by hand can lose entries but never grant trust.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::io::file::write_atomic;
use crate::node::TrustState;

pub const TRUST_FILE: &str = "trust.json";

#[derive(Debug, Clone)]
pub struct TrustFile {
    path: PathBuf,
}

impl TrustFile {
    pub fn new(state_dir: &Path) -> TrustFile {
        TrustFile {
            path: state_dir.join(TRUST_FILE),
        }
    }

    /// The saved state; empty when there is no file yet. A damaged file stops the start rather
    /// than being replaced: it may hold the only copy of approvals the operator gave.
    pub fn load(&self) -> anyhow::Result<TrustState> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(TrustState::default()),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.path.display())),
        };
        self.parse(&text)
    }

    /// The state a `trust.json`'s text holds.
    pub(crate) fn parse(&self, text: &str) -> anyhow::Result<TrustState> {
        let state: TrustState = serde_json::from_str(text).with_context(|| {
            format!(
                "{} is damaged; fix it or move it away (trust is then re-established with \
                 pilotctl handshake/approve)",
                self.path.display()
            )
        })?;
        if state.version != crate::node::TRUST_STATE_VERSION {
            bail!(
                "{}: unknown version {} (written by a newer pilotd?)",
                self.path.display(),
                state.version
            );
        }
        Ok(state)
    }

    pub fn save(&self, state: &TrustState) -> anyhow::Result<()> {
        let text = serde_json::to_string_pretty(state)? + "\n";
        write_atomic(&self.path, text.as_bytes(), 0o600)
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

/// Least time between two writes of `trust.json`: a flood of deliveries costs a few writes a
/// second, not one per batch (each rewrites the whole file and syncs it).
const MIN_SAVE_INTERVAL: Duration = Duration::from_millis(250);
/// Longest wait between two attempts while writing fails (disk full, read-only file system).
const MAX_SAVE_BACKOFF: Duration = Duration::from_secs(60);

/// When `trust.json` may be written next: no more often than [`MIN_SAVE_INTERVAL`], and while
/// writes fail, with a back-off doubling up to [`MAX_SAVE_BACKOFF`]. The caller logs the first
/// failure and the recovery only (not every retry); failures are counted.
#[derive(Debug)]
pub struct SaveSchedule {
    next: Instant,
    backoff: Duration,
    failures: u64,
    /// The last error while writes fail.
    failing: Option<String>,
}

impl SaveSchedule {
    pub fn new(now: Instant) -> SaveSchedule {
        SaveSchedule {
            next: now,
            backoff: MIN_SAVE_INTERVAL,
            failures: 0,
            failing: None,
        }
    }

    /// When the next write may happen.
    pub fn next(&self) -> Instant {
        self.next
    }

    /// Whether to write now. An `urgent` change (trust made or ended) does not wait for the
    /// spacing of writes, but does wait out the back-off while writes fail.
    pub fn due(&self, now: Instant, urgent: bool) -> bool {
        now >= self.next || (urgent && self.failing.is_none())
    }

    /// A write succeeded; returns how many attempts had failed before it, if any did.
    pub fn saved(&mut self, now: Instant) -> Option<u64> {
        self.next = now + MIN_SAVE_INTERVAL;
        self.backoff = MIN_SAVE_INTERVAL;
        self.failing.take().map(|_| self.failures)
    }

    /// A write failed with `error`; returns whether it is the first of a run of failures.
    pub fn failed(&mut self, error: String, now: Instant) -> bool {
        self.failures += 1;
        self.backoff = (self.backoff * 2).min(MAX_SAVE_BACKOFF);
        self.next = now + self.backoff;
        self.failing.replace(error).is_none()
    }

    /// Failed writes since start.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// The last error, while writes fail.
    pub fn failing(&self) -> Option<&str> {
        self.failing.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_spaced_and_failures_back_off_then_recover() {
        let t0 = Instant::now();
        let mut s = SaveSchedule::new(t0);
        assert!(s.due(t0, false));
        assert_eq!(s.saved(t0), None);
        let soon = t0 + Duration::from_millis(100);
        assert!(!s.due(soon, false), "at most 4 writes a second");
        assert!(
            s.due(soon, true),
            "but trust made or ended is written at once"
        );
        assert!(s.due(t0 + MIN_SAVE_INTERVAL, false));
        // Failing: the first is reported once, the waits double up to the cap.
        let mut now = t0 + MIN_SAVE_INTERVAL;
        assert!(s.failed("disk full".into(), now));
        let mut waits = Vec::new();
        for _ in 0..10 {
            waits.push(s.next() - now);
            now = s.next();
            assert!(!s.failed("disk full".into(), now), "logged once");
        }
        assert_eq!(waits[0], Duration::from_millis(500));
        assert_eq!(waits[1], Duration::from_secs(1));
        assert_eq!(*waits.last().unwrap(), MAX_SAVE_BACKOFF);
        assert_eq!(s.failing(), Some("disk full"));
        assert!(
            !s.due(now, true),
            "the back-off holds for urgent changes too"
        );
        assert_eq!(s.saved(now), Some(11));
        assert_eq!(s.failing(), None);
        assert_eq!(s.failures(), 11);
    }
}
