//! The inbox: messages received from trusted peers, kept in `STATE_DIR/inbox` (0700) until
//! the operator clears them.
//!
//! One file per message (0600), written with [`write_atomic`] so a message exists whole,
//! synced to disk, before the sender is told it was stored. The file is named
//! `{ms:013}-{seq:06}.msg`; the stem is the message id, and ids sort by arrival: a new id
//! always sorts after every id already in the directory, even within one millisecond or
//! when the clock steps back. The file holds one line of JSON, then the raw payload:
//!
//! ```text
//! {"format":1,"id":"…","from":{…PeerRef…},"kind":"text","received_ms":…,"size":N,"sha256":"…"}\n
//! <N payload bytes>
//! ```
//!
//! A file whose header does not parse, whose id is not its name, or whose payload does not
//! match the size and SHA-256 is damaged: it is skipped with a warning and left in place for
//! the operator to inspect, never deleted.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::api::{PeerRef, StoredMessage};
use crate::io::file::write_atomic;
use crate::wire::message::{validate, MessageError, MessageKind, MAX_MESSAGE_BYTES};

/// Most messages the inbox holds before it refuses more.
pub const MAX_INBOX_MESSAGES: usize = 1000;
/// Most payload bytes the inbox holds before it refuses more.
pub const MAX_INBOX_BYTES: u64 = 64 * 1024 * 1024;

/// Why a message was not stored.
#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error(
        "the inbox is full ({messages} messages, {bytes} bytes; the limits are {max_messages} \
         messages and {max_bytes} bytes): its owner must run `pilotctl inbox --clear` to make room"
    )]
    Full {
        messages: usize,
        bytes: u64,
        max_messages: usize,
        max_bytes: u64,
    },
    /// The payload is not what its kind promises, or over the size limit.
    #[error(transparent)]
    Invalid(MessageError),
    #[error("writing the message to the inbox: {0}")]
    Io(#[from] io::Error),
}

/// How much the inbox holds before it refuses more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub messages: usize,
    pub bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            messages: MAX_INBOX_MESSAGES,
            bytes: MAX_INBOX_BYTES,
        }
    }
}

/// The messages in one inbox directory. Owns the directory: nothing else writes there.
#[derive(Debug)]
pub struct Inbox {
    dir: PathBuf,
    limits: Limits,
    /// Intact messages: id → payload size. Ids sort by arrival.
    messages: BTreeMap<String, usize>,
    bytes: u64,
    /// The greatest id handed out or seen on disk; the next one sorts after it.
    last: Option<MessageSeq>,
}

impl Inbox {
    /// Opens (creating, 0700) the inbox at `dir` with the default limits and counts the intact
    /// messages already there.
    pub fn open(dir: &Path) -> io::Result<Inbox> {
        Inbox::open_with_limits(dir, Limits::default())
    }

    pub fn open_with_limits(dir: &Path, limits: Limits) -> io::Result<Inbox> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        // Messages are private even if the directory was made by hand with a looser mode.
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        let mut inbox = Inbox {
            dir: dir.to_owned(),
            limits,
            messages: BTreeMap::new(),
            bytes: 0,
            last: None,
        };
        for entry in fs::read_dir(dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.ends_with(".msg.tmp") {
                // A write cut short by a crash: never acknowledged, so nobody is owed it.
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some(id) = name.strip_suffix(".msg") else {
                continue;
            };
            let Some(seq) = MessageSeq::parse(id) else {
                tracing::warn!("{}: not a message file name; ignored", path.display());
                continue;
            };
            // Damaged files count here too, so a new message never takes their name.
            inbox.last = inbox.last.max(Some(seq));
            match read_message(&path, id) {
                Ok(message) => {
                    inbox.bytes += message.size as u64;
                    inbox.messages.insert(id.to_owned(), message.size);
                }
                Err(why) => warn_damaged(&path, &why),
            }
        }
        Ok(inbox)
    }

    /// Stores a message durably (file and directory synced) and returns its id. Blocks on
    /// the disk: call it from `spawn_blocking`.
    pub fn store(
        &mut self,
        from: &PeerRef,
        kind: MessageKind,
        payload: &[u8],
        received_ms: u64,
    ) -> Result<String, InboxError> {
        validate(kind, payload).map_err(InboxError::Invalid)?;
        let size = payload.len();
        if self.messages.len() >= self.limits.messages
            || self.bytes + size as u64 > self.limits.bytes
        {
            return Err(InboxError::Full {
                messages: self.messages.len(),
                bytes: self.bytes,
                max_messages: self.limits.messages,
                max_bytes: self.limits.bytes,
            });
        }
        let seq = MessageSeq::after(self.last, received_ms);
        // Taken even if the write fails: a file may exist under it after a late failure.
        self.last = Some(seq);
        let id = seq.to_string();
        let header = FileHeader {
            format: FORMAT,
            id: id.clone(),
            from: from.clone(),
            kind,
            received_ms,
            size,
            sha256: sha256_hex(payload),
        };
        let mut bytes = serde_json::to_vec(&header).map_err(io::Error::other)?;
        bytes.push(b'\n');
        bytes.extend_from_slice(payload);
        write_atomic(&self.path(&id), &bytes, 0o600)?;
        self.messages.insert(id.clone(), size);
        self.bytes += size as u64;
        Ok(id)
    }

    /// The intact messages, oldest first. A file damaged since the inbox was opened is
    /// skipped with a warning.
    pub fn list(&self) -> Vec<StoredMessage> {
        self.messages
            .keys()
            .filter_map(|id| {
                let path = self.path(id);
                read_message(&path, id)
                    .map_err(|why| warn_damaged(&path, &why))
                    .ok()
            })
            .collect()
    }

    /// Removes the messages [`Inbox::list`] would show; returns how many. Damaged files
    /// stay on disk but leave the inbox's count.
    pub fn clear(&mut self) -> io::Result<usize> {
        let mut removed = 0;
        let ids: Vec<String> = self.messages.keys().cloned().collect();
        for id in ids {
            let path = self.path(&id);
            match read_message(&path, &id) {
                Ok(_) => match fs::remove_file(&path) {
                    Ok(()) => removed += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                },
                Err(why) => warn_damaged(&path, &why),
            }
            if let Some(size) = self.messages.remove(&id) {
                self.bytes -= size as u64;
            }
        }
        // Make the removals durable: a crash must not bring cleared messages back.
        fs::File::open(&self.dir)?.sync_all()?;
        Ok(removed)
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.msg"))
    }
}

const FORMAT: u32 = 1;
/// A message file larger than this is not one of ours: the header is a few hundred bytes.
const MAX_FILE_BYTES: u64 = MAX_MESSAGE_BYTES as u64 + 16 * 1024;
/// Ids have a 13-digit millisecond part (good until the year 2286).
const MAX_ID_MS: u64 = 9_999_999_999_999;
const MAX_ID_SEQ: u32 = 999_999;

/// The first line of a message file.
#[derive(Serialize, Deserialize)]
struct FileHeader {
    format: u32,
    id: String,
    from: PeerRef,
    kind: MessageKind,
    received_ms: u64,
    size: usize,
    sha256: String,
}

/// A message id: milliseconds, then a sequence number within them. Orders like its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct MessageSeq {
    ms: u64,
    seq: u32,
}

impl MessageSeq {
    /// The id for a message received at `ms`, sorting after `last`.
    fn after(last: Option<MessageSeq>, ms: u64) -> MessageSeq {
        let ms = ms.min(MAX_ID_MS);
        match last {
            Some(last) if last.ms >= ms && last.seq < MAX_ID_SEQ => MessageSeq {
                ms: last.ms,
                seq: last.seq + 1,
            },
            Some(last) if last.ms >= ms => MessageSeq {
                ms: last.ms + 1,
                seq: 0,
            },
            _ => MessageSeq { ms, seq: 0 },
        }
    }

    /// Parses exactly the text `to_string` makes, so each id names one file.
    fn parse(id: &str) -> Option<MessageSeq> {
        let (ms, seq) = id.split_once('-')?;
        let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms, 13) || !digits(seq, 6) {
            return None;
        }
        Some(MessageSeq {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for MessageSeq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:013}-{:06}", self.ms, self.seq)
    }
}

/// Reads and checks one message file; the error says what is wrong with it.
fn read_message(path: &Path, id: &str) -> Result<StoredMessage, String> {
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|f| f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read it: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err("too large to be a message file".to_owned());
    }
    let Some(newline) = bytes.iter().position(|&b| b == b'\n') else {
        return Err("no header line".to_owned());
    };
    let (header, payload) = (&bytes[..newline], &bytes[newline + 1..]);
    let header: FileHeader =
        serde_json::from_slice(header).map_err(|e| format!("header does not parse: {e}"))?;
    if header.format != FORMAT {
        return Err(format!("unknown format {}", header.format));
    }
    if header.id != id {
        return Err(format!("header names message {:?}", header.id));
    }
    if payload.len() != header.size {
        return Err(format!(
            "payload is {} bytes; the header says {}",
            payload.len(),
            header.size
        ));
    }
    if sha256_hex(payload) != header.sha256 {
        return Err("payload does not match its SHA-256".to_owned());
    }
    validate(header.kind, payload).map_err(|e| e.to_string())?;
    let (data, data_base64) = match header.kind {
        MessageKind::Text => {
            let text = String::from_utf8_lossy(payload).into_owned();
            (Some(serde_json::Value::String(text)), None)
        }
        MessageKind::Json => {
            let value = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
            (Some(value), None)
        }
        MessageKind::Binary => {
            let encoded = base64::engine::general_purpose::STANDARD.encode(payload);
            (None, Some(encoded))
        }
    };
    Ok(StoredMessage {
        id: header.id,
        from: header.from,
        kind: header.kind,
        received_ms: header.received_ms,
        size: header.size,
        data,
        data_base64,
    })
}

fn warn_damaged(path: &Path, why: &str) {
    tracing::warn!(
        "{}: damaged message file ({why}); skipped and left in place",
        path.display()
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    crate::hex::encode(&Sha256::digest(bytes))
}

#[cfg(test)]
pub(crate) mod tests;
