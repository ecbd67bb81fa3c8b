#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ in turn, SECONDS_PER_TARGET each (default 60), in
# one process (so several fuzz.sh may run at once: libFuzzer's -jobs would have them share
# ./fuzz-0.log), and prints a table: target, executions, executions per
# second, corpus files, crashes. Installs cargo-fuzz if it is missing; needs a nightly
# toolchain (`rustup toolchain install nightly`).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# New corpus entries land in fuzz/corpus/<target>/ (minimise before committing:
# `cargo +nightly fuzz cmin -s none <target>`); a crash leaves its input in
# fuzz/artifacts/<target>/ (not committed), which `cargo test --test fuzz_corpus` replays;
# once the bug is fixed, move it to fuzz/regressions/<target>/ so it is replayed for good.
# FUZZ_RUNS=N ends a target after N executions if that comes before SECONDS_PER_TARGET (run
# it under `nice` to reach a count while the machine does other work).
# FUZZ_SANITIZER (default none: the library has no unsafe code on these paths, and without
# ASan the targets run several times faster) is passed to cargo fuzz -s. The cryptography
# crates are built without coverage instrumentation (fuzz/rustc-uninstrumented-crypto.sh says
# why); run cmin, or cargo fuzz by hand, with the same RUSTC_WRAPPER or everything rebuilds.
set -euo pipefail
cd "$(dirname "$0")/.."
export RUSTC_WRAPPER="$PWD/fuzz/rustc-uninstrumented-crypto.sh"

seconds=${1:-60}
shift || true
sanitizer=${FUZZ_SANITIZER:-none}
runs=${FUZZ_RUNS:--1}

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "fuzz.sh: needs a nightly toolchain: rustup toolchain install nightly" >&2
    exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

if (($# > 0)); then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
rows=()
failed=0
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
    log="$logs/$target.log"
    echo "fuzzing $target for ${seconds}s" >&2
    status=0
    cargo +nightly fuzz run -s "$sanitizer" "$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 -runs="$runs" \
        -rss_limit_mb=2048 -timeout=10 >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    corpus=$(find "fuzz/corpus/$target" -type f | wc -l)
    crashes=$(find "fuzz/artifacts/$target" -type f \( -name 'crash-*' -o -name 'oom-*' \
        -o -name 'timeout-*' -o -name 'leak-*' \) -newer "$log" 2>/dev/null | wc -l)
    if ((status != 0)); then
        failed=1
        crashes=$((crashes > 0 ? crashes : 1))
        echo "$target FAILED (exit $status); the end of its log:" >&2
        tail -40 "$log" >&2
    fi
    rows+=("$target ${execs:-0} ${rate:-0} $corpus $crashes")
done

printf '\n%-22s %14s %10s %8s %8s\n' target execs execs/s corpus crashes
for row in "${rows[@]}"; do
    # shellcheck disable=SC2086 # fields split on purpose
    printf '%-22s %14s %10s %8s %8s\n' $row
done
exit "$failed"
