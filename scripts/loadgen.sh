#!/usr/bin/env bash
# How many nodes the rendezvous holds (issue 14): for each N, a fresh rendezvous and
# `examples/loadgen.rs` driving N simulated nodes, each with its own key and source address,
# registering and refreshing every 25 s over real UDP. Prints the generator's lines, then a
# table: N, answers/s, p50/p99 registration latency, timeouts, the rendezvous' CPU and RSS (and
# RSS per node), and the database's CPU. Needs root (two network namespaces).
#
#   scripts/loadgen.sh [N...]            default: 10000 50000 100000 200000
#
#   LOADGEN_STORE     sqlite: one instance on SQLite in a temporary data directory [default];
#                     postgres: LOADGEN_INSTANCES instances sharing one throwaway PostgreSQL
#                     cluster (`natlab postgres`: Debian's postgresql, a Unix socket in a temp
#                     dir), the nodes spread over them (node i at instance i mod k)
#   LOADGEN_INSTANCES instances on PostgreSQL [2]
#   LOADGEN_RAMP      seconds the first registrations are spread over [25: one refresh
#                     interval]; a longer ramp lets N beyond the CPU's arrival rate settle
#   LOADGEN_SECONDS   run time per N after the ramp [60]
#   PILOT_BIN         where the release binaries are [target/release]; built when missing
#
# Namespaces lg<PID>-r (rendezvous, 10.76.0.1, instance k on port 7000 + 100k) and lg<PID>-g
# (generator, 10.76.0.2, with 10.80.0.0/14 routed to its lo so every simulated node has its own
# address) are removed on exit, and the database with them. Nothing leaves them.
set -euo pipefail
cd "$(dirname "$0")/.."

[[ $(id -u) -eq 0 ]] || exec sudo -E "$0" "$@"
(($# > 0)) || set -- 10000 50000 100000 200000
seconds=${LOADGEN_SECONDS:-60}
ramp=${LOADGEN_RAMP:-25}
store=${LOADGEN_STORE:-sqlite}
instances=1
case $store in
    sqlite) ;;
    postgres) instances=${LOADGEN_INSTANCES:-2} ;;
    *) echo "LOADGEN_STORE: sqlite or postgres, not '$store'" >&2; exit 2 ;;
esac
bin=${PILOT_BIN:-target/release}
if [[ ! -x $bin/pilotd || ! -x $bin/examples/loadgen || ! -x $bin/natlab ]]; then
    cargo build --release --bin pilotd --example loadgen
    cargo build --release -p pilot-lab --bin natlab
fi
# The generator runs as root from here on: its own binary, not a cargo call.
loadgen=$bin/examples/loadgen
[[ -x $loadgen ]] || loadgen=target/release/examples/loadgen
natlab=$bin/natlab
[[ -x $natlab ]] || natlab=target/release/natlab

tag=lg$$
rns=$tag-r
gns=$tag-g
work=$(mktemp -d)
rdv_pids=()
db_pid=""
stop_all() {
    for pid in "${rdv_pids[@]}"; do
        kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    done
    rdv_pids=()
    # The cluster's runner removes it on TERM.
    [[ -n $db_pid ]] && kill "$db_pid" 2>/dev/null && wait "$db_pid" 2>/dev/null
    db_pid=""
    return 0
}
cleanup() {
    stop_all
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
    store_args=()
    pg_postmaster=""
    if [[ $store == postgres ]]; then
        "$natlab" postgres registry >"$work/pg" 2>"$work/pg.log" &
        db_pid=$!
        for _ in $(seq 300); do
            [[ $(wc -l <"$work/pg") -ge 3 ]] && break
            kill -0 "$db_pid" 2>/dev/null || { cat "$work/pg.log" >&2; exit 1; }
            sleep 0.1
        done
        url=$(sed -n 1p "$work/pg")
        sed -n 2p "$work/pg" >"$work/pgpassword"
        chmod 600 "$work/pgpassword"
        pg_postmaster=$(sed -n 3p "$work/pg")
        store_args=(--store "$url" --store-password-file "$work/pgpassword")
    fi
    targets=()
    pids=()
    for k in $(seq 0 $((instances - 1))); do
        port=$((7000 + 100 * k))
        rm -rf "$work/rdv$k"
        "$bin/pilotd" identity --state-dir "$work/rdv$k" >/dev/null
        ip netns exec "$rns" "$bin/pilotd" rendezvous --listen "10.76.0.1:$port" \
            --data-dir "$work/rdv$k" "${store_args[@]}" --log-level warn >"$work/rdv$k.log" 2>&1 &
        rdv_pids+=($!)
        targets+=(--rendezvous "10.76.0.1:$port")
        pids+=(--server-pid "$!")
        for _ in $(seq 100); do
            ip netns exec "$rns" ss -uln | grep -q "10.76.0.1:$port" && break
            sleep 0.1
        done
    done
    [[ -n $pg_postmaster ]] && pids+=(--db-pid "$pg_postmaster")
    echo "== $n nodes ($store, $instances instance(s))"
    out=$(ip netns exec "$gns" "$loadgen" "${targets[@]}" --nodes "$n" \
        --ramp "$ramp" --duration $((ramp + seconds)) --report 10 "${pids[@]}" | tee -a /dev/stderr)
    stop_all
    # The last window (steady state) and the totals.
    last=$(grep -v -e '^---' -e '^    (' <<<"$out" | tail -2 | head -1)
    rows+=("$n|$last")
done

echo
echo "steady state, last 10 s of each run (refresh every 25 s: N/25 registrations a second expected):"
for row in "${rows[@]}"; do
    printf '%8s nodes: %s\n' "${row%%|*}" "${row#*|}"
done
