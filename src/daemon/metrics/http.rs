//! The metrics endpoint: just enough HTTP/1.1 on a tokio listener to answer `GET /metrics`.
//!
//! Up to [`MAX_CONNECTIONS`] connections are answered at once, one request per connection
//! (`Connection: close`); beyond that, connections wait in the kernel's accept queue until one
//! ends. A request head larger than [`MAX_REQUEST`] is answered `431` and the connection
//! closed; a connection that has not sent a whole head and read its answer within the timeout
//! is closed. So a client that connects and says nothing holds one slot for at most the
//! timeout, and never delays a scrape while a slot is free. The page comes
//! from a `scrape` function (a snapshot asked of the daemon's loop and rendered here), called
//! only for `GET`/`HEAD /metrics`, so nothing a client sends reaches the data plane.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::exposition::CONTENT_TYPE;

/// Longest request head (request line and headers) read; Prometheus sends a few hundred bytes.
pub const MAX_REQUEST: usize = 8 * 1024;
/// How long one connection may take, from accept to the last byte of the answer.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections answered at once (Prometheus keeps one at a time per target).
pub const MAX_CONNECTIONS: usize = 16;

/// The listening metrics endpoint.
pub struct MetricsListener {
    listener: TcpListener,
    addr: SocketAddr,
    timeout: Duration,
}

impl MetricsListener {
    /// Listens on `addr` (port 0: any free port). Failing to is a start-up error naming it.
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<MetricsListener> {
        let listener = TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen for --metrics on {addr} (is another process using it? choose another address)")
        })?;
        let addr = listener
            .local_addr()
            .with_context(|| format!("--metrics {addr}"))?;
        Ok(MetricsListener {
            listener,
            addr,
            timeout: CONNECTION_TIMEOUT,
        })
    }

    /// The address it listens on (with the port chosen when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answers connections, up to [`MAX_CONNECTIONS`] at once, forever (dropping the future
    /// ends those in progress too). `scrape` makes the page, or `None` when the daemon's loop
    /// is gone (answered `503`).
    pub async fn serve<F, Fut>(self, scrape: F)
    where
        F: Fn() -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Option<String>> + Send,
    {
        let mut connections = JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            if connections.len() >= MAX_CONNECTIONS {
                // Each ends within the timeout.
                connections.join_next().await;
                continue;
            }
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: wait rather than spin.
                    tracing::warn!("metrics endpoint: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let (scrape, timeout) = (scrape.clone(), self.timeout);
            connections.spawn(async move {
                match tokio::time::timeout(timeout, answer(stream, scrape)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::debug!("metrics endpoint: {e}"),
                    Err(_) => tracing::debug!("metrics endpoint: connection timed out"),
                }
            });
        }
    }
}

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// `GET /metrics`, or `HEAD /metrics` (`head_only`).
    Metrics {
        head_only: bool,
    },
    NotFound,
    BadRequest,
}

/// Reads one request head, answers it, and closes. Any byte stream: the fuzz target
/// (`crate::fuzzing`) drives it with scripted input.
pub(crate) async fn answer<S, F, Fut>(mut stream: S, scrape: F) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: Fn() -> Fut,
    Fut: Future<Output = Option<String>>,
{
    let mut buf = [0u8; MAX_REQUEST];
    let mut len = 0;
    let head = loop {
        if let Some(end) = head_end(&buf[..len]) {
            break &buf[..end];
        }
        if len == buf.len() {
            let response = response(431, "Request Header Fields Too Large", "", "", false);
            stream.write_all(&response).await?;
            return stream.shutdown().await;
        }
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            // Closed before a whole request: nothing to answer.
            return Ok(());
        }
        len += n;
    };
    let response = match route(head) {
        Route::Metrics { head_only } => match scrape().await {
            Some(page) => response(200, "OK", CONTENT_TYPE, &page, head_only),
            None => response(503, "Service Unavailable", "", "", head_only),
        },
        Route::NotFound => response(404, "Not Found", "", "", false),
        Route::BadRequest => response(400, "Bad Request", "", "", false),
    };
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// Where the request head ends (after its blank line), if it has.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Reads the request line: `METHOD SP TARGET SP HTTP/x.y`.
fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::BadRequest;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if method.is_empty() || !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    // Prometheus may add a query string; it selects nothing here.
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    match (method, path) {
        ("GET", "/metrics") => Route::Metrics { head_only: false },
        ("HEAD", "/metrics") => Route::Metrics { head_only: true },
        _ => Route::NotFound,
    }
}

fn response(status: u16, reason: &str, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut text = format!("HTTP/1.1 {status} {reason}\r\n");
    if !content_type.is_empty() {
        text.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    text.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    if !head_only {
        text.push_str(body);
    }
    text.into_bytes()
}

#[cfg(test)]
mod tests;
