#!/usr/bin/env bash
# Measures how often an idle pilot wakes up: two nodes behind NAT routers (the natlab of
# scripts/demo.sh) trust each other and reach each other once, then nothing is sent; after a
# settle period, counts over a window the wake-ups of node A's pilotd, node B's pilotd and the
# rendezvous, and node A's UDP datagrams.
#
# Usage: sudo scripts/idle.sh   (or as root; settings go through sudo as in
#                              `sudo IDLE_SECONDS=120 scripts/idle.sh`)
#   IDLE_NATS="K1 K2"  node A's and node B's routers (default "prc prc"; kinds none, cone, prc, sym)
#   IDLE_SETTLE=N      seconds left alone after the first ping, before the window (default 20)
#   IDLE_SECONDS=N     length of the measured window (default 60)
#   IDLE_JSON=FILE     also write the one-line JSON result to FILE
#   PILOT_BIN=DIR      where pilotd/pilotctl are (default: target/release; built if missing)
#
# Wake-ups of a process: the increase over the window of the sum, over all its threads
# (/proc/PID/task/*/status), of voluntary_ctxt_switches + nonvoluntary_ctxt_switches. A thread
# that exits during the window takes its switches with it (the table says how many threads
# came and went). Nothing touches the daemons during the window: /proc is read from outside
# and no pilotctl call is made. UDP datagrams: `pilotctl info` has no datagram counters, so
# they are the kernel's (Udp + Udp6 InDatagrams/OutDatagrams of /proc/net/snmp{,6}) in node
# A's namespace, where pilotd is the only process. It only measures and prints; it exits
# non-zero only when a step fails. Everything it created is removed at the end, or on Ctrl-C.
set -euo pipefail

# shellcheck source=lib/twonode.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib/twonode.sh"
# shellcheck source=lib/natpair.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib/natpair.sh"

IDLE_NATS=${IDLE_NATS:-"prc prc"}
IDLE_SETTLE=${IDLE_SETTLE:-20}
IDLE_SECONDS=${IDLE_SECONDS:-60}

# snapshot NAME: per-thread context switches of the three processes and node A's UDP
# counters, now, as JSON in $RESULTS/NAME.json.
snapshot() {
    ip netns exec "$TN_NS_A" cat /proc/net/snmp /proc/net/snmp6 >"$RESULTS/$1.snmp"
    PIDS="a=$TN_PID_A b=$TN_PID_B rdv=$NP_PID_RDV" SNMP="$RESULTS/$1.snmp" \
        python3 "$TN_ROOT/scripts/lib/idle.py" snapshot >"$RESULTS/$1.json"
}

summarize() {
    RESULTS=$RESULTS NATS="$nat1/$nat2" SETTLE=$IDLE_SETTLE PATH_BEFORE=$path_before \
        PATH_AFTER=$path_after LOADAVG=$LOADAVG_BEFORE BIN=$TN_BIN \
        COMMIT=$([[ -n ${PILOT_BIN:-} ]] || git -C "$TN_ROOT" describe --always --dirty 2>/dev/null) \
        python3 "$TN_ROOT/scripts/lib/idle.py" summarize
}

main() {
    read -r nat1 nat2 extra <<<"$IDLE_NATS"
    if ! np_is_kind "${nat1:-}" || ! np_is_kind "${nat2:-}" || [[ -n ${extra:-} ]]; then
        echo "IDLE_NATS: two NAT kinds, e.g. \"prc prc\" (kinds: $NP_KINDS); got \"$IDLE_NATS\"" >&2
        exit 2
    fi
    [[ $IDLE_SETTLE =~ ^[0-9]+$ && $IDLE_SECONDS =~ ^[1-9][0-9]*$ ]] ||
        { echo "IDLE_SETTLE and IDLE_SECONDS: whole seconds" >&2; exit 2; }
    LOADAVG_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
    tn_init pid
    RESULTS=$TN_DIR/results
    mkdir -p "$RESULTS"

    tn_say "Two nodes behind $nat1 and $nat2 NATs, with a rendezvous"
    tn_ensure_binaries
    np_lab_up "$nat1" "$nat2" i
    np_make_identities "$TN_DIR/nat"
    np_start_rendezvous rendezvous
    np_start_nodes pilotd
    tn_wait_ready
    np_trust quiet
    tn_wait_tunnel
    tn_note "A reaches B through the tunnel (kernel ping from A to $TN_ADDR_B)"
    path_before=$(np_path)
    if [[ $(np_expected_path "$nat1" "$nat2") == direct && $path_before != direct ]]; then
        local deadline=$((SECONDS + TN_TIMEOUT))
        until [[ $path_before == direct ]] || ((SECONDS >= deadline)); do
            sleep 0.2
            path_before=$(np_path)
        done
    fi
    tn_note "path A->B: ${path_before:-none}; pids: A $TN_PID_A, B $TN_PID_B, rendezvous $NP_PID_RDV"

    tn_say "Sending nothing: ${IDLE_SETTLE} s to settle, then a ${IDLE_SECONDS} s window"
    sleep "$IDLE_SETTLE"
    np_check_alive
    snapshot t0
    sleep "$IDLE_SECONDS"
    snapshot t1
    np_check_alive
    path_after=$(np_path)
    summarize
}

main "$@"
