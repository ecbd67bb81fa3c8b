//! The message service's framing over a stream (see `wire::message` for the format and its
//! codec): what the daemon's receiver and `pilotctl send-message` read and write.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

pub use crate::wire::message::*;

/// Sends one message over `stream` and waits for the receiver's answer; returns the id it
/// was stored under. The message is validated first, so an invalid one is never sent.
pub async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    kind: MessageKind,
    payload: &[u8],
) -> Result<String, SendError> {
    validate(kind, payload).map_err(SendError::Invalid)?;
    write_request(stream, kind, payload)
        .await
        .map_err(SendError::Exchange)?;
    let response = read_response(stream).await.map_err(SendError::Exchange)?;
    match response.status {
        Status::Stored => Ok(response.detail),
        status => Err(SendError::Refused {
            status,
            detail: response.detail,
        }),
    }
}

/// Reads one request. `Ok(None)` when the stream ends cleanly before a request starts.
/// Only the framing is checked here; [`validate`] checks the payload against its kind.
pub async fn read_request<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<(MessageKind, Vec<u8>)>, MessageError> {
    let mut header = [0u8; REQUEST_HEADER_LEN];
    if !read_first(r, &mut header, "in the middle of a request header").await? {
        return Ok(None);
    }
    let (kind, size) = parse_request_header(&header)?;
    let mut payload = vec![0u8; size];
    read_all(r, &mut payload, "in the middle of a request body").await?;
    Ok(Some((kind, payload)))
}

/// Writes one request and flushes it. Refuses a payload over [`MAX_MESSAGE_BYTES`].
pub async fn write_request<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: MessageKind,
    payload: &[u8],
) -> Result<(), MessageError> {
    let frame = encode_request(kind, payload)?;
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one response. A stream that ends before or inside it is an error.
pub async fn read_response<R: AsyncRead + Unpin>(r: &mut R) -> Result<Response, MessageError> {
    let mut header = [0u8; RESPONSE_HEADER_LEN];
    if !read_first(r, &mut header, "in the middle of a response").await? {
        return Err(MessageError::Closed("before the receiver answered"));
    }
    let (status, len) = parse_response_header(&header)?;
    let mut detail = vec![0u8; len];
    read_all(r, &mut detail, "in the middle of a response").await?;
    let detail = String::from_utf8(detail)
        .map_err(|_| MessageError::Malformed("response detail is not UTF-8".to_owned()))?;
    Ok(Response { status, detail })
}

/// Writes one response and flushes it. A detail longer than a u16 can say is cut at a
/// character boundary.
pub async fn write_response<W: AsyncWrite + Unpin>(
    w: &mut W,
    status: Status,
    detail: &str,
) -> io::Result<()> {
    w.write_all(&encode_response(status, detail)).await?;
    w.flush().await
}

/// Fills `buf`, or returns `Ok(false)` if the stream ends before its first byte. An end
/// after the first byte is [`MessageError::Closed`] with `where_`.
async fn read_first<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    where_: &'static str,
) -> Result<bool, MessageError> {
    let first = loop {
        match r.read(buf).await {
            Ok(n) => break n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if first == 0 {
        return Ok(false);
    }
    read_all(r, &mut buf[first..], where_).await?;
    Ok(true)
}

async fn read_all<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    where_: &'static str,
) -> Result<(), MessageError> {
    match r.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(MessageError::Closed(where_)),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests;
