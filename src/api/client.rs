//! The client side of the control socket: where it is, one request and its answer, and what
//! can go wrong on the way.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Request, Response};

/// Where the control socket lives when `--control`/`PILOT_CONTROL` do not say:
/// `/run/pilot/pilotd.sock` for root, `$XDG_RUNTIME_DIR/pilot/pilotd.sock` otherwise.
pub fn default_socket_path() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/pilot/pilotd.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("pilot/pilotd.sock"),
        _ => crate::identity::default_state_dir().join("pilotd.sock"),
    }
}

/// Client side, for `pilotctl`: sends one request and waits for its answer.
pub fn request(
    path: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<serde_json::Value, ClientError> {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path).map_err(|source| {
        // EACCES: the socket (or its directory) is another user's. The daemon runs.
        if source.kind() == io::ErrorKind::PermissionDenied {
            return ClientError::PermissionDenied {
                path: path.to_owned(),
                owner: owner_of(path),
            };
        }
        ClientError::NotRunning {
            path: path.to_owned(),
            source,
        }
    })?;
    stream
        .set_read_timeout(Some(timeout))
        .map_err(ClientError::Io)?;
    let mut text = serde_json::to_string(request).expect("request serializes");
    text.push('\n');
    stream.write_all(text.as_bytes()).map_err(ClientError::Io)?;
    let mut line = String::new();
    std::io::BufReader::new(stream)
        .read_line(&mut line)
        .map_err(ClientError::Io)?;
    let response: Response =
        serde_json::from_str(&line).map_err(|e| ClientError::Protocol(format!("{e}: {line:?}")))?;
    match (response.ok, response.result, response.error) {
        (true, Some(result), _) => Ok(result),
        (_, _, Some(error)) => Err(ClientError::Daemon(error)),
        _ => Err(ClientError::Protocol(line)),
    }
}

/// Who owns the control socket, or the nearest directory above it this user can see: the user
/// the daemon runs as. `None` when even that cannot be found out.
fn owner_of(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let uid = path
        .ancestors()
        .find_map(|p| std::fs::metadata(p).ok())?
        .uid();
    let user = nix::unistd::User::from_uid(uid.into()).ok().flatten();
    Some(user.map_or_else(|| format!("uid {uid}"), |u| u.name))
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("pilotd is not running (cannot connect to {}: {source}); start it with `sudo pilotd up`", .path.display())]
    NotRunning { path: PathBuf, source: io::Error },
    /// The daemon runs, as another user, and its socket is that user's alone (mode 0600).
    #[error(
        "permission denied on the control socket {}: pilotd runs as {}, and only that user may \
         use it; run pilotctl with sudo",
        .path.display(),
        .owner.as_deref().unwrap_or("another user")
    )]
    PermissionDenied {
        path: PathBuf,
        owner: Option<String>,
    },
    #[error("{0}")]
    Daemon(String),
    #[error("control socket: {0}")]
    Io(#[source] io::Error),
    #[error("unexpected answer from pilotd: {0}")]
    Protocol(String),
}
