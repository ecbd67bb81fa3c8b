# shellcheck shell=bash
# Two pilot nodes behind NAT routers, found by each other through a rendezvous: a NAT lab
# (the `natlab` binary, crates/pilot-lab) with pilotd in it, for scripts/demo.sh and bench.sh.
# Builds on twonode.sh (source that first): its cleanup, tn_spawn, tn_in_a/b, tn_ctl_a/b,
# tn_wait_ready and tn_check_alive work unchanged on these nodes.
#
#   NAME-rdv   pilotd rendezvous on 203.0.113.10:7000 (and :7001 for NAT detection)
#     |
#   NAME-inet ("internet")
#     |                                   |
#   NAME-n1 nat1 (203.0.113.1)          NAME-n2 nat2 (203.0.113.2)
#     |                                   |
#   NAME-a  node A 198.51.100.10        NAME-b  node B 192.0.2.10
#
# Usage (after tn_init):
#   np_lab_up prc sym       # a fresh lab with a unique NAME; tn_release (or the EXIT trap)
#                           # stops our processes and runs `natlab down NAME`
#   np_make_identities DIR  # keys of the rendezvous and both nodes, state under DIR
#   np_start_rendezvous     # in NAME-rdv, waits until it listens
#   np_start_nodes          # pilotd up on a (alice) and b (bob), registering (no waiting)
#   np_trust                # alice: handshake bob; bob: approve alice; until both trust
#   tn_wait_ready           # until both control sockets answer
#   np_path                 # A's path to B: direct, relay or none

NP_RDV_IP=203.0.113.10
NP_RDV_PORT=7000
NP_KINDS="none cone prc sym"
NP_LAB=""         # the natlab this run brought up and has not removed yet
NP_RDV_ARGS=()    # extra flags for `pilotd rendezvous` (bench.sh: --relay-rate)

# np_natlab ARGS...: the natlab binary (crates/pilot-lab), beside pilotd or in this tree.
np_natlab() {
    local bin
    for bin in "$TN_BIN/natlab" "$TN_ROOT/target/release/natlab" "$TN_ROOT/target/debug/natlab"; do
        if [[ -x $bin ]]; then
            "$bin" "$@"
            return
        fi
    done
    tn_die "no natlab binary (crates/pilot-lab) in $TN_BIN or target/: run cargo build --release"
}

np_is_kind() { [[ " $NP_KINDS " == *" $1 "* && -n $1 ]]; }

# np_expected_path KIND1 KIND2: the path pilot should end on for this pair of NATs. Only two
# NATs that both map a new port per destination (sym) defeat it; against a home router (prc)
# a symmetric NAT is found by birthday probing; every other pair goes direct at the first punch.
np_expected_path() {
    case "$1/$2" in
    sym/sym) echo relay ;;
    *) echo direct ;;
    esac
}

# np_describe KIND: one line about a NAT kind, for people.
np_describe() {
    case $1 in
    none) echo "no NAT (a routed, public address)" ;;
    cone) echo "full-cone NAT (one public port per socket, anyone may send to it)" ;;
    prc) echo "home router (Linux masquerade: keeps the port, only lets in replies from the exact ip:port contacted)" ;;
    sym) echo "carrier-grade / symmetric NAT (a new public port for every destination)" ;;
    esac
}

# Removes the lab (a TN_HOOKS entry: runs after tn_release has stopped our processes; natlab's
# `down` also stops anything else still running in the lab's namespaces).
np_lab_down() {
    [[ -n $NP_LAB ]] || return 0
    local out rc=0
    out=$(np_natlab down "$NP_LAB" 2>&1) || rc=$?
    ((rc == 0)) || printf '%s\n' "$out" >&2
    NP_LAB=""
    return "$rc"
}

# np_lab_up KIND1 KIND2 [PREFIX]: a fresh natlab with nat1=KIND1 (node A's router) and
# nat2=KIND2 (node B's). Its name is PREFIX (one letter) plus five digits, unused by any lab
# or namespace; TN_NS_A, TN_NS_B and TN_NS_RDV then name the lab's a, b and rdv.
np_lab_up() {
    local nat1=$1 nat2=$2 prefix=${3:-p} try name run=${NATLAB_RUN_DIR:-/run/natlab}
    command -v nft >/dev/null || tn_die "missing command: nft (apt-get install nftables), needed by natlab"
    for ((try = 0; try < 50; try++)); do
        name=$(printf '%s%05d' "${prefix:0:1}" $((($$ + try * 7919 + (try > 0 ? RANDOM : 0)) % 100000)))
        [[ -e $run/$name ]] && continue
        compgen -G "/run/netns/$name-*" >/dev/null && continue
        break
    done
    ((try < 50)) || tn_die "could not find a free natlab name"
    # Recorded before `up` so that cleanup removes it even if we are stopped while it runs
    # (natlab rolls back a failed `up` itself; `down` of a lab that is not there is a no-op).
    NP_LAB=$name
    TN_HOOKS+=(np_lab_down)
    local out
    if ! out=$(np_natlab up "$name" --nat1 "$nat1" --nat2 "$nat2" 2>&1 </dev/null); then
        NP_LAB="" # not ours (or already rolled back by natlab)
        printf '%s\n' "$out" >&2
        tn_die "natlab up $name --nat1 $nat1 --nat2 $nat2 failed"
    fi
    # shellcheck disable=SC2034 # twonode.sh's, read by tn_in_a/b, tn_spawn
    TN_NS_A="$name-a"
    # shellcheck disable=SC2034
    TN_NS_B="$name-b"
    TN_NS_RDV="$name-rdv"
}

# np_resolver_a: programs run with `ip netns exec` in node A's namespace ask pilotd's DNS stub
# (fd70::53) for names: `ip netns exec NS` bind-mounts /etc/netns/NS/resolv.conf over
# /etc/resolv.conf. The directory is removed by cleanup (a TN_HOOKS entry), however we exit.
np_resolver_a() {
    NP_ETC_A=/etc/netns/$TN_NS_A
    TN_HOOKS+=(np_resolver_down)
    mkdir -p "$NP_ETC_A"
    printf 'nameserver fd70::53\noptions timeout:2 attempts:2\n' >"$NP_ETC_A/resolv.conf"
}

np_resolver_down() {
    [[ -n ${NP_ETC_A:-} ]] || return 0
    rm -rf "$NP_ETC_A"
    rmdir /etc/netns 2>/dev/null || true
    NP_ETC_A=""
}

# np_make_identities DIR: fresh keys for the rendezvous (DIR/rdv) and the nodes (DIR/a/state,
# DIR/b/state); sets NP_RDV_KEY and twonode.sh's TN_KEY_*, TN_ADDR_*, TN_NODE_*, TN_CTL_*.
np_make_identities() {
    NP_DIR=$1
    mkdir -p "$NP_DIR/a" "$NP_DIR/b"
    mkdir -m 700 "$NP_DIR/rdv" # the rendezvous warns about a data dir others can read
    local side fields
    for side in rdv a b; do
        local state=$NP_DIR/$side/state
        [[ $side == rdv ]] && state=$NP_DIR/rdv
        fields=$("$TN_BIN/pilotd" identity --state-dir "$state" --json </dev/null |
            python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["public_key"], d["address"], d["node"])') ||
            tn_die "pilotd identity --state-dir $state failed"
        if [[ $side == rdv ]]; then
            read -r NP_RDV_KEY _ <<<"$fields"
        else
            read -r "TN_KEY_${side^^}" "TN_ADDR_${side^^}" "TN_NODE_${side^^}" <<<"$fields"
        fi
    done
    TN_CTL_A=$NP_DIR/a/pilotd.sock
    # shellcheck disable=SC2034 # twonode.sh's, read by tn_ctl_b
    TN_CTL_B=$NP_DIR/b/pilotd.sock
}

# np_start_rendezvous [LOGNAME]: pilotd rendezvous in the lab's rdv namespace; returns when
# both its UDP ports are bound.
np_start_rendezvous() {
    local log=$TN_DIR/logs/${1:-rendezvous}.log
    tn_spawn rdv "$log" "$TN_BIN/pilotd" rendezvous \
        --listen "$NP_RDV_IP:$NP_RDV_PORT" --data-dir "$NP_DIR/rdv" \
        --log-level "${PILOT_LOG_LEVEL:-info}" "${NP_RDV_ARGS[@]}"
    NP_PID_RDV=$TN_LAST_PID
    local deadline=$((SECONDS + TN_TIMEOUT)) port
    for port in "$NP_RDV_PORT" $((NP_RDV_PORT + 1)); do
        until ip netns exec "$TN_NS_RDV" ss -Hlun "sport = :$port" | grep -q .; do
            kill -0 "$NP_PID_RDV" 2>/dev/null || tn_die "the rendezvous exited during startup (see $log)"
            ((SECONDS < deadline)) || tn_die "the rendezvous did not listen on UDP port $port within ${TN_TIMEOUT}s"
            sleep 0.05
        done
    done
}

# np_start_nodes [LOGPREFIX]: pilotd up on a (hostname alice) and b (bob), back to back, each
# registering with the rendezvous (pinned by its key). Does not wait for anything.
np_start_nodes() {
    local prefix=${1:-pilotd} side name
    for side in a b; do
        if [[ $side == a ]]; then name=alice; else name=bob; fi
        local ctl_var="TN_CTL_${side^^}"
        tn_spawn "$side" "$TN_DIR/logs/$prefix-$side.log" \
            "$TN_BIN/pilotd" up \
            --state-dir "$NP_DIR/$side/state" \
            --control "${!ctl_var}" \
            --interface "$TN_IFACE" \
            --rendezvous "$NP_RDV_KEY@$NP_RDV_IP:$NP_RDV_PORT" \
            --hostname "$name" \
            --log-level "${PILOT_LOG_LEVEL:-info}"
        printf -v "TN_PID_${side^^}" '%s' "$TN_LAST_PID"
    done
}

# np_trust [QUIET]: the handshake a user does — alice asks bob (by name), bob sees the request
# and approves it — then waits until alice lists bob as trusted. Prints the commands and their
# output unless QUIET is given.
np_trust() {
    local quiet=${1:-} deadline=$((SECONDS + TN_TIMEOUT)) out
    [[ -n $quiet ]] || tn_note "\$ pilotctl handshake bob \"demo\"    # on node A"
    out=$("$TN_BIN/pilotctl" --control "$TN_CTL_A" handshake bob "demo" 2>&1) ||
        tn_die "pilotctl handshake bob failed: $out"
    [[ -n $quiet ]] || sed 's/^/    A: /' <<<"$out"
    until "$TN_BIN/pilotctl" --control "$TN_CTL_B" pending --json 2>/dev/null | grep -q "$TN_KEY_A"; do
        np_check_alive
        ((SECONDS < deadline)) || tn_die "bob never received alice's trust request within ${TN_TIMEOUT}s"
        sleep 0.05
    done
    if [[ -z $quiet ]]; then
        tn_note "\$ pilotctl pending    # on node B"
        "$TN_BIN/pilotctl" --control "$TN_CTL_B" pending | sed 's/^/    B: /'
        tn_note "\$ pilotctl approve alice    # on node B"
    fi
    out=$("$TN_BIN/pilotctl" --control "$TN_CTL_B" approve alice 2>&1) ||
        tn_die "pilotctl approve alice failed: $out"
    [[ -n $quiet ]] || sed 's/^/    B: /' <<<"$out"
    NP_T_APPROVED=$(date +%s.%N)
    until "$TN_BIN/pilotctl" --control "$TN_CTL_A" trust --json 2>/dev/null | grep -q "$TN_KEY_B"; do
        np_check_alive
        ((SECONDS < deadline)) || tn_die "alice never countersigned bob's approval within ${TN_TIMEOUT}s"
        sleep 0.02
    done
}

# tn_check_alive, plus the rendezvous.
np_check_alive() {
    tn_check_alive
    kill -0 "$NP_PID_RDV" 2>/dev/null || tn_die "the rendezvous (pid $NP_PID_RDV) has exited"
}

# np_path: A's path to B as `pilotctl peers --json` reports it (direct, relay, none), or
# nothing if A cannot say yet; never fails. Cheap enough to poll every 20 ms (no python, no
# netns exec: the control socket is a file).
np_path() {
    local out
    out=$("$TN_BIN/pilotctl" --control "$TN_CTL_A" peers --json 2>/dev/null) || return 0
    sed -n '/^ *"path": *"[a-z]*"/{s/^ *"path": *"\([a-z]*\)".*/\1/p;q}' <<<"$out"
}

# np_wait_registered SIDE [tls]: until the node's netcheck says registered with the NAT
# measured, or (tls: its UDP blocked, no NAT to measure) registered over TLS.
np_wait_registered() {
    local side=$1 ctl_var="TN_CTL_${1^^}" limit=$TN_TIMEOUT what="register with the rendezvous (or measure its NAT)"
    local check='d.get("registered") and d.get("nat") not in (None, "unknown")'
    if [[ ${2:-} == tls ]]; then
        check='d.get("registered") and d.get("stream")'
        what="register with the rendezvous over TLS"
        limit=$((TN_TIMEOUT + 15))
    fi
    local deadline=$((SECONDS + limit))
    until "$TN_BIN/pilotctl" --control "${!ctl_var}" netcheck --json 2>/dev/null |
        python3 -c "import json,sys; d=json.load(sys.stdin); sys.exit(not ($check))" 2>/dev/null; do
        np_check_alive
        ((SECONDS < deadline)) || tn_die "node ${side^^} did not $what within ${limit}s"
        sleep 0.1
    done
}
