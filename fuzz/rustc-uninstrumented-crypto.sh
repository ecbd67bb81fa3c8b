#!/bin/sh
# RUSTC_WRAPPER for cargo fuzz (scripts/fuzz.sh sets it): compiles the cryptography crates
# without coverage instrumentation, everything else exactly as cargo fuzz asks.
#
# Why: their branches depend on hashes, keys and ciphertext, nothing a fuzzer can steer, so
# their coverage only fills corpora with noise; and their comparison hooks (every
# `debug_assert!` on a field limb calls one) took half the time of the targets that sign,
# verify or shake hands. They keep the same optimisation, debug assertions and overflow
# checks; our own code keeps all its instrumentation. The last `-sanitizer-coverage-level`
# given wins, so appending level 0 turns the edge counters off for that crate alone (cargo's
# per-package `profile.*.rustflags` would come before cargo fuzz's RUSTFLAGS and lose); the
# comparison hooks are a separate switch that level 0 leaves on, so it is turned off too.
rustc=$1
shift
case " $* " in
*" --crate-name curve25519_dalek "* | *" --crate-name ed25519_dalek "* | \
    *" --crate-name x25519_dalek "* | *" --crate-name sha2 "* | *" --crate-name blake2 "* | \
    *" --crate-name chacha20 "* | *" --crate-name chacha20poly1305 "* | \
    *" --crate-name poly1305 "* | *" --crate-name hmac "* | *" --crate-name ring "* | \
    *" --crate-name subtle "*)
    exec "$rustc" "$@" -Cllvm-args=-sanitizer-coverage-level=0 \
        -Cllvm-args=-sanitizer-coverage-trace-compares=0 -Cdebug-assertions=off -Coverflow-checks=off
    ;;
esac
exec "$rustc" "$@"
