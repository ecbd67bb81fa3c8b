#!/usr/bin/env bash
# How many nodes one `pilotd rendezvous` holds (issue 14): for each N, a fresh rendezvous (SQLite
# in a temporary data directory) and `examples/loadgen.rs` driving N simulated nodes, each with
# its own key and source address, registering and refreshing every 25 s over real UDP. Prints
# the generator's lines, then a table: N, answers/s, p50/p99 registration latency, timeouts,
# the rendezvous' CPU and RSS (and RSS per node). Needs root (two network namespaces).
#
#   scripts/loadgen.sh [N...]            default: 10000 50000 100000 200000
#
#   LOADGEN_RAMP      seconds the first registrations are spread over [25: one refresh
#                     interval]; a longer ramp lets N beyond the CPU's arrival rate settle
#   LOADGEN_SECONDS   run time per N after the ramp [60]
#   PILOT_BIN         where the release binaries are [target/release]; built when missing
#
# Namespaces lg<PID>-r (rendezvous, 10.76.0.1) and lg<PID>-g (generator, 10.76.0.2, with
# 10.80.0.0/14 routed to its lo so every simulated node has its own address) are removed on
# exit. Nothing leaves them.
set -euo pipefail
cd "$(dirname "$0")/.."

[[ $(id -u) -eq 0 ]] || exec sudo -E "$0" "$@"
(($# > 0)) || set -- 10000 50000 100000 200000
seconds=${LOADGEN_SECONDS:-60}
ramp=${LOADGEN_RAMP:-25}
bin=${PILOT_BIN:-target/release}
if [[ ! -x $bin/pilotd || ! -x $bin/examples/loadgen ]]; then
    cargo build --release --bin pilotd --example loadgen
fi
# The generator runs as root from here on: its own binary, not a cargo call.
loadgen=$bin/examples/loadgen
[[ -x $loadgen ]] || loadgen=target/release/examples/loadgen

tag=lg$$
rns=$tag-r
gns=$tag-g
work=$(mktemp -d)
rdv_pid=""
cleanup() {
    [[ -n $rdv_pid ]] && kill "$rdv_pid" 2>/dev/null && wait "$rdv_pid" 2>/dev/null
    ip netns del "$rns" 2>/dev/null || true
    ip netns del "$gns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$rns"
ip netns add "$gns"
ip -n "$rns" link set lo up
ip -n "$gns" link set lo up
ip -n "$rns" link add eth0 type veth peer name eth0 netns "$gns"
ip -n "$rns" addr add 10.76.0.1/24 dev eth0
ip -n "$gns" addr add 10.76.0.2/24 dev eth0
ip -n "$rns" link set eth0 up
ip -n "$gns" link set eth0 up
ip -n "$gns" route add local 10.80.0.0/14 dev lo
ip -n "$rns" route add 10.80.0.0/14 via 10.76.0.2

rows=()
for n in "$@"; do
    rm -rf "$work/rdv"
    "$bin/pilotd" identity --state-dir "$work/rdv" >/dev/null
    ip netns exec "$rns" "$bin/pilotd" rendezvous --listen 10.76.0.1:7000 \
        --data-dir "$work/rdv" --log-level warn >"$work/rdv.log" 2>&1 &
    rdv_pid=$!
    for _ in $(seq 50); do
        grep -q "rendezvous listening" "$work/rdv.log" 2>/dev/null && break
        ip netns exec "$rns" ss -uln | grep -q 10.76.0.1:7000 && break
        sleep 0.1
    done
    echo "== $n nodes"
    out=$(ip netns exec "$gns" "$loadgen" --rendezvous 10.76.0.1:7000 --nodes "$n" \
        --ramp "$ramp" --duration $((ramp + seconds)) --report 10 --server-pid "$rdv_pid" | tee -a /dev/stderr)
    kill "$rdv_pid"
    wait "$rdv_pid" 2>/dev/null || true
    rdv_pid=""
    # The last window (steady state) and the totals.
    last=$(grep -v -e '^---' -e '^    (' <<<"$out" | tail -2 | head -1)
    rows+=("$n|$last")
done

echo
echo "steady state, last 10 s of each run (refresh every 25 s: N/25 registrations a second expected):"
for row in "${rows[@]}"; do
    printf '%8s nodes: %s\n' "${row%%|*}" "${row#*|}"
done
