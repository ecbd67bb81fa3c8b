#!/usr/bin/env bash
# Soak: a rendezvous and three nodes in the NAT lab (natlab, crates/pilot-lab) for a long time, under
# what an unattended deployment meets, while the long-lived daemons are watched for growth.
#
# Usage: scripts/soak.sh [SECONDS]   (default 3600; CI runs 120)
#   PILOT_BIN=DIR   where pilotd/pilotctl are (default: target/release; built if missing)
#
# What happens meanwhile:
#   traffic      alice pings bob 5 times a second through the tunnel, and every 30 s runs a
#                3-second iperf3 to him (alice behind a full-cone NAT, bob behind Linux
#                masquerade: a punched, direct path)
#   NAT flushes  every 45 s one router's conntrack table is emptied (all NAT mappings gone)
#   restarts     every 60 s bob's daemon is stopped and started again
#   trust churn  every 15 s carol (beside alice) asks alice for trust, alice approves, carol
#                untrusts: requests, approvals, records and revocations through the rendezvous
#   junk flood   from the "internet", 400 datagrams a second of random bytes (some dressed as
#                WireGuard or Pilot control messages) at the rendezvous' two ports and at
#                alice's public endpoint
# Every 10 s, for the rendezvous and alice (which run throughout): RSS, open fds, CPU time, and
# the rendezvous' database and write-ahead log sizes; written to soak.csv in the run directory
# and printed. Fails when, after a warm-up, RSS grows by more than 25 % + 4 MiB, open fds by
# more than 8, the database by more than 2 MiB, the log beyond 8 MiB (SQLite checkpoints it at
# about 4 MiB), or (in runs of 10 minutes or more) the CPU rate doubles (+5 points) from the
# first half to the second; when a daemon dies; when a trust round fails; or when alice
# cannot reach bob at the end. Prints a summary table either way.
set -euo pipefail

# shellcheck source=lib/twonode.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib/twonode.sh"
# shellcheck source=lib/natpair.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib/natpair.sh"
# shellcheck source=lib/root.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib/root.sh"

DURATION=${1:-3600}
SAMPLE_EVERY=10
IPERF_PORT=5201
METRICS=""

prepare() {
    back_to_sudo_user "$0" "$@"
    [[ $DURATION =~ ^[0-9]+$ ]] && ((DURATION >= 60)) ||
        { echo "usage: $0 [SECONDS >= 60]" >&2; exit 2; }
    need_packages iproute2 nftables iptables curl python3 iputils-ping iperf3
    if [[ -z ${PILOT_BIN:-} ]] && command -v cargo >/dev/null; then
        (cd "$(dirname "${BASH_SOURCE[0]}")/.." && cargo build --release --locked) </dev/null
    fi
    ROOT_KEEP_ENV="PILOT_BIN TN_TIMEOUT" become_root "$0" "$@"
}

# carol: a third node on alice's LAN (the lab's a2), for trust churn.
start_carol() {
    CAROL_DIR=$NP_DIR/c
    CAROL_CTL=$CAROL_DIR/pilotd.sock
    mkdir -p "$CAROL_DIR"
    CAROL_KEY=$("$TN_BIN/pilotd" identity --state-dir "$CAROL_DIR/state" --json </dev/null |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["public_key"])')
    tn_spawn "$NP_LAB-a2" "$TN_DIR/logs/pilotd-c.log" "$TN_BIN/pilotd" up \
        --state-dir "$CAROL_DIR/state" --control "$CAROL_CTL" --interface "$TN_IFACE" \
        --rendezvous "$NP_RDV_KEY@$NP_RDV_IP:$NP_RDV_PORT" --hostname carol \
        --log-level "${PILOT_LOG_LEVEL:-info}"
    CAROL_PID=$TN_LAST_PID
}

carol() { "$TN_BIN/pilotctl" --control "$CAROL_CTL" "$@"; }
alice() { "$TN_BIN/pilotctl" --control "$TN_CTL_A" "$@"; }

# until CMD… succeeds, for at most SECS seconds; fails the soak naming WHAT otherwise.
within() {
    local secs=$1 what=$2 deadline
    shift 2
    deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        check_alive
        ((SECONDS < deadline)) || tn_die "trust churn: $what within ${secs}s"
        sleep 0.1
    done
}

pending_from_carol() { alice pending --json | grep -q "$CAROL_KEY"; }
carol_trusts_alice() { carol trust --json | grep -q "$TN_KEY_A"; }
carol_trusts_nobody() { ! carol trust --json | grep -q "$TN_KEY_A"; }

# One round: request, approval, countersignature, revocation. Each step may wait for a
# registration: after a NAT flush the rendezvous reaches a node again only once the node has
# registered through its new mapping (every keepalive, 25 s).
churn_trust() {
    carol handshake "$TN_KEY_A" "soak round $1" >/dev/null || tn_die "carol's handshake failed"
    within 40 "alice saw carol's request" pending_from_carol
    alice approve "$CAROL_KEY" >/dev/null || tn_die "alice could not approve carol"
    within 40 "carol trusted alice" carol_trusts_alice
    carol untrust "$TN_KEY_A" >/dev/null || tn_die "carol could not untrust alice"
    within 40 "the revocation took effect" carol_trusts_nobody
    CHURN_ROUNDS=$((CHURN_ROUNDS + 1))
}

restart_bob() {
    tn_stop_pid "$TN_PID_B"
    tn_spawn b "$TN_DIR/logs/pilotd-b.log.$((RESTARTS + 1))" "$TN_BIN/pilotd" up \
        --state-dir "$NP_DIR/b/state" --control "$TN_CTL_B" --interface "$TN_IFACE" \
        --rendezvous "$NP_RDV_KEY@$NP_RDV_IP:$NP_RDV_PORT" --hostname bob \
        --log-level "${PILOT_LOG_LEVEL:-info}"
    TN_PID_B=$TN_LAST_PID
    RESTARTS=$((RESTARTS + 1))
}

check_alive() {
    np_check_alive
    kill -0 "$CAROL_PID" 2>/dev/null || tn_die "carol's pilotd (pid $CAROL_PID) has exited"
}

# The junk: random datagrams, a fifth of them starting like WireGuard (1-4), a fifth like a
# Pilot control message (0x50-0x63), at ~400 a second until killed.
junk_flood() {
    local targets="$NP_RDV_IP:$NP_RDV_PORT $NP_RDV_IP:$((NP_RDV_PORT + 1)) $1"
    # shellcheck disable=SC2086 # one argument per target
    tn_spawn "$NP_LAB-inet" "$TN_DIR/logs/junk.log" python3 "$TN_ROOT/scripts/lib/soak.py" junk $targets
}

# Appends one sample per watched daemon: t,proc,rss_kib,fds,cpu_ticks,store_bytes,wal_bytes.
sample() {
    local t=$1 proc pid rss fds cpu store wal
    store=$(stat -c %s "$NP_DIR/rdv/rendezvous.db" 2>/dev/null || echo 0)
    wal=$(stat -c %s "$NP_DIR/rdv/rendezvous.db-wal" 2>/dev/null || echo 0)
    for proc in rendezvous alice; do
        if [[ $proc == rendezvous ]]; then pid=$NP_PID_RDV; else pid=$TN_PID_A; fi
        rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
        fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
        cpu=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
        echo "$t,$proc,$rss,$fds,$cpu,$store,$wal" >>"$CSV"
        printf '    t=%5ss %-10s rss %6s KiB  fds %3s  cpu %6s ticks  db %8s B  wal %8s B\n' \
            "$t" "$proc" "$rss" "$fds" "$cpu" "$store" "$wal"
    done
}

# Reads soak.csv: prints the summary table; exits non-zero on growth.
judge() {
    python3 "$TN_ROOT/scripts/lib/soak.py" judge "$CSV" "$DURATION" "$(getconf CLK_TCK)"
}

main() {
    tn_init psk
    tn_ensure_binaries
    np_lab_up cone prc s
    np_make_identities "$TN_DIR/nat"
    CSV=$TN_DIR/soak.csv
    METRICS=127.0.0.1:9188
    NP_RDV_ARGS=(--metrics "$METRICS")
    RESTARTS=0 CHURN_ROUNDS=0 FLUSHES=0

    tn_say "Soak for ${DURATION}s: rendezvous, alice (cone NAT), bob (masquerade), carol (beside alice)"
    np_start_rendezvous rendezvous
    np_start_nodes pilotd
    start_carol
    tn_wait_ready
    np_wait_registered a
    np_wait_registered b
    np_trust quiet
    tn_wait_tunnel
    tn_spawn b "$TN_DIR/logs/iperf3.log" iperf3 -s -p "$IPERF_PORT"
    tn_wait_listen b :: "$IPERF_PORT"
    local endpoint
    endpoint=$(alice netcheck --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["endpoint"])')
    junk_flood "$endpoint"
    tn_spawn a "$TN_DIR/logs/ping.log" ping -6 -i 0.2 -W 1 "$TN_ADDR_B"
    local ping_pid=$TN_LAST_PID

    local t0=$SECONDS t=0 last=-1 iperf_ok=0 iperf_runs=0
    while ((t < DURATION)); do
        if ((t != last)); then
            last=$t
            ((t % SAMPLE_EVERY == 0)) && sample "$t"
            if ((t > 0 && t % 45 == 0)); then
                np_natlab flush "$NP_LAB" "nat$((FLUSHES % 2 + 1))" >/dev/null
                FLUSHES=$((FLUSHES + 1))
            fi
            ((t > 0 && t % 60 == 0)) && restart_bob
            ((t % 15 == 5)) && churn_trust "$t"
            if ((t % 30 == 20)); then
                iperf_runs=$((iperf_runs + 1))
                tn_in_a iperf3 -c "$TN_ADDR_B" -p "$IPERF_PORT" -t 3 >>"$TN_DIR/logs/iperf3-client.log" 2>&1 &&
                    iperf_ok=$((iperf_ok + 1))
            fi
            check_alive
        fi
        sleep 0.2
        t=$((SECONDS - t0))
    done
    sample "$t"

    kill -INT "$ping_pid" 2>/dev/null || true
    wait "$ping_pid" 2>/dev/null || true
    tn_say "Soak finished: ${DURATION}s, $RESTARTS restarts of bob, $FLUSHES NAT flushes, $CHURN_ROUNDS trust rounds, $iperf_ok/$iperf_runs iperf3 runs completed"
    tn_note "ping alice -> bob: $(grep -E 'packets transmitted' "$TN_DIR/logs/ping.log" || echo '(no summary)')"
    tn_note "the rendezvous' refusals and relay drops (the junk, ~400 datagrams/s, among them):"
    ip netns exec "$TN_NS_RDV" curl -sf "http://$METRICS/metrics" |
        grep -E '^pilot_rendezvous_(refusals_total|relay_drops_total)\{.*\} [1-9]' |
        sed 's/^/    /' || true
    tn_wait_tunnel
    check_alive
    judge || tn_die "a watched daemon grew (see the table above; samples in $CSV)"
    tn_cleanup
    trap - EXIT
    echo "soak OK"
}

prepare "$@"
main "$@"
