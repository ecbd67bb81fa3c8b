#!/usr/bin/env bash
# The test command (`bash .ci/run` installs what it needs, then runs this): formatting, lints,
# unit + simulation + namespace tests, the demo end to end, the package (the .deb built,
# installed and purged; install.sh), and the newcomer test (the README's commands run as an
# unprivileged user with sudo).
#
# Run it as yourself or as root. As yourself, everything is built as you and only what needs
# root is raised through sudo: the test binaries (namespaces, TUNs) run under `sudo -E`, the
# demo and the package test re-run themselves with sudo. Namespace and package tests need
# root; under CI=true they fail instead of skipping when something they need is missing.
#
# PILOT_TEST_SCOPE=smoke (used by scripts/newcomer-test.sh for its nested run) runs the same
# steps with only the service and CLI test binaries and without the newcomer test.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=lib/root.sh
source scripts/lib/root.sh
back_to_sudo_user "$0" "$@"

scope=${PILOT_TEST_SCOPE:-full}
case $scope in
full) tests=(--all-targets) ;;
smoke) tests=(--test service --test cli) ;;
*)
    echo "PILOT_TEST_SCOPE must be full or smoke, not $scope" >&2
    exit 2
    ;;
esac

if ((EUID != 0)); then
    # Cargo builds as you; each test binary then runs as root through this runner.
    host=$(rustc -vV | sed -n 's/^host: //p')
    host=${host^^}
    export "CARGO_TARGET_${host//-/_}_RUNNER=sudo -E"
    echo "== test binaries run through sudo -E (root for namespaces and TUNs); sudo may ask for your password"
    sudo -v
fi

echo "== cargo fmt --all --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
# The simulation's build (its own feature and target directory: .cargo/config.toml).
cargo sim-clippy --locked -- -D warnings
echo "== cargo test ($scope)"
cargo test --locked "${tests[@]}"
# The rendezvous' scenarios again on a server that queues its writes, as the daemon's does
# (its store's thread runs them): the same answers, only once written.
echo "== rendezvous scenarios with queued store writes"
PILOT_SIM_QUEUED_STORE=1 cargo test --locked -p pilot-proto --lib rendezvous::
PILOT_SIM_QUEUED_STORE=1 cargo test --locked -p pilot --lib store::
if [[ $scope == full ]]; then
    # The simulation runs WireGuard's timers on its own clock: a build of its own, in its own
    # target directory (`cargo sim`, .cargo/config.toml), so target/debug keeps a pilotd that
    # runs for the demo below.
    echo "== cargo sim (tests/sim on the simulated clock)"
    cargo sim --locked
fi
echo "== demo (debug build)"
PILOT_BIN="$PWD/target/debug" scripts/demo.sh
echo "== package (.deb and scripts/install.sh)"
scripts/package-test.sh
if [[ $scope == full ]]; then
    echo "== soak (2 minutes: traffic, NAT flushes, restarts, trust churn, junk; fails on growth)"
    PILOT_BIN="$PWD/target/debug" scripts/soak.sh 120
    echo "== newcomer (the README's commands as an unprivileged user with sudo)"
    as_root scripts/newcomer-test.sh
fi
