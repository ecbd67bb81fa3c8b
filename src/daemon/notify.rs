//! Readiness and shutdown notices to systemd (`Type=notify` units), without libsystemd: the
//! service manager names a Unix datagram socket in `NOTIFY_SOCKET`, and each notice is one
//! datagram of `KEY=VALUE` lines (sd_notify(3)). Outside systemd the variable is unset and
//! every call does nothing, so daemons call these unconditionally.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The environment variable through which systemd names its notification socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Tells the service manager the daemon is ready (units that depend on it may start) and why.
pub fn ready(status: &str) {
    send_logged(&format!("READY=1\nSTATUS={}\n", one_line(status)));
}

/// Tells the service manager the daemon is shutting down of its own accord (a signal), so a
/// slow clean-up is not taken for a hang.
pub fn stopping(status: &str) {
    send_logged(&format!("STOPPING=1\nSTATUS={}\n", one_line(status)));
}

/// Sends `message` to the socket `NOTIFY_SOCKET` names. Returns false when there is none (not
/// started by systemd, or by a unit that is not `Type=notify`).
pub fn notify(message: &str) -> io::Result<bool> {
    let Some(target) = std::env::var_os(NOTIFY_SOCKET) else {
        return Ok(false);
    };
    let target = target
        .to_str()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "NOTIFY_SOCKET is not UTF-8"))?;
    send_to(target, message)?;
    Ok(true)
}

/// Sends `message` as one datagram to `target`: a socket path (`/run/systemd/notify`) or, with a
/// leading `@`, a name in Linux's abstract socket namespace.
pub fn send_to(target: &str, message: &str) -> io::Result<()> {
    let addr = parse_target(target)?;
    let socket = UnixDatagram::unbound()?;
    let sent = socket.send_to_addr(message.as_bytes(), &addr)?;
    if sent != message.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!(
                "{target}: notification cut short ({sent} of {} bytes)",
                message.len()
            ),
        ));
    }
    Ok(())
}

fn parse_target(target: &str) -> io::Result<SocketAddr> {
    if let Some(name) = target.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        return SocketAddr::from_abstract_name(name.as_bytes());
    }
    if target.starts_with('/') {
        return SocketAddr::from_pathname(target);
    }
    // systemd ≥ 254 may also name an AF_VSOCK address (VMs); no Pilot unit runs that way.
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        format!("NOTIFY_SOCKET `{target}`: only socket paths and @abstract names are supported"),
    ))
}

/// A notice that cannot be delivered is not a reason to stop: log it and carry on. (systemd
/// then reports the start as timed out, which is where an operator will look.)
fn send_logged(message: &str) {
    match notify(message) {
        Ok(true) => tracing::debug!(message = message.trim_end(), "notified the service manager"),
        Ok(false) => {}
        Err(e) => tracing::warn!("cannot notify the service manager: {e}"),
    }
}

/// `STATUS=` ends at the first newline; anything after it would be read as another key.
fn one_line(status: &str) -> String {
    status.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn receive(listener: &UnixDatagram) -> String {
        listener
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = listener.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn notice_arrives_at_a_socket_path_as_one_datagram() {
        let dir = tempdir();
        let path = dir.join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        send_to(path.to_str().unwrap(), "READY=1\nSTATUS=pilot0 up\n").unwrap();
        assert_eq!(receive(&listener), "READY=1\nSTATUS=pilot0 up\n");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn notice_arrives_at_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("pilot-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        send_to(&format!("@{name}"), "STOPPING=1\n").unwrap();
        assert_eq!(receive(&listener), "STOPPING=1\n");
    }

    #[test]
    fn unusable_targets_are_errors_not_panics() {
        assert_eq!(
            send_to("vsock:2:1234", "READY=1\n").unwrap_err().kind(),
            io::ErrorKind::Unsupported
        );
        let dir = tempdir();
        // Nobody listens there: the daemon logs it and runs on.
        assert!(send_to(dir.join("absent").to_str().unwrap(), "READY=1\n").is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn status_stays_on_one_line() {
        assert_eq!(one_line("a\nREADY=1"), "a READY=1");
    }

    fn tempdir() -> std::path::PathBuf {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pilot-notify-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
