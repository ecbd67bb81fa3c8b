//! The message service's framing: typed messages sent to a trusted peer on overlay TCP port
//! [`MESSAGE_PORT`], each acknowledged once the receiver has stored it durably.
//!
//! A connection carries requests in turn; each gets exactly one response before the next
//! request is read. All integers are big-endian.
//!
//! ```text
//! request                               response
//! 0..4   magic    "PMSG"                0..4   magic    "PACK"
//! 4      version  u8 (1)                4      version  u8 (1)
//! 5      kind     u8 1 text,            5      status   u8 (see Status)
//!                    2 json, 3 binary   6..8   length   u16
//! 6..10  length   u32                   8..    detail   UTF-8: the message id when stored,
//! 10..   payload  `length` bytes                          otherwise a sentence for a human
//! ```
//!
//! The header is checked before any of the payload is read: a declared length over
//! [`MAX_MESSAGE_BYTES`] is refused without reading or allocating it. Framing errors leave
//! the stream unusable, so the receiver answers and closes; a payload that is merely invalid
//! for its kind (text not UTF-8, JSON that does not parse) is answered and the connection
//! stays open.

use std::fmt;
use std::io;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The overlay TCP port the message service listens on. Above 1024: a kernel-mode pilotd
/// holds CAP_NET_ADMIN only, not CAP_NET_BIND_SERVICE. No other program can serve it in
/// pilotd's place: the fd70 address exists only while pilotd runs, and one that binds it
/// first (IPV6_FREEBIND) makes pilotd's start fail loudly rather than intercept messages.
pub const MESSAGE_PORT: u16 = 7001;
/// The largest payload one message may carry.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// The framing version this node speaks.
pub const VERSION: u8 = 1;

const REQUEST_MAGIC: &[u8; 4] = b"PMSG";
const RESPONSE_MAGIC: &[u8; 4] = b"PACK";
/// Bytes of a request's header, and of a response's.
pub const REQUEST_HEADER_LEN: usize = 10;
pub const RESPONSE_HEADER_LEN: usize = 8;

/// What a message's payload is, which decides how it is validated and shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    /// UTF-8 text.
    Text,
    /// A JSON document (any value).
    Json,
    /// Arbitrary bytes.
    Binary,
}

/// The receiver's answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Status {
    Stored = 0,
    TooLarge = 1,
    Malformed = 2,
    InboxFull = 3,
    StoreFailed = 4,
    NotTrusted = 5,
}

/// A decoded response: the status and its detail (the message id when stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: Status,
    pub detail: String,
}

/// Why a message could not be read, written or accepted.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    /// The payload (declared or actual) is over [`MAX_MESSAGE_BYTES`].
    #[error("message is {size} bytes; the limit is {MAX_MESSAGE_BYTES}")]
    TooLarge { size: usize },
    /// The bytes are not this framing; the stream cannot be resynchronised.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// The stream ended part-way; the text says where.
    #[error("the connection closed {0}")]
    Closed(&'static str),
    /// A text message that is not UTF-8.
    #[error("text message is not valid UTF-8: {0}")]
    InvalidText(std::str::Utf8Error),
    /// A JSON message that does not parse; the text carries serde's line and column.
    #[error("JSON message does not parse: {0}")]
    InvalidJson(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Why [`send`] did not get a message stored.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Refused locally; nothing was sent.
    #[error("{0}")]
    Invalid(MessageError),
    /// The exchange itself failed: connection lost, or an answer that is not this protocol.
    #[error("message exchange failed: {0}")]
    Exchange(MessageError),
    /// The receiver answered with something other than [`Status::Stored`].
    #[error("refused by the receiver: {status} ({detail})")]
    Refused { status: Status, detail: String },
}

/// Checks `payload` against the size limit and what `kind` promises.
pub fn validate(kind: MessageKind, payload: &[u8]) -> Result<(), MessageError> {
    if payload.len() > MAX_MESSAGE_BYTES {
        return Err(MessageError::TooLarge {
            size: payload.len(),
        });
    }
    match kind {
        MessageKind::Text => std::str::from_utf8(payload)
            .map(drop)
            .map_err(MessageError::InvalidText),
        MessageKind::Json => serde_json::from_slice::<serde::de::IgnoredAny>(payload)
            .map(drop)
            .map_err(|e| MessageError::InvalidJson(e.to_string())),
        MessageKind::Binary => Ok(()),
    }
}

/// One request on the wire: header and payload, in one buffer (one write: a separate small
/// header write can sit behind Nagle and delayed ACKs). Refuses a payload over
/// [`MAX_MESSAGE_BYTES`].
pub fn encode_request(kind: MessageKind, payload: &[u8]) -> Result<Vec<u8>, MessageError> {
    if payload.len() > MAX_MESSAGE_BYTES {
        return Err(MessageError::TooLarge {
            size: payload.len(),
        });
    }
    let mut frame = Vec::with_capacity(REQUEST_HEADER_LEN + payload.len());
    frame.extend_from_slice(REQUEST_MAGIC);
    frame.extend_from_slice(&[VERSION, kind.code()]);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    Ok(frame)
}

/// A request's header: the kind and the payload's length, checked before any of the payload
/// is read (a length over [`MAX_MESSAGE_BYTES`] is refused without allocating it).
pub fn parse_request_header(
    header: &[u8; REQUEST_HEADER_LEN],
) -> Result<(MessageKind, usize), MessageError> {
    let [m0, m1, m2, m3, version, kind, l0, l1, l2, l3] = *header;
    if [m0, m1, m2, m3] != *REQUEST_MAGIC {
        return Err(MessageError::Malformed(
            "not a Pilot message request (bad magic)".to_owned(),
        ));
    }
    check_version(version)?;
    let kind = MessageKind::from_code(kind)
        .ok_or_else(|| MessageError::Malformed(format!("unknown message type {kind}")))?;
    // u32 always fits usize on the platforms Pilot runs on; saturate rather than assume.
    let size = usize::try_from(u32::from_be_bytes([l0, l1, l2, l3])).unwrap_or(usize::MAX);
    if size > MAX_MESSAGE_BYTES {
        return Err(MessageError::TooLarge { size });
    }
    Ok((kind, size))
}

/// One response on the wire. A detail longer than a u16 can say is cut at a character
/// boundary.
pub fn encode_response(status: Status, detail: &str) -> Vec<u8> {
    let mut end = detail.len().min(usize::from(u16::MAX));
    while !detail.is_char_boundary(end) {
        end -= 1;
    }
    let detail = &detail.as_bytes()[..end];
    let mut frame = Vec::with_capacity(RESPONSE_HEADER_LEN + detail.len());
    frame.extend_from_slice(RESPONSE_MAGIC);
    frame.extend_from_slice(&[VERSION, status as u8]);
    frame.extend_from_slice(&(detail.len() as u16).to_be_bytes());
    frame.extend_from_slice(detail);
    frame
}

/// A response's header: the status and the detail's length (at most 64 KiB: the u16 bounds
/// the allocation).
pub fn parse_response_header(
    header: &[u8; RESPONSE_HEADER_LEN],
) -> Result<(Status, usize), MessageError> {
    let [m0, m1, m2, m3, version, status, l0, l1] = *header;
    if [m0, m1, m2, m3] != *RESPONSE_MAGIC {
        return Err(MessageError::Malformed(
            "not a Pilot message response (bad magic)".to_owned(),
        ));
    }
    check_version(version)?;
    let status = Status::from_code(status)
        .ok_or_else(|| MessageError::Malformed(format!("unknown response status {status}")))?;
    Ok((status, usize::from(u16::from_be_bytes([l0, l1]))))
}

impl MessageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Text => "text",
            MessageKind::Json => "json",
            MessageKind::Binary => "binary",
        }
    }

    /// The kind's byte on the wire.
    pub fn code(self) -> u8 {
        match self {
            MessageKind::Text => 1,
            MessageKind::Json => 2,
            MessageKind::Binary => 3,
        }
    }

    pub fn from_code(code: u8) -> Option<MessageKind> {
        match code {
            1 => Some(MessageKind::Text),
            2 => Some(MessageKind::Json),
            3 => Some(MessageKind::Binary),
            _ => None,
        }
    }
}

impl fmt::Display for MessageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message type name that is none of `text`, `json`, `binary`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown message type {0:?}: use text, json or binary")]
pub struct UnknownKind(pub String);

impl FromStr for MessageKind {
    type Err = UnknownKind;

    fn from_str(s: &str) -> Result<MessageKind, UnknownKind> {
        match s {
            "text" => Ok(MessageKind::Text),
            "json" => Ok(MessageKind::Json),
            "binary" => Ok(MessageKind::Binary),
            other => Err(UnknownKind(other.to_owned())),
        }
    }
}

impl Status {
    pub fn from_code(code: u8) -> Option<Status> {
        match code {
            0 => Some(Status::Stored),
            1 => Some(Status::TooLarge),
            2 => Some(Status::Malformed),
            3 => Some(Status::InboxFull),
            4 => Some(Status::StoreFailed),
            5 => Some(Status::NotTrusted),
            _ => None,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Stored => "stored",
            Status::TooLarge => "message too large",
            Status::Malformed => "malformed message",
            Status::InboxFull => "inbox full",
            Status::StoreFailed => "store failed",
            Status::NotTrusted => "not trusted",
        })
    }
}

fn check_version(version: u8) -> Result<(), MessageError> {
    if version == VERSION {
        return Ok(());
    }
    Err(MessageError::Malformed(format!(
        "unsupported message protocol version {version} (this node speaks {VERSION})"
    )))
}
