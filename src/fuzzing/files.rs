//! Targets for what pilotd and pilotctl read from files: the TOML configs, the state files
//! (`trust.json`, `identity.json`, `rendezvous.json`) and the managed block of `/etc/hosts`.

use std::net::Ipv6Addr;
use std::path::Path;

use super::input::Input;
use super::wire::fixed_identity;
use crate::addr::Hostname;
use crate::cli::config::{parse, ConfigError, RendezvousFile, UpFile};
use crate::daemon::names::{render_hosts_block, splice_hosts_block};
use crate::daemon::node::pin::RendezvousPin;
use crate::daemon::node::trust_file::TrustFile;
use crate::identity::Identity;
use crate::node::TrustBook;

/// A config file's text as `pilotd up` and `pilotd rendezvous` read it. Errors point inside
/// the text.
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    let lines = text.matches('\n').count() + 1;
    let check = |e: ConfigError| {
        if let ConfigError::Invalid { line, column, .. } = e {
            assert!(
                line >= 1 && line <= lines,
                "error line {line} outside the text"
            );
            assert!(column >= 1, "error column {column}");
        }
    };
    if let Err(e) = parse::<UpFile>(path, text) {
        check(e);
    }
    if let Err(e) = parse::<RendezvousFile>(path, text) {
        check(e);
    }
}

/// `[which][text]`: the text of `trust.json` (loaded into a trust book, whose saved state
/// loads back to the same book), `identity.json` or `rendezvous.json`.
pub fn state_files(data: &[u8]) {
    let Some((&which, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let dir = Path::new("/nonexistent/pilot-fuzz");
    match which % 3 {
        0 => {
            let Ok(state) = TrustFile::new(dir).parse(text) else {
                return;
            };
            let me = fixed_identity(0).public_key();
            let now_ms = 1_800_000_000_000;
            let (book, _warnings) = TrustBook::load(me, &state, now_ms);
            let saved = book.state();
            let json = serde_json::to_string(&saved).expect("a trust state serialises");
            let reparsed = TrustFile::new(dir)
                .parse(&json)
                .expect("a saved state parses");
            let (again, warnings) = TrustBook::load(me, &reparsed, now_ms);
            assert!(
                warnings.is_empty(),
                "a saved state warns on load: {warnings:?}"
            );
            assert_eq!(again.state(), saved, "trust state does not round-trip");
        }
        1 => {
            if let Ok(identity) = Identity::parse_file(text) {
                let _ = identity.address();
            }
        }
        _ => {
            let _ = RendezvousPin::new(dir, "rendezvous.example:7400").parse(text);
        }
    }
}

/// `[entries][content]`: a hosts file's content with pilotd's block written into it and
/// taken out again. Adding then removing the block gives what removing alone gives, writing
/// the same block twice changes nothing, and removing is idempotent.
pub fn hosts_file(data: &[u8]) {
    const NAMES: [&str; 4] = ["bob", "alice", "db-1", "x"];
    let mut input = Input::new(data);
    let count = input.choose(4);
    let entries: Vec<(Hostname, Ipv6Addr)> = (0..count)
        .map(|_| {
            let name = NAMES[input.choose(NAMES.len())]
                .parse()
                .expect("a valid name");
            let addr = Ipv6Addr::new(0xfd70, 0, 0, 0, 0, 0, 0, u16::from(input.u8()));
            (name, addr)
        })
        .collect();
    let content = input.rest();
    let block = render_hosts_block(&entries);
    let Ok(removed) = splice_hosts_block(content, None) else {
        // A BEGIN without an END: writing must refuse too, rather than guess.
        assert!(splice_hosts_block(content, block.as_deref()).is_err());
        return;
    };
    assert_eq!(
        splice_hosts_block(&removed, None).as_ref(),
        Ok(&removed),
        "removing the block twice differs from once"
    );
    let added = splice_hosts_block(content, block.as_deref()).expect("blocks are terminated");
    assert_eq!(
        splice_hosts_block(&added, block.as_deref()).as_ref(),
        Ok(&added),
        "writing the same block twice changed the file"
    );
    assert_eq!(
        splice_hosts_block(&added, None).as_ref(),
        Ok(&removed),
        "adding then removing the block differs from removing it"
    );
}
