//! Shell completions (bash, zsh, fish) and man pages of `pilotd` and `pilotctl`, generated
//! from their clap definitions and committed under `packaging/completions/` and
//! `packaging/man/` (the .deb and `scripts/install.sh` install them from there). The test
//! regenerates them in memory and fails when the committed files are stale; rewrite them with
//! `PILOT_BLESS=1 cargo test --lib cli::packaging_files`, then review and commit the change.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use clap_complete::{Generator, Shell};

const PACKAGING: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging");
const DIRS: [&str; 2] = ["completions", "man"];
const BLESS: &str = "PILOT_BLESS=1 cargo test --lib cli::packaging_files";

/// Every generated file, by its path under `packaging/`.
fn generated() -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    for (name, command) in [
        ("pilotd", super::pilotd::command()),
        ("pilotctl", super::pilotctl::command()),
    ] {
        for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
            let mut text = Vec::new();
            clap_complete::generate(shell, &mut command.clone(), name, &mut text);
            files.insert(Path::new("completions").join(shell.file_name(name)), text);
        }
        man_pages(command, &mut files);
    }
    files
}

/// One page per command and subcommand (`pilotctl-daemon-start.1`), as
/// `clap_mangen::generate_to` names them, rendered in memory.
fn man_pages(command: clap::Command, files: &mut BTreeMap<PathBuf, Vec<u8>>) {
    fn render(command: clap::Command, files: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
            render(sub.clone(), files);
        }
        // Subcommands have no version of their own: name the package on every page.
        let source = format!("pilot {}", env!("CARGO_PKG_VERSION"));
        let page = clap_mangen::Man::new(command).source(source);
        let mut text = Vec::new();
        page.render(&mut text).expect("rendering into memory");
        files.insert(Path::new("man").join(page.get_filename()), text);
    }
    let mut command = command.disable_help_subcommand(true);
    command.build();
    render(command, files);
}

/// Files under the generated directories now.
fn committed() -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    for dir in DIRS {
        let Ok(entries) = fs::read_dir(Path::new(PACKAGING).join(dir)) else {
            continue;
        };
        for entry in entries.map(Result::unwrap) {
            let path = Path::new(dir).join(entry.file_name());
            files.insert(path, fs::read(entry.path()).unwrap());
        }
    }
    files
}

#[test]
fn completions_and_man_pages_are_generated_from_the_current_cli() {
    let want = generated();
    let have = committed();
    if std::env::var_os("PILOT_BLESS").is_some() {
        for path in have.keys().filter(|p| !want.contains_key(*p)) {
            fs::remove_file(Path::new(PACKAGING).join(path)).unwrap();
        }
        for (path, text) in &want {
            let path = Path::new(PACKAGING).join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        return;
    }
    let stale: Vec<String> = (want.keys().chain(have.keys()))
        .filter(|p| want.get(*p) != have.get(*p))
        .map(|p| format!("packaging/{}", p.display()))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert!(
        stale.is_empty(),
        "generated files differ from the command lines (missing, changed or left over): {}\n\
         regenerate them with `{BLESS}`, then commit packaging/",
        stale.join(", ")
    );
    // What the packages install by name must exist.
    for name in [
        "pilotd.1",
        "pilotctl.1",
        "pilotctl-daemon-start.1",
        "pilotctl-init.1",
    ] {
        assert!(want.contains_key(&Path::new("man").join(name)), "{name}");
    }
}
