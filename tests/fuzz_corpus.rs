//! Replays the fuzzers' corpora and crash regressions on stable, in `cargo test`: every file
//! in `fuzz/corpus/<target>/`, `fuzz/regressions/<target>/` (inputs that once crashed a
//! target, kept) and `fuzz/artifacts/<target>/` (a local fuzzer's fresh finds, not
//! committed) goes through the same body the fuzz target runs (`pilot::fuzzing`), so a fixed
//! crash stays fixed and what the fuzzers learnt keeps being exercised. The fuzzers
//! themselves: `scripts/fuzz.sh`.

use std::fs;
use std::path::{Path, PathBuf};

use pilot::fuzzing::{seeds, target, TARGETS};

/// Where inputs are kept, per target.
const DIRS: [&str; 3] = ["corpus", "regressions", "artifacts"];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files directly inside `dir` (none if it does not exist), sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.file_name().is_none_or(|n| n != ".keep"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_has_a_fuzz_target_file_and_seeds() {
    for (name, _) in TARGETS {
        let file = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        let text = fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert!(
            text.contains(&format!("pilot::fuzzing::{name}(")),
            "{} does not call pilot::fuzzing::{name}",
            file.display()
        );
        assert!(!seeds(name).is_empty(), "no seeds for {name}");
    }
    for dir in DIRS {
        for entry in fs::read_dir(fuzz_dir().join(dir)).into_iter().flatten() {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                assert!(target(name).is_some(), "{} has no target", path.display());
            }
        }
    }
}

#[test]
fn seeds_corpora_and_regressions_replay_without_failing() {
    let mut replayed = 0;
    for (name, body) in TARGETS {
        for seed in seeds(name) {
            body(&seed);
        }
        for dir in DIRS {
            for file in files(&fuzz_dir().join(dir).join(name)) {
                let data = fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                // Named on failure: the panic message comes with the file that caused it.
                eprintln!("replaying {}", file.display());
                body(&data);
                replayed += 1;
            }
        }
    }
    eprintln!("replayed {replayed} corpus and regression files");
}

/// Writes the seeds into `fuzz/corpus/<target>/seed-N` (run by hand when they change:
/// `cargo test --test fuzz_corpus -- --ignored write_seeds`).
#[test]
#[ignore]
fn write_seeds() {
    for (name, _) in TARGETS {
        let dir = fuzz_dir().join("corpus").join(name);
        fs::create_dir_all(&dir).expect("corpus directory");
        for (i, seed) in seeds(name).iter().enumerate() {
            fs::write(dir.join(format!("seed-{i}")), seed).expect("seed written");
        }
    }
}
