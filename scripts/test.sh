#!/usr/bin/env bash
# The test command from the README: formatting, lints, unit + simulation + namespace tests,
# the demo end to end, and the package (the .deb built, installed and purged; install.sh).
# Namespace and package tests need root; under CI=true they fail instead of skipping when
# something they need is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test"
cargo test --locked --all-targets
echo "== demo (debug build)"
PILOT_BIN="$PWD/target/debug" scripts/demo.sh
echo "== package (.deb and scripts/install.sh)"
scripts/package-test.sh
