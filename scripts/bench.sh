#!/usr/bin/env bash
# Measures what the overlay costs: TCP throughput and ping RTT between two pilot nodes, over
# the plain underlay (veth) and over the overlay (pilot0, fd70:: addresses), in one run; then
# the same measurements through other overlays on the same machine (wireguard-go, nebula), so
# that pilot is compared with them side by side.
#
# Usage: sudo scripts/bench.sh
#   BENCH_SECONDS=N   length of each iperf3 run (default 10)
#   BENCH_JSON=FILE   also write the one-line JSON result to FILE
#   BENCH_COMPARE=... overlays to compare with, e.g. "wireguard-go nebula" (default: each one
#                     that is installed); "none" measures pilot alone
#   BENCH_INSTALL=1   apt-get install the selected overlays that are missing (wireguard-go,
#                     wireguard-tools, nebula); without it a missing one is skipped
#   BENCH_MTU=N|native  tunnel MTU: N (1280-1440) for pilot and every other overlay; the
#                     default is pilot's own (1380, or PILOT_MTU) for all of them; "native"
#                     leaves each tool at its default (pilot 1380, wireguard-go 1420, nebula 1300)
#   BENCH_NAT=0       skip the NAT section (default: run it)
#   BENCH_NAT_PAIRS=".."  NAT pairs nat1/nat2 to measure (node A behind nat1, node B behind
#                     nat2; kinds none, cone, prc, sym; "+tls" after nat1's kind: that router
#                     drops all UDP, so A reaches the rendezvous over TLS and B only through
#                     the relay over that stream), default
#                     "cone/prc prc/prc prc/sym sym/sym none/sym prc+tls/prc"
#   BENCH_RELAY_RATE=MBIT  --relay-rate of the NAT section's rendezvous (default 10000, so the
#                     relay's own speed is measured; pilotd's default is 100 Mbit/s per node)
#   PILOT_BIN=DIR     where pilotd/pilotctl are (default: target/release; built if missing)
#
# The NAT section builds a fresh NAT lab (natlab, crates/pilot-lab) per pair, with a rendezvous on its
# "internet" and a node behind each router, starts both nodes, lets alice ask bob for trust and
# bob approve (`pilotctl handshake`/`approve`), and measures from the approval the time to the
# first byte of an HTTP reply across the overlay, the time until A reports the path to B as
# direct, and then TCP throughput and ping RTT through the path it ended on
# (direct, or relayed through the rendezvous).
#
# It only measures and prints: there are no timing assertions. It exits non-zero only when a
# step fails outright (a daemon dies, iperf3 cannot connect, ping gets no reply...).
# Every overlay runs inside its own two network namespaces, created for it and removed before
# the next one starts (never two at once: the machine may have only a few cores). The underlay
# is measured once, between pilot's namespaces. Everything is removed at the end, or on Ctrl-C.
set -euo pipefail

# shellcheck source=lib/twonode.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib/twonode.sh"
# shellcheck source=lib/compare.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib/compare.sh"
# shellcheck source=lib/natpair.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib/natpair.sh"

BENCH_SECONDS=${BENCH_SECONDS:-10}
BENCH_COMPARE=${BENCH_COMPARE:-}
BENCH_INSTALL=${BENCH_INSTALL:-0}
BENCH_MTU=${BENCH_MTU:-}
BENCH_NAT=${BENCH_NAT:-1}
BENCH_NAT_PAIRS=${BENCH_NAT_PAIRS:-"cone/prc prc/prc prc/sym sym/sym none/sym prc+tls/prc"}
BENCH_RELAY_RATE=${BENCH_RELAY_RATE:-10000}
# Unique per run, as asked; each run also has its own namespaces, so this is belt and braces.
IPERF_PORT=$((5201 + $$ % 1000))
PING_COUNT=50
PING_INTERVAL=0.02
# NAT section: seconds (from the approval) allowed for the first byte and for a direct
# path; how long a relayed path must hold before it counts as where the pair ended; the HTTP
# port on node B.
NAT_TIMEOUT=20
NAT_STABLE=3
NAT_HTTP_PORT=8080

# run_iperf NAME ADDR [iperf3 options...]: one iperf3 client run from node A to node B's
# server on ADDR; raw JSON kept in $RESULTS/NAME.json for the summary.
run_iperf() {
    local name=$1 addr=$2
    shift 2
    local out=$RESULTS/$name.json
    tn_note "iperf3 -c $addr -t $BENCH_SECONDS${*:+ $*}"
    # A hard time limit on top of -t, so a stalled tunnel fails the step instead of hanging
    # the script; --foreground keeps iperf3 in our process group so Ctrl-C still reaches it.
    if ! tn_in_a timeout --foreground "$((BENCH_SECONDS + 30))" \
        iperf3 -c "$addr" -p "$IPERF_PORT" -t "$BENCH_SECONDS" --connect-timeout 5000 -J "$@" \
        >"$out" 2>"$out.err"; then
        cat "$out" "$out.err" >&2
        tn_die "iperf3 $name ($addr $*) failed"
    fi
    # iperf3 3.12 exits 0 even when it could not connect if -J is given: the error is only in
    # the JSON ("error" key). So check the result itself, and show the receiver's figure.
    local gbps
    if ! gbps=$(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
if "error" in d:
    sys.exit("iperf3: " + d["error"])
print("%.3f" % (d["end"]["sum_received"]["bits_per_second"] / 1e9))
' "$out"); then
        cat "$out" "$out.err" >&2
        tn_die "iperf3 $name ($addr $*) failed"
    fi
    tn_check_alive
    tn_note "  -> $gbps Gbit/s"
}

# run_ping NAME ADDR: kernel ping from node A; the summary parses avg and mdev.
run_ping() {
    local name=$1 addr=$2 out=$RESULTS/$1.ping
    tn_note "ping -c $PING_COUNT -i $PING_INTERVAL $addr"
    if ! tn_in_a ping -c "$PING_COUNT" -i "$PING_INTERVAL" -q "$addr" >"$out" 2>&1; then
        cat "$out" >&2
        tn_die "ping $name got no reply from $addr"
    fi
    tn_check_alive
    tn_note "  -> $(grep -E '^(rtt|round-trip)' "$out" || true)"
}

# start_iperf_server ADDR: an iperf3 server on node B bound to ADDR.
start_iperf_server() {
    local addr=$1
    tn_spawn b "$TN_DIR/logs/iperf3-server-$addr.log" iperf3 -s -B "$addr" -p "$IPERF_PORT"
    tn_wait_listen b "$addr" "$IPERF_PORT"
}

# Peak resident memory of a pilotd, from the kernel's high-water mark.
peak_rss_kib() {
    awk '/^VmHWM:/ { print $2 }' "/proc/$1/status"
}


# iface_mtu NS IFACE: the MTU an interface really has.
iface_mtu() {
    ip -n "$1" -o link show dev "$2" | sed -n 's/.* mtu \([0-9]*\) .*/\1/p'
}

# write_meta KEY FIELD=VALUE...: facts about one overlay's run, for the summary.
write_meta() {
    local key=$1
    shift
    printf '%s\n' "$@" >"$RESULTS/$key.meta"
    printf '%s\n' "$key" >>"$RESULTS/overlays"
}

# skip_overlay NAME REASON: say so now, and again under the table.
skip_overlay() {
    tn_say "$1: $2; skipping"
    printf '%s\t%s\n' "$1" "$2" >>"$RESULTS/skipped"
}

# Checks BENCH_* before anything is set up; a bad value is a usage error (exit 2).
check_settings() {
    local name
    [[ $BENCH_SECONDS =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_SECONDS must be a positive integer" >&2; exit 2; }
    case $BENCH_MTU in
    "" | native) ;;
    *)
        # 1440 = the 1500-byte veth minus IPv4 (20), UDP (8) and the tunnel header and tag:
        # 32 bytes for WireGuard (pilot, wireguard-go), 16 + 16 for nebula.
        if ! [[ $BENCH_MTU =~ ^[0-9]+$ ]] || ((BENCH_MTU < 1280 || BENCH_MTU > 1440)); then
            echo "BENCH_MTU must be a number from 1280 to 1440, or 'native'" >&2
            exit 2
        fi
        ;;
    esac
    case ${BENCH_NAT,,} in
    0 | no | false | off) BENCH_NAT=0 ;;
    1 | yes | true | on) BENCH_NAT=1 ;;
    *) echo "BENCH_NAT must be 1 or 0" >&2; exit 2 ;;
    esac
    if ((BENCH_NAT)); then
        local pair
        NAT_PAIRS=()
        for pair in ${BENCH_NAT_PAIRS//,/ }; do
            if ! [[ $pair =~ ^([a-z]+)(\+tls)?/([a-z]+)$ ]] || ! np_is_kind "${BASH_REMATCH[1]}" || ! np_is_kind "${BASH_REMATCH[3]}"; then
                echo "BENCH_NAT_PAIRS: '$pair' is not NAT1[+tls]/NAT2 with kinds from: $NP_KINDS" >&2
                exit 2
            fi
            [[ " ${NAT_PAIRS[*]} " == *" $pair "* ]] || NAT_PAIRS+=("$pair")
        done
        ((${#NAT_PAIRS[@]})) || { echo "BENCH_NAT_PAIRS is empty (BENCH_NAT=0 skips the NAT section)" >&2; exit 2; }
        [[ $BENCH_RELAY_RATE =~ ^[1-9][0-9]{0,5}$ ]] ||
            { echo "BENCH_RELAY_RATE must be a number of Mbit/s from 1 to 999999" >&2; exit 2; }
    fi
    case ${BENCH_COMPARE,,} in
    "" | all | none) ;;
    *)
        for name in ${BENCH_COMPARE//,/ }; do
            cmp_is_known "$name" || {
                echo "BENCH_COMPARE: unknown overlay '$name' (known: $(cmp_known | xargs), or none)" >&2
                exit 2
            }
        done
        ;;
    esac
}

# Decides which overlays to compare pilot with (COMPARE, in order), installing missing ones
# when BENCH_INSTALL=1 and skipping them otherwise.
select_overlays() {
    local requested=() name missing=()
    COMPARE=()
    case ${BENCH_COMPARE,,} in
    none) ;;
    "" | all) mapfile -t requested < <(cmp_known) ;;
    *) read -ra requested <<<"${BENCH_COMPARE//,/ }" ;;
    esac
    for name in $(cmp_known); do
        [[ " ${requested[*]} " == *" $name "* ]] || skip_overlay "$name" "not selected (BENCH_COMPARE=$BENCH_COMPARE)"
    done
    if [[ $BENCH_INSTALL =~ ^(1|yes|true)$ ]]; then
        for name in "${requested[@]}"; do
            cmp_installed "$name" || missing+=("$name")
        done
        cmp_install "${missing[@]}"
    fi
    for name in "${requested[@]}"; do
        [[ " ${COMPARE[*]} " == *" $name "* ]] && continue # listed twice
        if cmp_installed "$name"; then
            COMPARE+=("$name")
        else
            skip_overlay "$name" "not installed (apt-get install -y $(cmp_packages "$name"), or BENCH_INSTALL=1)"
        fi
    done
}

# A pilotd older than the sources measures old code; say so (building is left to the user).
warn_if_stale() {
    [[ -z ${PILOT_BIN:-} && -x $TN_BIN/pilotd ]] || return 0
    local newer
    newer=$(find "$TN_ROOT/src" "$TN_ROOT/Cargo.toml" "$TN_ROOT/Cargo.lock" -newer "$TN_BIN/pilotd" \
        -type f -print -quit 2>/dev/null || true)
    [[ -z $newer ]] ||
        tn_warn "$TN_BIN/pilotd is older than ${newer#"$TN_ROOT"/} (and maybe more): this measures the old build; run cargo build --release"
}

# Pilot, as this script has always measured it, plus the underlay between the same namespaces.
bench_pilot() {
    tn_say "pilot: setting up two nodes in network namespaces $TN_NS_A and $TN_NS_B"
    tn_up
    tn_wait_tunnel
    local mtu ul_mtu
    mtu=$(tn_ctl_a info --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["mtu"])')
    ul_mtu=$(iface_mtu "$TN_NS_A" ul0)
    tn_note "tunnel up: $TN_ADDR_A <-> $TN_ADDR_B, overlay MTU $mtu"

    tn_say "Ping RTT, underlay then overlay ($PING_COUNT pings, ${PING_INTERVAL}s apart)"
    run_ping underlay_ping "$TN_UL_B"
    run_ping pilot_ping "$TN_ADDR_B"

    tn_say "Starting iperf3 servers on node B (port $IPERF_PORT)"
    start_iperf_server "$TN_UL_B"
    start_iperf_server "$TN_ADDR_B"

    tn_say "TCP throughput over the underlay (veth, no tunnel)"
    run_iperf underlay_tcp "$TN_UL_B"
    tn_say "TCP throughput over the overlay (pilot0, encrypted tunnel)"
    run_iperf pilot_tcp "$TN_ADDR_B"
    run_iperf pilot_tcp_reverse "$TN_ADDR_B" -R
    run_iperf pilot_tcp_4streams "$TN_ADDR_B" -P 4

    # Read the high-water marks while the daemons still run.
    local rss_a rss_b version
    rss_a=$(peak_rss_kib "$TN_PID_A")
    rss_b=$(peak_rss_kib "$TN_PID_B")
    version=$("$TN_BIN/pilotd" --version </dev/null | awk '{ print $2 }')
    write_meta pilot name=pilot "mtu=$mtu" "underlay_mtu=$ul_mtu" inner=IPv6 \
        "rss_a=$rss_a" "rss_b=$rss_b" "version=${version:-unknown}"

    tn_say "pilot: stopping the nodes and removing their namespaces"
    tn_release
}

# Userspace mode beside kernel mode: node B runs `pilotd up --userspace` (the smoltcp stack, no
# TUN, its iperf3 server on 127.0.0.1 reached through --expose), node A is a kernel node as
# above. A->B is the userspace stack receiving, -R the userspace stack sending.
bench_userspace() {
    tn_say "pilot userspace: node B in userspace mode (no TUN), node A in kernel mode, fresh namespaces"
    TN_EXTRA_B=(--userspace --socks5 off --expose "$IPERF_PORT")
    tn_up
    TN_EXTRA_B=()
    tn_wait_tunnel
    tn_spawn b "$TN_DIR/logs/iperf3-server-userspace.log" iperf3 -s -B 127.0.0.1 -p "$IPERF_PORT"
    tn_wait_listen b 127.0.0.1 "$IPERF_PORT"
    tn_say "pilot userspace: ping RTT to the userspace node (answered by its stack)"
    run_ping userspace_ping "$TN_ADDR_B"
    tn_say "pilot userspace: TCP throughput, kernel node A -> userspace node B, then -R"
    run_iperf userspace_tcp "$TN_ADDR_B"
    run_iperf userspace_tcp_reverse "$TN_ADDR_B" -R
    printf '%s\n' "rss_b=$(peak_rss_kib "$TN_PID_B")" >"$RESULTS/userspace.meta"
    tn_say "pilot userspace: stopping the nodes and removing their namespaces"
    tn_release
}

# bench_overlay NAME: the same measurements through another overlay, in fresh namespaces.
bench_overlay() {
    local name=$1 key=${1//-/_} mtu
    if [[ $BENCH_MTU == native ]]; then
        mtu=$(cmp_default_mtu "$name")
    else
        mtu=$PILOT_MTU_USED
    fi
    tn_say "$name: setting up two nodes in fresh network namespaces"
    cmp_up "$name" "$mtu"
    mtu=$(iface_mtu "$TN_NS_A" "${CMP_IFACE}a")
    tn_note "tunnel up: $CMP_ADDR_A <-> $CMP_ADDR_B ($CMP_INNER), MTU $mtu"

    tn_say "$name: ping RTT through the tunnel ($PING_COUNT pings, ${PING_INTERVAL}s apart)"
    run_ping "${key}_ping" "$CMP_ADDR_B"
    tn_say "$name: TCP throughput through the tunnel (iperf3 server on node B, port $IPERF_PORT)"
    start_iperf_server "$CMP_ADDR_B"
    run_iperf "${key}_tcp" "$CMP_ADDR_B"
    run_iperf "${key}_tcp_reverse" "$CMP_ADDR_B" -R
    run_iperf "${key}_tcp_4streams" "$CMP_ADDR_B" -P 4

    local rss_a rss_b
    rss_a=$(peak_rss_kib "$TN_PID_A")
    rss_b=$(peak_rss_kib "$TN_PID_B")
    write_meta "$key" "name=$name" "mtu=$mtu" "inner=$CMP_INNER" \
        "rss_a=$rss_a" "rss_b=$rss_b" "version=$(cmp_version "$name")"

    tn_say "$name: stopping the nodes and removing their namespaces"
    tn_release
}

# nat_ms T: milliseconds from NAT_T0 to the timestamp T (date +%s.%N), or "" for "".
nat_ms() {
    [[ -n $1 ]] || return 0
    awk -v t0="$NAT_T0" -v t="$1" 'BEGIN { printf "%.0f", (t - t0) * 1000 }'
}

# nat_watch_path FILE SECS: polls A's path to B every ~20 ms and appends "PATH TIMESTAMP" to
# FILE whenever it changes; stops at "direct" or after SECS seconds. Runs in the background.
nat_watch_path() {
    local file=$1 end=$((SECONDS + $2)) path last=""
    while ((SECONDS < end)); do
        path=$(np_path)
        if [[ -n $path && $path != "$last" ]]; then
            printf '%s %s\n' "$path" "$(date +%s.%N)" >>"$file"
            last=$path
        fi
        [[ $path == direct ]] && return 0
        sleep 0.02
    done
}

# nat_forget_pid PID: drop a PID we have stopped ourselves from TN_PIDS, so that cleanup never
# signals it again (the number could belong to someone else by then).
nat_forget_pid() {
    local keep=() p
    for p in "${TN_PIDS[@]}"; do
        [[ $p == "$1" ]] || keep+=("$p")
    done
    TN_PIDS=("${keep[@]}")
}

# nat_first_byte URL: retries curl from node A every 20 ms (1 s timeout per try) until an HTTP
# reply arrives; prints the timestamp of its first byte (curl's time to first byte, counted
# back from when it returned).
nat_first_byte() {
    local url=$1 out now deadline=$((SECONDS + NAT_TIMEOUT))
    while :; do
        if out=$(tn_in_a curl -sS -o /dev/null -m 1 -w '%{time_total} %{time_starttransfer}' "$url" 2>/dev/null); then
            now=$(date +%s.%N)
            awk -v now="$now" -v w="$out" 'BEGIN { split(w, x, " "); printf "%.6f", now - x[1] + x[2] }'
            return 0
        fi
        np_check_alive
        ((SECONDS < deadline)) || tn_die "no HTTP reply from node B across the overlay within ${NAT_TIMEOUT}s ($url)"
        sleep 0.02
    done
}

# bench_nat_pair NAT1 NAT2: one NAT pair in a fresh natlab.
bench_nat_pair() {
    local nat1=${1%+tls} nat2=$2 pair="$1/$2" key="nat_${1/+/_}_${2}" want tls=0
    [[ $1 == *+tls ]] && tls=1
    want=$(np_expected_path "$nat1" "$nat2")
    ((tls)) && want=relay
    tn_say "NAT $pair: fresh natlab, node A behind nat1=$nat1$( ((tls)) && echo ' (dropping all UDP: A goes over TLS)'), node B behind nat2=$nat2 (expected path: $want)"
    np_lab_up "$nat1" "$nat2" b
    np_make_identities "$TN_DIR/$key"
    local rdv_args=("${NP_RDV_ARGS[@]}")
    if ((tls)); then
        ip netns exec "${NP_LAB}-n1" nft -f - <<'NFT' || tn_die "could not block UDP on nat1"
table inet bench_noudp {
    chain fwd_udp {
        type filter hook forward priority -10;
        meta l4proto udp drop
    }
}
NFT
        NP_RDV_ARGS+=(--tcp-listen "$NP_RDV_IP:443")
    fi
    np_start_rendezvous "$key-rendezvous"
    NP_RDV_ARGS=("${rdv_args[@]}")
    # The web server first: it binds ::, so it is ready before B's pilot0 exists, and the first
    # byte measures the overlay alone.
    local url="http://[$TN_ADDR_B]:$NAT_HTTP_PORT/"
    tn_spawn b "$TN_DIR/logs/$key-http-server.log" \
        python3 -m http.server --bind :: --directory "$NAT_SITE" "$NAT_HTTP_PORT"
    tn_wait_listen b :: "$NAT_HTTP_PORT"

    local paths=$RESULTS/$key.paths watcher
    : >"$paths"
    tn_note "starting both nodes; alice asks bob for trust, bob approves; from the approval on, curl $url every 20 ms and poll A's path every 20 ms"
    np_start_nodes "$key-pilotd"
    tn_wait_ready
    if ((tls)); then np_wait_registered a tls; else np_wait_registered a; fi
    np_wait_registered b
    np_trust quiet
    # Times count from bob's approval: the moment both sides have agreed.
    NAT_T0=$NP_T_APPROVED
    nat_watch_path "$paths" "$NAT_TIMEOUT" </dev/null {TN_FD_OUT}>&- {TN_FD_ERR}>&- &
    watcher=$!
    TN_PIDS+=("$watcher")

    local t_first
    t_first=$(nat_first_byte "$url")
    tn_note "  -> first byte after $(nat_ms "$t_first") ms"

    # Where does the pair end? Direct as soon as A says so; relay once it has held NAT_STABLE
    # seconds (the watcher stops at direct, or gives up after NAT_TIMEOUT).
    local last="" since=""
    while kill -0 "$watcher" 2>/dev/null; do
        np_check_alive
        if [[ $want == relay && -s $paths ]]; then
            read -r last since < <(tail -n 1 "$paths")
            if [[ $last == relay ]] && awk -v s="$since" -v now="$(date +%s.%N)" -v h="$NAT_STABLE" 'BEGIN { exit !(now - s >= h) }'; then
                break
            fi
        fi
        sleep 0.05
    done
    tn_stop_pid "$watcher"
    nat_forget_pid "$watcher"

    local path t_direct t_relay
    path=$(awk 'END { print $1 }' "$paths")
    t_direct=$(awk '$1 == "direct" { print $2; exit }' "$paths")
    t_relay=$(awk '$1 == "relay" { print $2; exit }' "$paths")
    [[ -n $path ]] || path=$(np_path)
    if [[ -n $t_direct ]]; then
        tn_note "  -> path direct after $(nat_ms "$t_direct") ms"
    else
        tn_note "  -> path $path (held ${NAT_STABLE}s; relayed since $(nat_ms "$t_relay") ms)"
    fi
    [[ $path == "$want" ]] || tn_warn "NAT $pair: ended on '$path', expected '$want'"

    tn_say "NAT $pair: ping RTT and TCP throughput through the $path path"
    run_ping "${key}_ping" "$TN_ADDR_B"
    start_iperf_server "$TN_ADDR_B"
    run_iperf "${key}_tcp" "$TN_ADDR_B"
    local path_after
    path_after=$(np_path)
    [[ $path_after == "$path" ]] || tn_warn "NAT $pair: the path changed from $path to $path_after during the measurements"

    printf '%s\n' "pair=$pair" "key=$key" "want=$want" "path=$path" "path_after=$path_after" \
        "first_byte_ms=$(nat_ms "$t_first")" "direct_ms=$(nat_ms "$t_direct")" \
        "relay_ms=$(nat_ms "$t_relay")" >"$RESULTS/$key.nat"
    printf '%s\n' "$key" >>"$RESULTS/nat_pairs"

    tn_say "NAT $pair: stopping the nodes and the rendezvous, removing the lab"
    tn_release
}

# The NAT section: each pair of BENCH_NAT_PAIRS in turn.
bench_nat() {
    NAT_SITE=$TN_DIR/site
    mkdir -p "$NAT_SITE"
    echo "pilot NAT bench" >"$NAT_SITE/index.html"
    NP_RDV_ARGS=(--relay-rate "$BENCH_RELAY_RATE")
    local pair
    for pair in "${NAT_PAIRS[@]}"; do
        bench_nat_pair "${pair%/*}" "${pair#*/}"
    done
}

# Reads the raw results and prints the human table, then the JSON line (also to BENCH_JSON).
summarize() {
    local mtu_mode=equal
    [[ $BENCH_MTU == native ]] && mtu_mode=native
    BENCH_SECONDS=$BENCH_SECONDS RESULTS=$RESULTS MTU_MODE=$mtu_mode LOADAVG=$LOADAVG_BEFORE \
        BENCH_NAT=$BENCH_NAT RELAY_RATE=$BENCH_RELAY_RATE NAT_STABLE=$NAT_STABLE \
        KNOWN="$(cmp_known | xargs)" \
        WG_TOOLS_VERSION=$(command -v wg >/dev/null && cmp_version wireguard-tools || echo "") \
        IPERF3_VERSION=$(iperf3 --version 2>/dev/null | awk 'NR == 1 { print $2 }') \
        COMMIT=$(git -C "$TN_ROOT" describe --always --dirty 2>/dev/null || echo unknown) \
        python3 "$TN_ROOT/scripts/lib/bench_summary.py"
}

main() {
    check_settings
    command -v iperf3 >/dev/null || { echo "missing command: iperf3" >&2; exit 1; }
    if ((BENCH_NAT)) && ! command -v nft >/dev/null; then
        echo "missing command: nft (apt-get install nftables), needed by the NAT section; BENCH_NAT=0 skips it" >&2
        exit 1
    fi
    LOADAVG_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
    tn_init pbn
    RESULTS=$TN_DIR/results
    mkdir -p "$RESULTS"
    [[ $BENCH_MTU =~ ^[0-9]+$ ]] && TN_MTU=$BENCH_MTU

    select_overlays
    warn_if_stale
    bench_pilot
    bench_userspace
    PILOT_MTU_USED=$(awk -F= '$1 == "mtu" { print $2 }' "$RESULTS/pilot.meta")
    local name
    for name in "${COMPARE[@]}"; do
        bench_overlay "$name"
    done
    if ((BENCH_NAT)); then
        bench_nat
    else
        tn_say "NAT section: skipped (BENCH_NAT=0)"
    fi

    summarize
}

main "$@"
