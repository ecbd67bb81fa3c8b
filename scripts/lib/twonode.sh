# shellcheck shell=bash
# Two pilot nodes on one virtual LAN, for scripts/demo.sh and scripts/bench.sh.
#
# Topology (everything lives in two network namespaces this file creates; no namespace gets a
# route to the machine's uplink, so every packet stays inside them):
#
#   netns TN_NS_A                                 netns TN_NS_B
#   pilot0 fd70::…  (node A)                      pilot0 fd70::…  (node B)
#   ul0 198.51.100.1/24  <------ veth ------>     ul0 198.51.100.2/24
#
# Usage (from a script that runs with `set -euo pipefail`):
#
#   source "$(dirname "$0")/lib/twonode.sh"
#   tn_init demo            # names, temp dir, cleanup traps — call this first
#   tn_up                   # binaries, namespaces, identities, both daemons answering
#   tn_wait_tunnel          # (optional) until a ping from A reaches B through the tunnel
#   tn_in_a curl …          # run a command on node A (tn_in_b for node B)
#   tn_spawn b LOG cmd …    # start a background process on node B; cleanup kills it
#   tn_release              # (optional) stop all that and delete the namespaces, keep TN_DIR,
#                           # e.g. to set up another pair (new TN_NS_A/B) with tn_make_netns
#
# Cleanup runs on EXIT, INT and TERM, also when interrupted half-way through setup. It kills
# only the processes this file started (recorded PIDs, plus anything still running inside the
# namespaces this run created), deletes those namespaces and removes the temp dir.

# Underlay ("public") addresses: a documentation range, never routed anywhere.
TN_UL_A=198.51.100.1
TN_UL_B=198.51.100.2
TN_UL_PREFIX=24
TN_PORT=51870
TN_MTU=${PILOT_MTU:-1380}
TN_IFACE=pilot0
# Extra `pilotd up` flags for node B (e.g. --userspace); empty by default.
TN_EXTRA_B=()
# Seconds to wait for daemons, servers and the first tunnel packet.
TN_TIMEOUT=${TN_TIMEOUT:-20}

# State filled in by the functions below.
TN_NAMESPACES=()   # namespaces this run created (only these are ever deleted)
TN_PIDS=()         # background processes this run started (only these are ever killed)
TN_DIR=""          # per-run temp dir (state dirs, sockets, logs); removed by cleanup
TN_HOOKS=()        # functions run by tn_release after the processes are stopped
TN_FD_OUT=""       # the script's stdout and stderr, saved by tn_init for tn_cleanup
TN_FD_ERR=""
TN_DAEMON=pilotd   # what TN_PID_A/TN_PID_B are, for messages (bench.sh also runs other overlays)
TN_CLEANED=0

# ---------------------------------------------------------------------------------------------
# Messages

tn_say() { printf '==> %s\n' "$*"; }
tn_note() { printf '    %s\n' "$*"; }
tn_warn() { printf 'warning: %s\n' "$*" >&2; }

# Prints a message and exits non-zero; the EXIT trap then shows the logs and cleans up.
tn_die() {
    printf 'FAILED: %s\n' "$*" >&2
    exit 1
}

# ---------------------------------------------------------------------------------------------
# Setup

# tn_init PREFIX: choose this run's names and install the cleanup traps.
# Names are PREFIX + our PID so that parallel runs never collide. Namespace names are kept to
# 15 characters like interface names, so the prefix is cut to 4 (a PID has at most 7 digits).
tn_init() {
    local prefix=${1:-pd}
    prefix=${prefix:0:4}
    TN_TAG="${prefix}$$"
    TN_NS_A="${TN_TAG}a"
    TN_NS_B="${TN_TAG}b"

    # Keep the script's own stdout/stderr: a signal that arrives while a function runs with
    # its output redirected (e.g. `tn_in_a ping … >/dev/null`) runs the traps inside that
    # redirection, and cleanup must still be able to speak.
    exec {TN_FD_OUT}>&1 {TN_FD_ERR}>&2

    # Traps first, so that an interrupt at any later point still cleans up. INT/TERM turn into
    # an ordinary exit (128+signal), which runs the EXIT trap exactly once.
    trap tn_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM

    if [[ $(id -u) -ne 0 ]]; then
        tn_die "needs root (network namespaces and TUN devices); try: sudo $0"
    fi
    local cmd
    for cmd in ip python3 curl ping; do
        command -v "$cmd" >/dev/null || tn_die "missing command: $cmd"
    done

    TN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/pilot-${TN_TAG}.XXXXXX")
    mkdir -p "$TN_DIR/a" "$TN_DIR/b" "$TN_DIR/logs"

    # Repo root and binaries: PILOT_BIN, else target/release next to the scripts.
    TN_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
    TN_BIN=${PILOT_BIN:-$TN_ROOT/target/release}
}

# Builds the release binaries if they are not there yet.
tn_ensure_binaries() {
    # This tree's target/ also holds the lab's natlab (natpair.sh); PILOT_BIN need not.
    if [[ -x $TN_BIN/pilotd && -x $TN_BIN/pilotctl && (-n ${PILOT_BIN:-} || -x $TN_BIN/natlab) ]]; then
        tn_note "binaries: $TN_BIN"
        return
    fi
    # Building only helps when the binaries are expected in this repo's target/release.
    [[ -z ${PILOT_BIN:-} ]] || tn_die "no pilotd/pilotctl in PILOT_BIN=$PILOT_BIN"
    command -v cargo >/dev/null || tn_die "no pilotd in $TN_BIN and no cargo to build it"
    tn_say "Building pilot (cargo build --release; takes a few minutes the first time)"
    (cd "$TN_ROOT" && cargo build --release) </dev/null
    [[ -x $TN_BIN/pilotd && -x $TN_BIN/pilotctl ]] ||
        tn_die "built, but there is still no pilotd/pilotctl in $TN_BIN"
}

# Creates one namespace and records it. The name is recorded before `ip netns add` so that an
# interrupt between the two cannot leak it; a name that already exists belongs to someone
# else, so we refuse instead of recording (and later deleting) it.
tn_add_netns() {
    local ns=$1
    if [[ -e /run/netns/$ns ]]; then
        tn_die "network namespace $ns already exists (not ours; leaving it alone)"
    fi
    TN_NAMESPACES+=("$ns")
    ip netns add "$ns"
    ip -n "$ns" link set lo up
}

# Two namespaces joined by a veth pair. The veth is created directly inside namespace A with
# its peer in B, so nothing ever appears in the host's own namespace.
tn_make_netns() {
    tn_add_netns "$TN_NS_A"
    tn_add_netns "$TN_NS_B"
    ip -n "$TN_NS_A" link add ul0 type veth peer name ul0 netns "$TN_NS_B"
    ip -n "$TN_NS_A" addr add "$TN_UL_A/$TN_UL_PREFIX" dev ul0
    ip -n "$TN_NS_B" addr add "$TN_UL_B/$TN_UL_PREFIX" dev ul0
    ip -n "$TN_NS_A" link set ul0 up
    ip -n "$TN_NS_B" link set ul0 up
    tn_note "namespaces $TN_NS_A ($TN_UL_A) and $TN_NS_B ($TN_UL_B), joined by a veth pair"
}

# Fresh identities in per-run state dirs (no network needed, so this runs on the host).
tn_make_identities() {
    local side fields
    for side in a b; do
        fields=$("$TN_BIN/pilotd" identity --state-dir "$TN_DIR/$side/state" --json </dev/null |
            python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["public_key"], d["address"], d["node"])')
        read -r "TN_KEY_${side^^}" "TN_ADDR_${side^^}" "TN_NODE_${side^^}" <<<"$fields"
    done
    TN_CTL_A=$TN_DIR/a/pilotd.sock
    TN_CTL_B=$TN_DIR/b/pilotd.sock
    tn_note "node A: $TN_ADDR_A ($TN_NODE_A)"
    tn_note "node B: $TN_ADDR_B ($TN_NODE_B)"
}

tn_ns_of() {
    case $1 in
    a) printf '%s' "$TN_NS_A" ;;
    b) printf '%s' "$TN_NS_B" ;;
    rdv) printf '%s' "${TN_NS_RDV:?no rendezvous namespace (natpair.sh)}" ;;
    # Any other namespace of this run by its full name (e.g. a natlab host: NAME-a2).
    *) [[ -e /run/netns/$1 ]] && printf '%s' "$1" || tn_die "unknown node '$1'" ;;
    esac
}

# Run a command on node A / node B (inside its namespace), in the foreground.
tn_in_a() { ip netns exec "$TN_NS_A" "$@"; }
tn_in_b() { ip netns exec "$TN_NS_B" "$@"; }

# pilotctl against node A / node B.
tn_ctl_a() { tn_in_a "$TN_BIN/pilotctl" --control "$TN_CTL_A" "$@"; }
tn_ctl_b() { tn_in_b "$TN_BIN/pilotctl" --control "$TN_CTL_B" "$@"; }

# tn_spawn NODE LOGFILE CMD...: start CMD in the background inside NODE's namespace, output to
# LOGFILE, stdin from /dev/null; records its PID for cleanup and leaves it in TN_LAST_PID.
# `ip netns exec` execs CMD in place, so the PID is CMD's own.
tn_spawn() {
    local ns
    ns=$(tn_ns_of "$1")
    local log=$2
    shift 2
    ip netns exec "$ns" "$@" </dev/null >"$log" 2>&1 {TN_FD_OUT}>&- {TN_FD_ERR}>&- &
    TN_LAST_PID=$!
    TN_PIDS+=("$TN_LAST_PID")
}

tn_start_daemons() {
    local side ns peer_key peer_ip extra
    for side in a b; do
        if [[ $side == a ]]; then peer_key=$TN_KEY_B peer_ip=$TN_UL_B; else peer_key=$TN_KEY_A peer_ip=$TN_UL_A; fi
        extra=()
        [[ $side == b ]] && extra=("${TN_EXTRA_B[@]}")
        local ctl_var="TN_CTL_${side^^}"
        tn_spawn "$side" "$TN_DIR/logs/pilotd-$side.log" \
            "$TN_BIN/pilotd" up \
            --state-dir "$TN_DIR/$side/state" \
            --control "${!ctl_var}" \
            --interface "$TN_IFACE" \
            --listen-port "$TN_PORT" \
            --mtu "$TN_MTU" \
            --peer "$peer_key@$peer_ip:$TN_PORT" \
            --log-level "${PILOT_LOG_LEVEL:-info}" \
            "${extra[@]}"
        printf -v "TN_PID_${side^^}" '%s' "$TN_LAST_PID"
    done
    tn_note "pilotd A pid $TN_PID_A, pilotd B pid $TN_PID_B (logs in $TN_DIR/logs)"
}

# Polls until both control sockets answer `pilotctl info`; fails at once if a daemon exits.
tn_wait_ready() {
    local deadline=$((SECONDS + TN_TIMEOUT)) side pid_var ctl_var ok
    for side in a b; do
        pid_var="TN_PID_${side^^}"
        ctl_var="TN_CTL_${side^^}"
        ok=0
        while ((SECONDS < deadline)); do
            if ! kill -0 "${!pid_var}" 2>/dev/null; then
                tn_die "pilotd on node ${side^^} exited during startup"
            fi
            if "$TN_BIN/pilotctl" --control "${!ctl_var}" info --json >/dev/null 2>&1; then
                ok=1
                break
            fi
            sleep 0.1
        done
        ((ok)) || tn_die "pilotd on node ${side^^} did not answer on ${!ctl_var} within ${TN_TIMEOUT}s"
    done
}

# Waits until the tunnel carries traffic: the first packet starts the WireGuard handshake, so
# retry a one-shot kernel ping to B's overlay address until it gets a reply.
tn_wait_tunnel() {
    local deadline=$((SECONDS + TN_TIMEOUT))
    until tn_in_a ping -6 -c 1 -W 1 -q "$TN_ADDR_B" >/dev/null 2>&1; do
        tn_check_alive
        ((SECONDS < deadline)) || tn_die "no reply through the tunnel from $TN_ADDR_B within ${TN_TIMEOUT}s"
        sleep 0.2
    done
}

# tn_wait_listen NODE ADDR PORT: wait until a TCP socket listens on ADDR:PORT (or on the
# wildcard address) inside NODE's namespace, e.g. a server just started with tn_spawn (whose
# PID, TN_LAST_PID, is watched). Asks `ss` rather than connecting, so the server never sees a
# stray probe connection (iperf3 would log it as a failed test).
tn_wait_listen() {
    local ns pid=$TN_LAST_PID deadline=$((SECONDS + TN_TIMEOUT))
    ns=$(tn_ns_of "$1")
    local addr=$2 port=$3
    until ip netns exec "$ns" ss -Hltn "sport = :$port" | awk -v a="$addr" -v p="$port" '
        $4 == a ":" p || $4 == "[" a "]:" p || $4 == "*:" p || $4 == "[::]:" p || $4 == "0.0.0.0:" p { found = 1 }
        END { exit !found }'; do
        kill -0 "$pid" 2>/dev/null || tn_die "the server for $addr port $port exited (see its log)"
        ((SECONDS < deadline)) || tn_die "nothing listens on $addr port $port after ${TN_TIMEOUT}s"
        sleep 0.1
    done
}

# Fails if either daemon has exited (e.g. crashed under load).
tn_check_alive() {
    kill -0 "$TN_PID_A" 2>/dev/null || tn_die "$TN_DAEMON on node A (pid $TN_PID_A) has exited"
    kill -0 "$TN_PID_B" 2>/dev/null || tn_die "$TN_DAEMON on node B (pid $TN_PID_B) has exited"
}

# All of the above: two nodes up and talking.
tn_up() {
    tn_ensure_binaries
    tn_make_netns
    tn_make_identities
    tn_start_daemons
    tn_wait_ready
}

# ---------------------------------------------------------------------------------------------
# Teardown

tn_dump_logs() {
    [[ -n $TN_DIR && -d $TN_DIR/logs ]] || return 0
    local f
    for f in "$TN_DIR"/logs/*.log; do
        [[ -e $f ]] || continue
        printf '\n----- %s (last 60 lines) -----\n' "$(basename "$f")" >&2
        tail -n 60 "$f" >&2 || true
    done
}

# Waits up to ~5 s for a process to exit after SIGTERM, then SIGKILLs it.
tn_stop_pid() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        tn_warn "pid $pid ignored SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true # reap it if it is our child
}

# Stops every process this run has started so far, deletes the namespaces it has created and
# runs the TN_HOOKS, but keeps TN_DIR: lets a script set up one pair of nodes after another
# (bench.sh) in the same run. Returns non-zero if a namespace could not be deleted.
tn_release() {
    local pid ns hook rc=0
    for pid in "${TN_PIDS[@]}"; do
        tn_stop_pid "$pid"
    done
    # Anything still inside our namespaces was started by this run too (e.g. a process whose
    # PID we had not recorded yet when the interrupt came); stop it so the namespace can go.
    for ns in "${TN_NAMESPACES[@]}"; do
        [[ -e /run/netns/$ns ]] || continue
        for pid in $(ip netns pids "$ns" 2>/dev/null); do
            tn_stop_pid "$pid"
        done
        if ! ip netns del "$ns"; then
            tn_warn "could not delete namespace $ns"
            rc=1
        fi
    done
    for hook in "${TN_HOOKS[@]}"; do
        "$hook" || rc=1
    done
    # Forget them only now: an interrupt half-way leaves the lists for tn_cleanup to finish.
    TN_PIDS=()
    TN_NAMESPACES=()
    TN_HOOKS=()
    return "$rc"
}

tn_cleanup() {
    local rc=$?
    ((TN_CLEANED)) && return
    TN_CLEANED=1
    # Do not let a second Ctrl-C interrupt the teardown half-way.
    trap '' INT TERM
    set +e
    if [[ -n $TN_FD_OUT ]]; then
        exec 1>&"$TN_FD_OUT" 2>&"$TN_FD_ERR"
    fi

    if ((rc != 0 && rc != 130 && rc != 143)); then
        printf '\nSomething failed (exit %s).\n' "$rc" >&2
        tn_dump_logs
    elif ((rc == 130 || rc == 143)); then
        printf '\ninterrupted; cleaning up\n' >&2
    fi

    if ! tn_release; then
        ((rc == 0)) && rc=1
    fi
    if [[ -n $TN_DIR && -d $TN_DIR ]]; then
        rm -rf -- "$TN_DIR"
    fi
    return "$rc"
}
