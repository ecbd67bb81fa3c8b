//! A block of `/etc/hosts` that pilotd owns, rewritten without disturbing the rest of the file:
//!
//! ```text
//! # BEGIN pilot (managed by pilotd; do not edit)
//! fd70::a1b2:c3d4:e5f6 bob.pilot
//! # END pilot
//! ```
//!
//! Everything outside the block is kept byte for byte, including a missing final newline: when
//! the block has to be appended to such a file it is written as `\n` + the block without its
//! own final newline, so removing it gives back exactly the original bytes.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::net::Ipv6Addr;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::addr::{Hostname, NAME_ZONE};

/// The first line of the block. Any line starting with [`BEGIN_MARKER`] opens a block, so a
/// future rewording of the parenthesis still finds blocks written by this version.
const BEGIN_LINE: &str = "# BEGIN pilot (managed by pilotd; do not edit)";
const BEGIN_MARKER: &[u8] = b"# BEGIN pilot";
const END_LINE: &str = "# END pilot";
/// The mode of a hosts file this module creates: world-readable, as every resolver needs.
const DEFAULT_MODE: u32 = 0o644;

/// A hosts file with (possibly) a pilot block in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsFile {
    path: PathBuf,
}

impl HostsFile {
    pub fn new(path: impl Into<PathBuf>) -> HostsFile {
        HostsFile { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the block list exactly `entries` (as `ADDR NAME.pilot`, sorted, duplicates
    /// dropped), replacing the block where it is or appending one; an empty list removes it.
    /// Creates the file (mode 0644) if it is missing. Does not touch the file when nothing
    /// changes.
    pub fn write(&self, entries: &[(Hostname, Ipv6Addr)]) -> io::Result<()> {
        self.update(render(entries).as_deref())
    }

    /// Takes the block out. A missing file stays missing.
    pub fn remove(&self) -> io::Result<()> {
        self.update(None)
    }

    fn update(&self, block: Option<&[u8]>) -> io::Result<()> {
        let path = self.target()?;
        let (content, metadata) = match File::open(&path) {
            Ok(mut file) => {
                let metadata = file.metadata().map_err(|e| context(e, "reading", &path))?;
                let mut content = Vec::new();
                file.read_to_end(&mut content)
                    .map_err(|e| context(e, "reading", &path))?;
                (content, Some(metadata))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound && block.is_none() => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (Vec::new(), None),
            Err(e) => return Err(context(e, "reading", &path)),
        };
        let updated = splice(&content, block).map_err(|line| unterminated(&path, line))?;
        if metadata.is_some() && updated == content {
            return Ok(());
        }
        replace(&path, &updated, metadata.as_ref())
    }

    /// The file to rewrite: a symlink's target, so that renaming over it keeps the link (as
    /// some distributions manage `/etc/hosts`) instead of replacing it with a plain file.
    fn target(&self) -> io::Result<PathBuf> {
        match fs::symlink_metadata(&self.path) {
            Ok(m) if m.file_type().is_symlink() => fs::canonicalize(&self.path)
                .map_err(|e| context(e, "following the symlink", &self.path)),
            _ => Ok(self.path.clone()),
        }
    }
}

/// Where a block sits in the file: `start..end` covers its lines including the END line's
/// newline, if it has one (`open_end` when it does not: the block ends the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: usize,
    end: usize,
    open_end: bool,
}

/// The block's bytes for `entries`, each line ending in `\n`; `None` for no entries.
pub(crate) fn render(entries: &[(Hostname, Ipv6Addr)]) -> Option<Vec<u8>> {
    if entries.is_empty() {
        return None;
    }
    let mut lines: Vec<(&Hostname, Ipv6Addr)> = entries.iter().map(|(h, a)| (h, *a)).collect();
    lines.sort();
    lines.dedup();
    let mut out = format!("{BEGIN_LINE}\n");
    for (name, addr) in lines {
        out.push_str(&format!("{addr} {name}.{NAME_ZONE}\n"));
    }
    out.push_str(END_LINE);
    out.push('\n');
    Some(out.into_bytes())
}

/// `content` with its blocks replaced by `block` (at the first block's place, or appended), or
/// removed when `block` is `None`. Fails with the line number of a BEGIN that has no END:
/// guessing where such a block ends could delete the user's own lines.
pub(crate) fn splice(content: &[u8], block: Option<&[u8]>) -> Result<Vec<u8>, usize> {
    let spans = find_blocks(content)?;
    let mut out = Vec::with_capacity(content.len() + block.map_or(0, <[u8]>::len) + 1);
    fn without_final_newline(b: &[u8]) -> &[u8] {
        b.strip_suffix(b"\n").unwrap_or(b)
    }
    let Some(first) = spans.first() else {
        out.extend_from_slice(content);
        match block {
            Some(b) if content.is_empty() || content.ends_with(b"\n") => out.extend_from_slice(b),
            Some(b) => {
                out.push(b'\n');
                out.extend_from_slice(without_final_newline(b));
            }
            None => {}
        }
        return Ok(out);
    };
    let mut at = 0;
    for span in &spans {
        out.extend_from_slice(&content[at..span.start]);
        at = span.end;
        match block {
            Some(b) if span == first => {
                if span.open_end {
                    out.extend_from_slice(without_final_newline(b));
                } else {
                    out.extend_from_slice(b);
                }
            }
            // A block that ended the file without a newline took the newline before it from a
            // file that had none (see the module docs): give it back.
            _ if span.open_end && out.ends_with(b"\n") => {
                out.pop();
            }
            _ => {}
        }
    }
    out.extend_from_slice(&content[at..]);
    Ok(out)
}

/// Every block in `content`, in order, or the 1-based line of a BEGIN without an END. A second
/// BEGIN inside a block is part of that block; an END outside one is left alone.
fn find_blocks(content: &[u8]) -> Result<Vec<Span>, usize> {
    let mut spans = Vec::new();
    let mut open: Option<(usize, usize)> = None;
    let mut offset = 0;
    for (index, line) in content.split_inclusive(|&b| b == b'\n').enumerate() {
        let start = offset;
        offset += line.len();
        let text = line.trim_ascii();
        match open {
            None if is_begin(text) => open = Some((start, index + 1)),
            Some((begin, _)) if text == END_LINE.as_bytes() => {
                spans.push(Span {
                    start: begin,
                    end: offset,
                    open_end: !line.ends_with(b"\n"),
                });
                open = None;
            }
            _ => {}
        }
    }
    match open {
        Some((_, line)) => Err(line),
        None => Ok(spans),
    }
}

fn is_begin(text: &[u8]) -> bool {
    text.strip_prefix(BEGIN_MARKER)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(b" "))
}

/// Replaces `path` with `contents` atomically: a temporary file in the same directory with the
/// original's mode and owner, synced, renamed over the original, then the directory synced so
/// the rename itself survives a crash. Readers see the old file or the new one, never a mix.
fn replace(path: &Path, contents: &[u8], original: Option<&fs::Metadata>) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} does not name a file", path.display()),
        )
    })?;
    let tmp = dir.join(format!(
        ".{}.pilotd-{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    // Left behind by a run that died mid-write with this same pid: it is ours.
    let _ = fs::remove_file(&tmp);
    if let Err(e) = write_new(&tmp, contents, original) {
        let _ = fs::remove_file(&tmp);
        return Err(context(e, "writing", &tmp));
    }
    match fs::rename(&tmp, path) {
        Ok(()) => File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| context(e, "syncing directory", dir)),
        // The file is a mount point of its own: `ip netns exec` bind-mounts
        // /etc/netns/NAME/hosts over /etc/hosts, and container runtimes do the same. Nothing
        // can be renamed over a mount point (EBUSY, or EXDEV across file systems), so the
        // only way to change what the namespace sees is to rewrite the mounted file itself.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY | libc::EXDEV)) => {
            let _ = fs::remove_file(&tmp);
            rewrite_in_place(path, contents).map_err(|e| context(e, "rewriting in place", path))
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(context(e, "replacing", path))
        }
    }
}

/// Creates `tmp` with `contents`, the original's mode (0644 for a new file) and owner, synced.
fn write_new(tmp: &Path, contents: &[u8], original: Option<&fs::Metadata>) -> io::Result<()> {
    let mode = original.map_or(DEFAULT_MODE, |m| m.mode() & 0o7777);
    // create_new: never follow or reuse something already at the temporary name.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)?;
    if let Some(m) = original {
        let own = file.metadata()?;
        if (own.uid(), own.gid()) != (m.uid(), m.gid()) {
            std::os::unix::fs::fchown(&file, Some(m.uid()), Some(m.gid()))?;
        }
    }
    // Explicitly, since the umask applies to the mode given at creation.
    file.set_permissions(Permissions::from_mode(mode))?;
    file.write_all(contents)?;
    file.sync_all()
}

/// Overwrites `path` from the start and then cuts it to length, rather than truncating first:
/// if the daemon dies in between, the file holds the new lines plus a stale tail instead of
/// nothing at all (an empty hosts file loses `localhost`). Not atomic: a reader at that moment
/// can see the mix, which is why this is only the fallback for files that cannot be renamed.
fn rewrite_in_place(path: &Path, contents: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).open(path)?;
    file.write_all(contents)?;
    file.set_len(contents.len() as u64)?;
    file.sync_all()
}

/// `e` with what was being done to which file, and what to do about the common causes.
fn context(e: io::Error, doing: &str, path: &Path) -> io::Error {
    let hint = match e.kind() {
        io::ErrorKind::PermissionDenied => {
            " — run pilotd as root, or turn off managing the hosts file"
        }
        io::ErrorKind::ReadOnlyFilesystem => {
            " — the file is on a read-only file system; turn off managing the hosts file and \
             point the resolver at the DNS stub instead"
        }
        _ => "",
    };
    io::Error::new(e.kind(), format!("{doing} {}: {e}{hint}", path.display()))
}

fn unterminated(path: &Path, line: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{}: line {line} opens a `{}` block with no `{END_LINE}` line after it, so pilotd \
             cannot tell where its block ends and leaves the file alone; remove the block's \
             lines by hand (or add `{END_LINE}` after its last entry) and try again",
            path.display(),
            String::from_utf8_lossy(BEGIN_MARKER),
        ),
    )
}

#[cfg(test)]
#[path = "hosts_tests.rs"]
mod tests;
