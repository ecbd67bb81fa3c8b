//! Whether a test that needs the real machine (root, namespaces, system tools) can run here.
//! Without what it needs a test says so and passes, except under `CI=true`, where a missing
//! prerequisite fails it instead of hiding it.

use crate::sh::command_exists;

/// What is missing of root (when `root`) and of `tools` on PATH.
pub fn missing(root: bool, tools: &[&str]) -> Vec<String> {
    let mut missing = Vec::new();
    if root && !nix::unistd::geteuid().is_root() {
        missing.push("root".to_owned());
    }
    missing.extend(
        tools
            .iter()
            .filter(|t| !command_exists(t))
            .map(|t| t.to_string()),
    );
    missing
}

/// True when nothing is missing; otherwise prints `SKIP` and returns false, or under
/// `CI=true` panics naming what is missing.
pub fn can_run(test: &str, missing: &[String]) -> bool {
    if missing.is_empty() {
        return true;
    }
    let missing = missing.join(", ");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test}: CI=true but this test cannot run: missing {missing}");
    }
    eprintln!("SKIP {test}: needs {missing}");
    false
}
