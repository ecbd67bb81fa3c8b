//! When `pilotctl daemon start` may say "started": the daemon answers on its control socket
//! and, when a rendezvous is configured, has registered with it. A daemon that exits before
//! that (a hostname another node holds, a port in use) is reported with its own error, read
//! from what it wrote to its log during this start, and `start` fails.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use crate::api::{self, ClientError, InfoReply, Request, StatusReply};

/// How long the control socket may take to answer.
const ANSWER_WAIT: Duration = Duration::from_secs(15);
/// How long registration may take once the socket answers: five of the node's 2 s retries.
const REGISTER_WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(50);
/// Lines of a log shown when the daemon left no error line of its own (it was killed).
const TAIL_LINES: usize = 5;

/// The daemon being started.
pub(super) enum Starting {
    /// `pilotd up` run by this process, writing to `log` from `offset` on.
    Spawned {
        child: Child,
        log: PathBuf,
        offset: u64,
    },
    /// Started by `systemctl start`.
    Systemd,
}

/// A daemon that is ready.
pub(super) struct Ready {
    pub info: InfoReply,
    pub registration: Registration,
}

pub(super) enum Registration {
    /// No rendezvous configured: static peers only.
    None,
    Registered {
        rendezvous: String,
    },
    /// Not yet, after [`REGISTER_WAIT`]: the rendezvous did not answer. The daemon keeps
    /// trying; nothing refused it.
    Pending {
        rendezvous: String,
        waited: Duration,
    },
}

/// Waits until the daemon is ready, or fails with why it is not.
pub(super) fn wait(socket: &Path, starting: &mut Starting) -> Result<Ready, String> {
    let started = Instant::now();
    let mut answered: Option<Instant> = None;
    loop {
        if let Starting::Spawned { child, log, offset } = starting {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(exited(status, log, *offset));
            }
        }
        match request::<StatusReply>(socket, Request::Status {}) {
            Ok(status) => {
                let since = *answered.get_or_insert_with(Instant::now);
                let registration = match status.rendezvous {
                    None => Some(Registration::None),
                    Some(rendezvous) if status.registered => {
                        Some(Registration::Registered { rendezvous })
                    }
                    Some(rendezvous) if since.elapsed() >= REGISTER_WAIT => {
                        Some(Registration::Pending {
                            rendezvous,
                            waited: since.elapsed(),
                        })
                    }
                    Some(_) => None,
                };
                if let Some(registration) = registration {
                    let info = request::<InfoReply>(socket, Request::Info {})
                        .map_err(|e| format!("asking pilotd who it is: {e}"))?;
                    return Ok(Ready { info, registration });
                }
            }
            // Under systemd there is no child to watch: a daemon that answered and then went
            // away has stopped.
            Err(ClientError::NotRunning { .. })
                if answered.is_some() && matches!(starting, Starting::Systemd) =>
            {
                return Err(
                    "pilotd stopped during start-up; its reason is in `journalctl -u pilotd`"
                        .into(),
                );
            }
            Err(e)
                if started.elapsed() >= ANSWER_WAIT + REGISTER_WAIT
                    || (answered.is_none() && started.elapsed() >= ANSWER_WAIT) =>
            {
                return Err(format!(
                    "pilotd did not answer within {}s: {e}",
                    started.elapsed().as_secs()
                ));
            }
            Err(_) => {}
        }
        std::thread::sleep(POLL);
    }
}

fn request<T: serde::de::DeserializeOwned>(
    socket: &Path,
    request: Request,
) -> Result<T, ClientError> {
    let value = api::request(socket, &request, Duration::from_secs(5))?;
    serde_json::from_value(value).map_err(|e| ClientError::Protocol(e.to_string()))
}

/// `pilotd exited during start-up (exit status: 1): REASON`, the reason being the daemon's
/// own error line from what it wrote to `log` after `offset`.
fn exited(status: ExitStatus, log: &Path, offset: u64) -> String {
    let text = fs::read(log).unwrap_or_default();
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(text.len());
    let written = String::from_utf8_lossy(&text[start..]);
    format!(
        "pilotd exited during start-up ({status}): {}\n(its log: {})",
        reason(&written),
        log.display()
    )
}

/// The daemon's error: from its last `pilotd: ` line (what it prints before exiting with an
/// error) to the end; else the last lines it wrote; else that it wrote nothing.
fn reason(written: &str) -> String {
    let lines: Vec<&str> = written.lines().collect();
    if let Some(at) = lines.iter().rposition(|l| l.starts_with("pilotd: ")) {
        let first = lines[at].trim_start_matches("pilotd: ");
        return std::iter::once(first)
            .chain(lines[at + 1..].iter().copied())
            .collect::<Vec<_>>()
            .join("\n");
    }
    let tail = &lines[lines.len().saturating_sub(TAIL_LINES)..];
    if tail.is_empty() {
        "it wrote nothing to its log".into()
    } else {
        format!("its last words:\n{}", tail.join("\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_is_the_daemons_own_error_line() {
        let log = "2026-01-01T00:00:00Z  INFO pilot::daemon: pilotd up address=fd70::1\n\
                   pilotd: hostname `taken` is already registered by another node\n";
        assert_eq!(
            reason(log),
            "hostname `taken` is already registered by another node"
        );
        // Killed, say: no error line of its own, so the last lines it wrote.
        let log: String = (1..=7).map(|i| format!("line {i}\n")).collect();
        assert_eq!(
            reason(&log),
            "its last words:\nline 3\nline 4\nline 5\nline 6\nline 7"
        );
        assert_eq!(reason(""), "it wrote nothing to its log");
    }

    #[test]
    fn only_what_this_start_wrote_is_read() {
        let dir = std::env::temp_dir().join(format!("pilot-readiness-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let log = dir.join("pilotd.log");
        let earlier = "pilotd: an error of an earlier start\n";
        fs::write(&log, format!("{earlier}pilotd: UDP port 51870 is in use\n")).unwrap();
        let status = std::process::Command::new("false").status().unwrap();
        let text = exited(status, &log, earlier.len() as u64);
        assert_eq!(
            text,
            format!(
                "pilotd exited during start-up (exit status: 1): UDP port 51870 is in use\n\
                 (its log: {})",
                log.display()
            )
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
