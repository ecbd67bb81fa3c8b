#!/usr/bin/env bash
# natlab: a NAT test lab built from network namespaces, for pilot's NAT-traversal tests, demo
# and benchmark. Needs root, iproute2, nftables, python3 and setsid (util-linux); iptables for
# --delay; ping (iputils-ping) for `check` of a lab with --loss/--delay.
#
#   natlab.sh up NAME [--nat1 KIND] [--nat2 KIND] [--loss PCT] [--delay MS]
#                [--v6-1 V6KIND] [--v6-2 V6KIND] [--no-v4 1|2]
#   natlab.sh down NAME              remove everything of lab NAME (idempotent)
#   natlab.sh status NAME            namespaces, addresses, NAT kinds, impairment
#   natlab.sh check NAME             measure that each NAT behaves as its kind says; one
#                                    PASS/FAIL line per property, non-zero exit on any FAIL
#   natlab.sh exec NAME HOST CMD…    run CMD inside HOST's namespace
#   natlab.sh addr NAME HOST         HOST's own address
#   natlab.sh public NAME HOST       the address the internet sees for HOST (for nat1/nat2:
#                                    the router's public address)
#   natlab.sh flush NAME nat1|nat2   flush that router's conntrack table (all NAT mappings)
#
# HOST is one of a, a2, b, rdv, nat1, nat2, inet. NAME is 1-6 characters [A-Za-z0-9_]; every
# namespace is NAME-<suffix>, so several labs with different NAMEs run side by side. Nothing is
# created in the root namespace: every veth is created inside a lab namespace with its peer in
# another one, and no namespace has a route or link to the machine's own uplink. Per-lab state
# (config, the namespaces created, helper programs, logs) lives in $NATLAB_RUN_DIR/NAME
# (default /run/natlab/NAME) and nowhere else.
#
# Topology (all addresses from the documentation ranges; IPv4 only: IPv6 is off on the lab's
# links, not on lo or on interfaces created later such as pilot's TUN):
#
#                         NAME-rdv: eth0 203.0.113.10, and 203.0.113.11 (a second "host",
#                                   used by `check` as an unrelated third party)
#                                       |
#   NAME-n1 (nat1) ---------------- NAME-inet ---------------- NAME-n2 (nat2)
#   wan 203.0.113.1        "internet" router 203.0.113.254     wan 203.0.113.2
#   br0 198.51.100.1/24    point-to-point /32 links n1, n2,    br0 192.0.2.1/24
#    |                     rdv; no NAT, no default route        |
#    +-- NAME-a   eth0 198.51.100.10/24                          +-- NAME-b eth0 192.0.2.10/24
#    +-- NAME-a2  eth0 198.51.100.11/24
#
# IPv6 (--v6-1/--v6-2, per LAN; off by default) adds addresses from 2001:db8::/32, no NAT:
#   inet 2001:db8:f1::fe, 2001:db8:f2::fe, 2001:db8:f0::fe on its links to n1, n2, rdv;
#   nat1 wan 2001:db8:f1::1, LAN1 2001:db8:1::/64 (gw ::1, a ::10, a2 ::11);
#   nat2 wan 2001:db8:f2::1, LAN2 2001:db8:2::/64 (gw ::1, b ::10);
#   rdv 2001:db8:f0::10 (whenever either LAN has IPv6).
# V6KIND: off (no IPv6 on that LAN), open (routed, no filter), fw (a stateful firewall as home
# routers have: outbound and its replies pass, nothing unsolicited comes in). --no-v4 N takes
# the IPv4 default route from LAN N's hosts: IPv6-only hosts (their LAN addresses stay).
#
# Hosts keep the same addresses whatever the NAT kind; each host's default route is its NAT
# router, each router's default route is inet. The hosts of one LAN share an L2 bridge (br0 in
# the router's namespace, with bridge netfilter off there), so they reach each other directly.
#
# NAT kinds (--nat1/--nat2, default prc), nftables in the router namespace:
#   none  routed, no NAT and no filtering: inet routes the LAN prefix to the router, so the
#         hosts' own addresses (198.51.100.x / 192.0.2.x, documentation ranges too) are public.
#   cone  full cone (endpoint-independent mapping and filtering): 1:1 snat+dnat of the router's
#         public address to the first host (a, or b). Ports are kept as long as they are free.
#         Only one host can own a 1:1 address: a2 behind a cone nat1 gets plain masquerade,
#         i.e. it behaves as prc.
#   prc   Linux masquerade: endpoint-independent mapping (port kept when free),
#         port-restricted filtering (only replies from the exact remote ip:port get in).
#   sym   masquerade fully-random: a new random public port for every destination.
# In the NAT kinds the router drops unsolicited packets silently (no ICMP errors) and answers
# pings on its public address (under cone, pings go to the 1:1 host). No hairpinning.
#
# Impairment (--loss PCT, --delay MS) applies to each NAT router's public link, in each
# direction, done in the inet namespace: a packet from a to rdv crosses one impaired link, a
# packet from a to b two. So the RTT a<->rdv gains 2*MS and a<->b 4*MS; the round-trip loss
# a<->rdv is 1-(1-PCT/100)^2. Loss is nftables `numgen random` (PCT may have two decimals).
# The kernel has no sch_netem, so the delay is a small userspace delayer (python3, speaking
# nfnetlink_queue) fed by iptables NFQUEUE rules; it keeps packet order, holds at most 50000
# packets (more are dropped) and costs CPU: measured here, TCP from a to b (two impaired
# links) ran at 300 Mbit/s, and UDP at ~27k packets/s lost 5% in the delayer.
#
# `check` starts a probe server in rdv (ephemeral ports) and clients in a, a2 and b, and takes
# about 5 s (longer with --delay/--loss). `down` stops every process still running inside the
# lab's namespaces (including ones a test started with `exec`), then deletes them.
set -euo pipefail

NL_SELF=$(basename "$0")
NL_LIB="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib"

NL_RUN=${NATLAB_RUN_DIR:-/run/natlab}
NL_HOSTS=(inet rdv nat1 nat2 a a2 b)
NL_KINDS=(none cone prc sym)

NL_INET_IP=203.0.113.254
NL_NAT1_PUB=203.0.113.1
NL_NAT2_PUB=203.0.113.2
NL_RDV_IP=203.0.113.10
NL_RDV_IP2=203.0.113.11
NL_LAN1=198.51.100.0/24
NL_LAN1_GW=198.51.100.1
NL_A_IP=198.51.100.10
NL_A2_IP=198.51.100.11
NL_LAN2=192.0.2.0/24
NL_LAN2_GW=192.0.2.1
NL_B_IP=192.0.2.10
NL_LAN_BITS=24
NL_QUEUE=0 # NFQUEUE number of the delayer (queues are per namespace)
NL_V6KINDS=(off open fw)
NL_INET6_N1=2001:db8:f1::fe
NL_INET6_N2=2001:db8:f2::fe
NL_INET6_RDV=2001:db8:f0::fe
NL_NAT1_PUB6=2001:db8:f1::1
NL_NAT2_PUB6=2001:db8:f2::1
NL_RDV_IP6=2001:db8:f0::10
NL_LAN1_6=2001:db8:1::/64
NL_LAN1_GW6=2001:db8:1::1
NL_A_IP6=2001:db8:1::10
NL_A2_IP6=2001:db8:1::11
NL_LAN2_6=2001:db8:2::/64
NL_LAN2_GW6=2001:db8:2::1
NL_B_IP6=2001:db8:2::10

# Filled in by nl_load / nl_up.
NAME=""
NL_DIR=""
NL_NAT1=prc
NL_NAT2=prc
NL_LOSS=0
NL_DELAY=0
NL_V6_1=off
NL_V6_2=off
NL_NO_V4=""

# ---------------------------------------------------------------------------------------------
# Helpers

nl_die() {
    printf '%s: %s\n' "$NL_SELF" "$*" >&2
    exit 1
}

nl_usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

nl_need_root() {
    [[ $(id -u) -eq 0 ]] || nl_die "needs root (network namespaces, nftables); try: sudo $0 $*"
}

nl_need() {
    local cmd
    for cmd in "$@"; do
        command -v "$cmd" >/dev/null ||
            nl_die "missing command: $cmd (apt-get install $(nl_pkg_of "$cmd"))"
    done
}

nl_pkg_of() {
    case $1 in
    ip) echo iproute2 ;;
    nft) echo nftables ;;
    ping) echo iputils-ping ;;
    setsid) echo util-linux ;;
    *) echo "$1" ;;
    esac
}

nl_set_name() {
    [[ $1 =~ ^[A-Za-z0-9_]{1,6}$ ]] ||
        nl_die "lab name '$1': use 1-6 characters from [A-Za-z0-9_] (namespace names stay <= 15)"
    NAME=$1
    NL_DIR=$NL_RUN/$NAME
}

# nl_ns HOST: the namespace of HOST in this lab.
nl_ns() {
    case $1 in
    inet | rdv | a | a2 | b) printf '%s-%s' "$NAME" "$1" ;;
    nat1) printf '%s-n1' "$NAME" ;;
    nat2) printf '%s-n2' "$NAME" ;;
    *) nl_die "unknown host '$1' (one of: ${NL_HOSTS[*]})" ;;
    esac
}

nl_in() {
    local ns
    ns=$(nl_ns "$1")
    shift
    ip netns exec "$ns" "$@"
}

# Reads the config of an existing lab.
nl_load() {
    nl_set_name "$1"
    [[ -f $NL_DIR/config ]] || nl_die "no lab '$NAME' (nothing in $NL_DIR; run: $NL_SELF up $NAME)"
    local key value
    while IFS='=' read -r key value; do
        case $key in
        nat1) NL_NAT1=$value ;;
        nat2) NL_NAT2=$value ;;
        loss) NL_LOSS=$value ;;
        delay) NL_DELAY=$value ;;
        v6_1) NL_V6_1=$value ;;
        v6_2) NL_V6_2=$value ;;
        no_v4) NL_NO_V4=$value ;;
        esac
    done <"$NL_DIR/config"
}

nl_is_kind() {
    local k
    for k in "${NL_KINDS[@]}"; do [[ $1 == "$k" ]] && return 0; done
    return 1
}

# The router of a host, its NAT kind, and the kind a host actually gets (a2 behind a cone).
nl_router_of() {
    case $1 in
    a | a2) echo nat1 ;;
    b) echo nat2 ;;
    *) nl_die "$1 is not behind a NAT router" ;;
    esac
}

nl_kind_of_router() {
    if [[ $1 == nat1 ]]; then echo "$NL_NAT1"; else echo "$NL_NAT2"; fi
}

nl_effective_kind() {
    local kind
    kind=$(nl_kind_of_router "$(nl_router_of "$1")")
    if [[ $1 == a2 && $kind == cone ]]; then kind=prc; fi
    echo "$kind"
}

nl_addr_of() {
    case $1 in
    inet) echo "$NL_INET_IP" ;;
    rdv) echo "$NL_RDV_IP" ;;
    nat1) echo "$NL_LAN1_GW" ;;
    nat2) echo "$NL_LAN2_GW" ;;
    a) echo "$NL_A_IP" ;;
    a2) echo "$NL_A2_IP" ;;
    b) echo "$NL_B_IP" ;;
    *) nl_ns "$1" >/dev/null ;;
    esac
}

nl_public_of() {
    case $1 in
    nat1) echo "$NL_NAT1_PUB" ;;
    nat2) echo "$NL_NAT2_PUB" ;;
    a | a2 | b)
        local router
        router=$(nl_router_of "$1")
        if [[ $(nl_kind_of_router "$router") == none ]]; then
            nl_addr_of "$1"
        else
            nl_public_of "$router"
        fi
        ;;
    *) nl_addr_of "$1" ;;
    esac
}

# (Re)writes the probe program into the state dir, atomically (another command of the same lab
# may be running it).
nl_write_probe() {
    cp "$NL_LIB/natlab/probe.py" "$NL_DIR/probe.py.$$"
    mv -f "$NL_DIR/probe.py.$$" "$NL_DIR/probe.py"
}

# Interfaces of a namespace, other than lo.
nl_links() {
    ip -n "$1" -o link show | awk -F': ' '$2 != "lo" { sub(/@.*/, "", $2); print $2 }'
}

# ---------------------------------------------------------------------------------------------
# up

nl_parse_up_args() {
    while (($#)); do
        (($# >= 2)) || nl_die "option $1 needs a value"
        case $1 in
        --nat1 | --nat2)
            nl_is_kind "$2" || nl_die "NAT kind '$2': one of ${NL_KINDS[*]}"
            if [[ $1 == --nat1 ]]; then NL_NAT1=$2; else NL_NAT2=$2; fi
            ;;
        --loss)
            if ! [[ $2 =~ ^[0-9]+(\.[0-9]{1,2})?$ ]] || ! awk -v p="$2" 'BEGIN { exit !(p <= 100) }'; then
                nl_die "--loss '$2': a percentage 0-100 (up to two decimals)"
            fi
            NL_LOSS=$2
            ;;
        --delay)
            if ! [[ $2 =~ ^[0-9]+(\.[0-9]+)?$ ]] || ! awk -v d="$2" 'BEGIN { exit !(d <= 10000) }'; then
                nl_die "--delay '$2': milliseconds, 0-10000"
            fi
            NL_DELAY=$2
            ;;
        --v6-1 | --v6-2)
            [[ " ${NL_V6KINDS[*]} " == *" $2 "* ]] || nl_die "IPv6 kind '$2': one of ${NL_V6KINDS[*]}"
            if [[ $1 == --v6-1 ]]; then NL_V6_1=$2; else NL_V6_2=$2; fi
            ;;
        --no-v4)
            [[ $2 == 1 || $2 == 2 ]] || nl_die "--no-v4 '$2': 1 or 2 (a LAN)"
            NL_NO_V4+=$2
            ;;
        *) nl_die "unknown option '$1' (try: $NL_SELF help)" ;;
        esac
        shift 2
    done
}

nl_nonzero() { awk -v x="$1" 'BEGIN { exit !(x > 0) }'; }

# Creates one namespace, recording it first so that `down` (or the rollback) finds it even if
# we are interrupted right after `ip netns add`. An existing namespace is not ours: refuse.
nl_add_netns() {
    local ns=$1
    [[ ! -e /run/netns/$ns ]] || nl_die "network namespace $ns already exists (not this lab's; leaving it alone)"
    printf '%s\n' "$ns" >>"$NL_DIR/namespaces"
    ip netns add "$ns"
    ip -n "$ns" link set lo up
}

# nl_p2p OTHER IFNAME ADDR: a point-to-point link between inet (interface IFNAME) and OTHER
# (interface wan/eth0), inet side 203.0.113.254/32, other side ADDR/32.
nl_p2p() {
    local other=$1 inet_if=$2 addr=$3 other_if=wan
    [[ $other == rdv ]] && other_if=eth0
    ip -n "$(nl_ns inet)" link add name "$inet_if" type veth peer name "$other_if" netns "$(nl_ns "$other")"
    ip -n "$(nl_ns inet)" addr add "$NL_INET_IP/32" peer "$addr/32" dev "$inet_if"
    ip -n "$(nl_ns "$other")" addr add "$addr/32" peer "$NL_INET_IP/32" dev "$other_if"
}

# nl_lan ROUTER GW HOST IP [HOST IP…]: bridge br0 with address GW in ROUTER, one veth per host.
nl_lan() {
    local router=$1 gw=$2 rns host ip
    rns=$(nl_ns "$router")
    shift 2
    ip -n "$rns" link add name br0 type bridge stp_state 0 forward_delay 0 mcast_snooping 0
    ip -n "$rns" addr add "$gw/$NL_LAN_BITS" dev br0
    while (($#)); do
        host=$1 ip=$2
        shift 2
        ip -n "$rns" link add name "to-$host" type veth peer name eth0 netns "$(nl_ns "$host")"
        ip -n "$rns" link set "to-$host" master br0
        ip -n "$(nl_ns "$host")" addr add "$ip/$NL_LAN_BITS" dev eth0
    done
}

# Per-namespace sysctls, then every link up. IPv6 is switched off on the lab's links (not on lo
# or on interfaces created later, such as pilot's TUN): the lab is IPv4 only, and quiet.
nl_sysctls_and_up() {
    local host ns dev settings
    for host in "${NL_HOSTS[@]}"; do
        ns=$(nl_ns "$host")
        settings=()
        for dev in $(nl_links "$ns"); do
            settings+=("net.ipv6.conf.$dev.disable_ipv6=1")
        done
        case $host in
        inet) settings+=(net.ipv4.ip_forward=1) ;;
        nat1 | nat2)
            # The LAN bridge lives here: keep bridged LAN traffic out of this router's
            # netfilter (br_netfilter, where present, is on by default in every namespace;
            # -e: where it is not, these keys do not exist, and that is fine too).
            settings+=(net.ipv4.ip_forward=1
                net.bridge.bridge-nf-call-iptables=0
                net.bridge.bridge-nf-call-ip6tables=0
                net.bridge.bridge-nf-call-arptables=0)
            ;;
        esac
        ip netns exec "$ns" sysctl -qew "${settings[@]}"
        for dev in $(nl_links "$ns"); do
            ip -n "$ns" link set "$dev" up
        done
    done
}

nl_routes() {
    local h
    for h in nat1 nat2 rdv; do
        ip -n "$(nl_ns "$h")" route add default via "$NL_INET_IP"
    done
    ip -n "$(nl_ns a)" route add default via "$NL_LAN1_GW"
    ip -n "$(nl_ns a2)" route add default via "$NL_LAN1_GW"
    ip -n "$(nl_ns b)" route add default via "$NL_LAN2_GW"
    ip -n "$(nl_ns rdv)" addr add "$NL_RDV_IP2/32" dev eth0
    ip -n "$(nl_ns inet)" route add "$NL_RDV_IP2/32" via "$NL_RDV_IP" dev rdv
    # Routed (kind none) LANs are reachable from the internet; NATed LANs are not.
    if [[ $NL_NAT1 == none ]]; then
        ip -n "$(nl_ns inet)" route add "$NL_LAN1" via "$NL_NAT1_PUB" dev n1
    fi
    if [[ $NL_NAT2 == none ]]; then
        ip -n "$(nl_ns inet)" route add "$NL_LAN2" via "$NL_NAT2_PUB" dev n2
    fi
}

# nl_v6_on NS DEV…: IPv6 back on for these links of NS (nl_sysctls_and_up turned it off), with
# no autoconfiguration and no duplicate address detection (addresses usable at once).
nl_v6_on() {
    local ns=$1 dev
    shift
    local -a settings=(net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0)
    for dev in "$@"; do
        settings+=("net.ipv6.conf.$dev.disable_ipv6=0" "net.ipv6.conf.$dev.accept_dad=0"
            "net.ipv6.conf.$dev.accept_ra=0" "net.ipv6.conf.$dev.autoconf=0")
    done
    ip netns exec "$ns" sysctl -qew "${settings[@]}"
}

# nl_v6_link OTHER INET_IF INET_ADDR OTHER_ADDR: IPv6 on the link from inet to OTHER, a /64,
# and OTHER's default route over it.
nl_v6_link() {
    local other=$1 inet_if=$2 inet_addr=$3 other_addr=$4 other_if=wan
    [[ $other == rdv ]] && other_if=eth0
    nl_v6_on "$(nl_ns inet)" "$inet_if"
    nl_v6_on "$(nl_ns "$other")" "$other_if"
    ip -n "$(nl_ns inet)" -6 addr add "$inet_addr/64" dev "$inet_if" nodad
    ip -n "$(nl_ns "$other")" -6 addr add "$other_addr/64" dev "$other_if" nodad
    ip -n "$(nl_ns "$other")" -6 route add default via "$inet_addr" dev "$other_if"
}

# nl_v6_lan ROUTER KIND LAN GW PUBLIC HOST IP [HOST IP…]: IPv6 on a router's LAN and its
# hosts, inet's route to the LAN, and the router's firewall for KIND.
nl_v6_lan() {
    local router=$1 kind=$2 lan=$3 gw=$4 pub=$5 rns host ip
    rns=$(nl_ns "$router")
    shift 5
    nl_v6_on "$rns" br0
    ip netns exec "$rns" sysctl -qw net.ipv6.conf.all.forwarding=1
    ip -n "$rns" -6 addr add "$gw/64" dev br0 nodad
    while (($#)); do
        host=$1 ip=$2
        shift 2
        nl_v6_on "$(nl_ns "$host")" eth0
        ip -n "$(nl_ns "$host")" -6 addr add "$ip/64" dev eth0 nodad
        ip -n "$(nl_ns "$host")" -6 route add default via "$gw" dev eth0
    done
    ip -n "$(nl_ns inet)" -6 route add "$lan" via "$pub"
    [[ $kind == fw ]] || return 0
    ip netns exec "$rns" nft -f "$NL_LIB/natlab/fw6.nft"
}

nl_ipv6() {
    [[ $NL_V6_1 != off || $NL_V6_2 != off ]] || return 0
    ip netns exec "$(nl_ns inet)" sysctl -qw net.ipv6.conf.all.forwarding=1
    nl_v6_link rdv rdv "$NL_INET6_RDV" "$NL_RDV_IP6"
    if [[ $NL_V6_1 != off ]]; then
        nl_v6_link nat1 n1 "$NL_INET6_N1" "$NL_NAT1_PUB6"
        nl_v6_lan nat1 "$NL_V6_1" "$NL_LAN1_6" "$NL_LAN1_GW6" "$NL_NAT1_PUB6" \
            a "$NL_A_IP6" a2 "$NL_A2_IP6"
    fi
    if [[ $NL_V6_2 != off ]]; then
        nl_v6_link nat2 n2 "$NL_INET6_N2" "$NL_NAT2_PUB6"
        nl_v6_lan nat2 "$NL_V6_2" "$NL_LAN2_6" "$NL_LAN2_GW6" "$NL_NAT2_PUB6" b "$NL_B_IP6"
    fi
}

# IPv6-only hosts: no IPv4 beyond their LAN.
nl_no_v4() {
    if [[ $NL_NO_V4 == *1* ]]; then
        ip -n "$(nl_ns a)" route del default
        ip -n "$(nl_ns a2)" route del default
    fi
    if [[ $NL_NO_V4 == *2* ]]; then
        ip -n "$(nl_ns b)" route del default
    fi
}

# nl_nat ROUTER KIND LAN PUBLIC CONE_HOST_IP: the router's nftables ruleset, from
# lib/natlab/nat-KIND.nft.
nl_nat() {
    local router=$1 kind=$2 lan=$3 pub=$4 cone_ip=$5
    [[ $kind == none ]] && return 0 # plain router: no NAT, no filter, no conntrack
    local defines=(-D "lan=$lan")
    [[ $kind == cone ]] && defines+=(-D "pub=$pub" -D "host=$cone_ip")
    ip netns exec "$(nl_ns "$router")" nft "${defines[@]}" -f "$NL_LIB/natlab/nat-$kind.nft"
}

nl_apply_nat() {
    nl_nat nat1 "$NL_NAT1" "$NL_LAN1" "$NL_NAT1_PUB" "$NL_A_IP"
    nl_nat nat2 "$NL_NAT2" "$NL_LAN2" "$NL_NAT2_PUB" "$NL_B_IP"
}

# Loss and delay on the public links of both NAT routers (interfaces n1 and n2 of inet), in
# both directions. Loss is decided first (prerouting -300, postrouting -200), so the delayer
# (mangle, -150) never holds a packet that is then dropped.
nl_impair() {
    local ins
    ins=$(nl_ns inet)
    if nl_nonzero "$NL_LOSS"; then
        local per10k
        per10k=$(awk -v p="$NL_LOSS" 'BEGIN { printf "%d", p * 100 + 0.5 }')
        ip netns exec "$ins" nft -D "per10k=$per10k" -f "$NL_LIB/natlab/loss.nft"
    fi
    if nl_nonzero "$NL_DELAY"; then
        cp "$NL_LIB/natlab/delay.py" "$NL_DIR/delay.py"
        : >"$NL_DIR/delay.log"
        # Its own session, and no inherited descriptors: a caller that reads our output (or
        # kills our process group) must not wait for or stop the delayer.
        setsid ip netns exec "$ins" python3 "$NL_DIR/delay.py" "$NL_QUEUE" "$NL_DELAY" \
            </dev/null >"$NL_DIR/delay.log" 2>&1 &
        local pid=$! i
        for ((i = 0; i < 100; i++)); do
            grep -q '^ready' "$NL_DIR/delay.log" && break
            kill -0 "$pid" 2>/dev/null || nl_die "the delayer exited: $(cat "$NL_DIR/delay.log")"
            sleep 0.05
        done
        grep -q '^ready' "$NL_DIR/delay.log" || nl_die "the delayer did not start within 5 s"
        local dir dev
        for dev in n1 n2; do
            for dir in "PREROUTING -i" "POSTROUTING -o"; do
                # shellcheck disable=SC2086 # "$dir" is a chain and an option, split on purpose
                ip netns exec "$ins" iptables -w -t mangle -A $dir "$dev" -j NFQUEUE --queue-num "$NL_QUEUE"
            done
        done
    fi
}

nl_up_rollback() {
    local rc=$?
    trap '' INT TERM
    if ((rc != 0)); then
        printf '%s: setting up lab %s failed or was interrupted (exit %s); removing what was created\n' \
            "$NL_SELF" "$NAME" "$rc" >&2
        nl_teardown >&2 || true
    fi
    exit "$rc"
}

nl_up() {
    (($# >= 1)) || nl_die "usage: $NL_SELF up NAME [--nat1 KIND] [--nat2 KIND] [--loss PCT] [--delay MS] [--v6-1 V6KIND] [--v6-2 V6KIND] [--no-v4 1|2]"
    nl_set_name "$1"
    shift
    nl_parse_up_args "$@"
    nl_need_root up
    nl_need ip nft python3 setsid
    if nl_nonzero "$NL_DELAY"; then nl_need iptables; fi
    local host
    for host in "${NL_HOSTS[@]}"; do
        [[ ! -e /run/netns/$(nl_ns "$host") ]] ||
            nl_die "network namespace $(nl_ns "$host") already exists (lab '$NAME' up already? run: $NL_SELF down $NAME)"
    done
    mkdir -p "$NL_RUN"
    # mkdir without -p claims the name atomically: two `up NAME` at once cannot both succeed.
    mkdir "$NL_DIR" 2>/dev/null || nl_die "lab '$NAME' exists ($NL_DIR); run: $NL_SELF down $NAME"
    trap nl_up_rollback EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    : >"$NL_DIR/namespaces"

    for host in "${NL_HOSTS[@]}"; do
        nl_add_netns "$(nl_ns "$host")"
    done
    nl_p2p nat1 n1 "$NL_NAT1_PUB"
    nl_p2p nat2 n2 "$NL_NAT2_PUB"
    nl_p2p rdv rdv "$NL_RDV_IP"
    nl_lan nat1 "$NL_LAN1_GW" a "$NL_A_IP" a2 "$NL_A2_IP"
    nl_lan nat2 "$NL_LAN2_GW" b "$NL_B_IP"
    nl_sysctls_and_up
    nl_routes
    nl_ipv6
    nl_no_v4
    nl_apply_nat
    nl_impair
    nl_write_probe
    printf 'nat1=%s\nnat2=%s\nloss=%s\ndelay=%s\nv6_1=%s\nv6_2=%s\nno_v4=%s\n' "$NL_NAT1" "$NL_NAT2" \
        "$NL_LOSS" "$NL_DELAY" "$NL_V6_1" "$NL_V6_2" "$NL_NO_V4" >"$NL_DIR/config.new"
    mv "$NL_DIR/config.new" "$NL_DIR/config"

    trap - EXIT INT TERM
    printf 'lab %s up: nat1=%s nat2=%s loss=%s%% delay=%sms ipv6=%s/%s%s (namespaces %s-*)\n' \
        "$NAME" "$NL_NAT1" "$NL_NAT2" "$NL_LOSS" "$NL_DELAY" "$NL_V6_1" "$NL_V6_2" \
        "${NL_NO_V4:+ no-v4=$NL_NO_V4}" "$NAME"
}

# ---------------------------------------------------------------------------------------------
# down

# Kills every process inside the lab's namespaces (the delayer, check servers, and whatever a
# test started there with `exec`; only processes in namespaces this lab created, never a PID
# from a file that may have been reused), TERM first, KILL after 3 s; deletes the namespaces
# recorded in the state dir, then the state dir.
nl_teardown() {
    local ns rc=0 i
    local -a namespaces=()
    if [[ -f $NL_DIR/namespaces ]]; then
        mapfile -t namespaces <"$NL_DIR/namespaces"
    fi
    for ((i = 0; i < 40; i++)); do
        local -a pids=()
        for ns in "${namespaces[@]}"; do
            [[ -n $ns && -e /run/netns/$ns ]] || continue
            mapfile -t -O "${#pids[@]}" pids < <(ip netns pids "$ns" 2>/dev/null)
        done
        ((${#pids[@]})) || break
        if ((i == 0)); then
            kill -TERM "${pids[@]}" 2>/dev/null || true
        elif ((i >= 30)); then
            kill -KILL "${pids[@]}" 2>/dev/null || true
        fi
        sleep 0.1
    done
    for ns in "${namespaces[@]}"; do
        [[ -n $ns && -e /run/netns/$ns ]] || continue
        ip netns del "$ns" || {
            printf '%s: could not delete namespace %s\n' "$NL_SELF" "$ns" >&2
            rc=1
        }
    done
    if ((rc == 0)); then
        rm -rf -- "$NL_DIR"
    fi
    return "$rc"
}

nl_down() {
    (($# == 1)) || nl_die "usage: $NL_SELF down NAME"
    nl_set_name "$1"
    nl_need_root down
    if [[ ! -d $NL_DIR ]]; then
        echo "lab $NAME: nothing to remove"
        return 0
    fi
    # Ignore Ctrl-C half-way: a second `down` would finish it, but better not to need one.
    trap '' INT TERM
    nl_teardown
    echo "lab $NAME removed"
}

# ---------------------------------------------------------------------------------------------
# status, exec, addr, public, flush

nl_describe_kind() {
    case $1 in
    none) echo "none (routed, no NAT)" ;;
    cone) echo "cone (full cone: EIM + endpoint-independent filtering)" ;;
    prc) echo "prc (masquerade: EIM, port-restricted filtering)" ;;
    sym) echo "sym (masquerade fully-random: new port per destination)" ;;
    esac
}

nl_delayer_running() {
    local pid
    for pid in $(ip netns pids "$(nl_ns inet)" 2>/dev/null); do
        tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "$NL_DIR/delay.py" && return 0
    done
    return 1
}

nl_status() {
    (($# == 1)) || nl_die "usage: $NL_SELF status NAME"
    nl_load "$1"
    local host ns addrs
    echo "lab $NAME (state in $NL_DIR)"
    echo "  nat1: $(nl_describe_kind "$NL_NAT1"), public $NL_NAT1_PUB, LAN $NL_LAN1"
    if [[ $NL_NAT1 == cone ]]; then echo "        cone (1:1) host: a; a2 gets masquerade (prc)"; fi
    echo "  nat2: $(nl_describe_kind "$NL_NAT2"), public $NL_NAT2_PUB, LAN $NL_LAN2"
    echo "  rdv:  $NL_RDV_IP (second address $NL_RDV_IP2); internet router $NL_INET_IP"
    printf '  impairment on each NAT public link, each direction: loss %s%%, delay %s ms' "$NL_LOSS" "$NL_DELAY"
    if nl_nonzero "$NL_DELAY"; then
        if nl_delayer_running; then printf ' (delayer running)'; else printf ' (DELAYER NOT RUNNING)'; fi
    fi
    echo
    printf '  %-5s %-14s %-16s %s\n' HOST NAMESPACE PUBLIC ADDRESSES
    for host in "${NL_HOSTS[@]}"; do
        ns=$(nl_ns "$host")
        if [[ -e /run/netns/$ns ]]; then
            addrs=$(ip -n "$ns" -4 -o addr show | awk '$2 != "lo" {
                printf "%s%s %s", sep, $2, $4; if ($5 == "peer") printf " peer %s", $6; sep = ", " }')
        else
            addrs="(namespace missing)"
        fi
        printf '  %-5s %-14s %-16s %s\n' "$host" "$ns" "$(nl_public_of "$host")" "$addrs"
    done
}

nl_exec() {
    (($# >= 3)) || nl_die "usage: $NL_SELF exec NAME HOST CMD..."
    nl_load "$1"
    local ns
    ns=$(nl_ns "$2")
    shift 2
    exec ip netns exec "$ns" "$@"
}

nl_addr() {
    (($# == 2)) || nl_die "usage: $NL_SELF addr NAME HOST"
    nl_load "$1"
    nl_addr_of "$2"
}

nl_public() {
    (($# == 2)) || nl_die "usage: $NL_SELF public NAME HOST"
    nl_load "$1"
    nl_public_of "$2"
}

nl_flush() {
    (($# == 2)) || nl_die "usage: $NL_SELF flush NAME nat1|nat2"
    nl_load "$1"
    [[ $2 == nat1 || $2 == nat2 ]] || nl_die "flush: only nat1 or nat2 have NAT mappings"
    nl_write_probe
    printf 'lab %s: %s: %s\n' "$NAME" "$2" "$(nl_in "$2" python3 "$NL_DIR/probe.py" ctflush)"
}

# ---------------------------------------------------------------------------------------------
# check

NL_PASS=0
NL_FAIL=0
NL_CHECK_PIDS=()

nl_result() {
    local verdict=$1
    shift
    printf '%s %s\n' "$verdict" "$*"
    if [[ $verdict == PASS ]]; then NL_PASS=$((NL_PASS + 1)); else NL_FAIL=$((NL_FAIL + 1)); fi
}

nl_expect() { # nl_expect CONDITION-EXIT-STATUS TEXT
    if (($1 == 0)); then nl_result PASS "$2"; else nl_result FAIL "$2"; fi
}

nl_check_cleanup() {
    local pid
    for pid in "${NL_CHECK_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -f "$NL_DIR"/check-$$-*.log
}

# nl_start_server HOST LOG EP…: a probe server in HOST; its bound endpoints go to NL_EPS.
nl_start_server() {
    local host=$1 log=$2 i
    shift 2
    : >"$log" # now, not in the background child: the loop below reads it at once
    nl_in "$host" python3 "$NL_DIR/probe.py" server "$@" </dev/null >"$log" 2>&1 &
    NL_CHECK_PIDS+=("$!")
    NL_EPS=""
    for ((i = 0; i < 100; i++)); do
        NL_EPS=$(sed -n 's/^{"bound": \[\(.*\)\]}$/\1/p' "$log" | tr -d '",')
        [[ -n $NL_EPS ]] && break
        sleep 0.05
    done
    [[ -n $NL_EPS ]] || nl_die "the probe server in $host did not start: $(cat "$log")"
}

# nl_client HOST ARGS…: runs the probe client in HOST; its results go to the associative array
# NL_R: port (the client's local port), echoN (what the Nth --echo server saw, or -), ack
# (yes/no: poke request answered), pokeN (the source the Nth --poke-from poke arrived from, or -).
declare -A NL_R=()
nl_client() {
    local host=$1 key value
    shift
    NL_R=()
    while read -r key value; do
        NL_R[$key]=$value
    done < <(nl_in "$host" python3 "$NL_DIR/probe.py" client "$@")
    [[ -n ${NL_R[port]:-} ]] || nl_die "the probe client in $host failed"
}

nl_check_isolation() {
    local -a namespaces=() host
    for host in "${NL_HOSTS[@]}"; do namespaces+=("$(nl_ns "$host")"); done
    local out
    if out=$(python3 "$NL_DIR/probe.py" isolation "${namespaces[@]}" 2>&1); then
        nl_result PASS "lab: every interface of the ${#namespaces[@]} namespaces is lo, a bridge, a TUN or a veth paired inside the lab (nothing reaches the uplink)"
    else
        nl_result FAIL "lab: interfaces leading out of the lab: ${out//$'\n'/; }"
    fi
    local h bad=""
    for h in "${NL_HOSTS[@]}"; do
        # Every route is on a lab interface by the check above; only inet may lack a default
        # route, and it must: it is the end of the world.
        if [[ $h == inet ]]; then
            [[ -z $(ip -n "$(nl_ns inet)" -4 route show default) ]] || bad+=" inet-has-default"
        else
            [[ -n $(ip -n "$(nl_ns "$h")" -4 route show default) ]] || bad+=" $h-no-default"
        fi
    done
    nl_expect "$([[ -z $bad ]]; echo $?)" "lab: inet has no default route, every other namespace routes via the lab${bad:+ (problems:$bad)}"
}

# nl_check_host HOST P1 P2 P3 Q: mapping and filtering of HOST's NAT, measured against the
# probe server's endpoints P1, P2 (contacted), P3 (same host, never contacted), Q (other host).
nl_check_host() {
    local host=$1 p1=$2 p2=$3 p3=$4 q=$5
    local kind own pub router label
    kind=$(nl_effective_kind "$host")
    router=$(nl_router_of "$host")
    own=$(nl_addr_of "$host")
    pub=$(nl_public_of "$router")
    label="$host ($router=$(nl_kind_of_router "$router")"
    [[ $kind != "$(nl_kind_of_router "$router")" ]] && label+=", $host gets $kind"
    label+=")"

    nl_client "$host" --timeout "$NL_TIMEOUT" --echo "$p1" --echo "$p2" \
        --poke-via "$p1" --poke-from "$p1" --poke-from "$p3" --poke-from "$q"
    local port=${NL_R[port]} s1=${NL_R[echo0]} s2=${NL_R[echo1]} ack=${NL_R[ack]}
    local got_p1=${NL_R[poke0]} got_p3=${NL_R[poke1]} got_q=${NL_R[poke2]}

    if [[ $s1 == - || $s2 == - || $ack != yes ]]; then
        nl_result FAIL "$label: no answer from rdv (seen by ${p1}: $s1, by ${p2}: $s2, poke request acked: $ack)"
        return
    fi
    case $kind in
    none)
        nl_expect "$([[ $s1 == "$own:$port" && $s2 == "$own:$port" ]]; echo $?)" \
            "$label: no translation: rdv sees the host's own $own:$port on both ports (seen $s1, $s2)"
        ;;
    cone | prc)
        nl_expect "$([[ $s1 == "$s2" && ${s1%:*} == "$pub" ]]; echo $?)" \
            "$label: endpoint-independent mapping: one public endpoint for both destinations ($p1 saw $s1, $p2 saw $s2)"
        nl_expect "$([[ $s1 == "$pub:$port" ]]; echo $?)" \
            "$label: public address is $router's $pub and the free local port $port is preserved (seen $s1)"
        ;;
    sym)
        nl_expect "$([[ ${s1%:*} == "$pub" && ${s2%:*} == "$pub" && ${s1##*:} != "${s2##*:}" ]]; echo $?)" \
            "$label: endpoint-dependent mapping: a different public port per destination ($p1 saw $s1, $p2 saw $s2)"
        ;;
    esac
    nl_expect "$([[ $got_p1 != - ]]; echo $?)" \
        "$label: a packet from the contacted endpoint $p1 gets in"
    local want=no verb="is blocked" in3=no inq=no
    if [[ $kind == none || $kind == cone ]]; then want=yes verb="gets in"; fi
    [[ $got_p3 != - ]] && in3=yes
    [[ $got_q != - ]] && inq=yes
    nl_expect "$([[ $in3 == "$want" ]]; echo $?)" \
        "$label: filtering: unsolicited from another port of rdv ($p3) $verb (arrived: $in3)"
    nl_expect "$([[ $inq == "$want" ]]; echo $?)" \
        "$label: filtering: unsolicited from another host ($q) $verb (arrived: $inq)"
}

nl_check_lan() {
    local ep
    nl_start_server a2 "$NL_DIR/check-$$-lan.log" "$NL_A2_IP:0"
    ep=$NL_EPS
    nl_client a --timeout 0.3 --echo "$ep"
    local seen=${NL_R[echo0]} port=${NL_R[port]}
    nl_expect "$([[ $seen == "$NL_A_IP:$port" ]]; echo $?)" \
        "LAN1: a reaches a2 directly over the LAN (a2 at $ep sees a as $seen, expected $NL_A_IP:$port)"
}

# From the internet, a NATed LAN is unreachable (inet has no route to it) and a routed one
# (kind none) is reachable: rdv sends to a probe server on b's own address.
nl_check_lan_exposure() {
    local kind want verb
    kind=$(nl_kind_of_router nat2)
    nl_start_server b "$NL_DIR/check-$$-b.log" "$NL_B_IP:0"
    nl_client rdv --timeout "$NL_TIMEOUT" --tries 3 --echo "$NL_EPS"
    want=no verb="is not reachable"
    if [[ $kind == none ]]; then want=yes verb="is reachable"; fi
    local got=yes
    [[ ${NL_R[echo0]} == - ]] && got=no
    nl_expect "$([[ $got == "$want" ]]; echo $?)" \
        "LAN2 (nat2=$kind): from the internet, b's own address $NL_EPS $verb (rdv got an answer: $got)"
}

nl_check_impairment() {
    local out target=$NL_RDV_IP
    if nl_nonzero "$NL_DELAY"; then
        out=$(nl_in a ping -q -n -c 10 -i 0.05 -W 5 "$target" | tail -n 1)
        local min avg
        read -r min avg < <(awk -F'[/ =]+' '/^rtt/ { print $6, $7 }' <<<"$out")
        local want
        want=$(awk -v d="$NL_DELAY" 'BEGIN { print 2 * d }')
        nl_expect "$(awk -v m="${min:-0}" -v a="${avg:-0}" -v w="$want" 'BEGIN { exit !(m >= w && a <= w * 1.1 + 15) }'; echo $?)" \
            "delay: RTT a<->rdv min ${min:-?} ms avg ${avg:-?} ms, expected ${want} ms (2 x $NL_DELAY ms, one impaired link)"
    fi
    if nl_nonzero "$NL_LOSS"; then
        local n=500 received
        out=$(nl_in a ping -q -n -c "$n" -i 0.002 -W 2 "$target" | grep 'received' || true)
        received=$(awk '{ for (i = 1; i <= NF; i++) if ($(i) ~ /^received/) print $(i - 1) }' <<<"$out")
        nl_expect "$(awk -v r="${received:-0}" -v n="$n" -v p="$NL_LOSS" 'BEGIN {
                e = 1 - (1 - p / 100) ^ 2; got = 1 - r / n; tol = 4 * sqrt(e * (1 - e) / n) + 0.01
                exit !(got >= e - tol && got <= e + tol) }'
            echo $?)" \
            "loss: $(awk -v r="${received:-0}" -v n="$n" 'BEGIN { printf "%.1f", 100 * (1 - r / n) }')% of $n pings a<->rdv lost, expected about $(awk -v p="$NL_LOSS" 'BEGIN { printf "%.1f", 100 * (1 - (1 - p / 100) ^ 2) }')% (two crossings of one impaired link)"
    fi
}

nl_check() {
    (($# == 1)) || nl_die "usage: $NL_SELF check NAME"
    nl_load "$1"
    nl_need_root check
    nl_need ip python3 ping
    nl_write_probe
    trap nl_check_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    # Per-attempt reply timeout: a round trip crosses up to two impaired links each way.
    NL_TIMEOUT=$(awk -v d="$NL_DELAY" 'BEGIN { print 0.25 + 4 * d / 1000 }')
    echo "check lab $NAME: nat1=$NL_NAT1 nat2=$NL_NAT2 loss=$NL_LOSS% delay=${NL_DELAY}ms"

    nl_check_isolation
    local p1 p2 p3 q
    nl_start_server rdv "$NL_DIR/check-$$-rdv.log" "$NL_RDV_IP:0" "$NL_RDV_IP:0" "$NL_RDV_IP:0" "$NL_RDV_IP2:0"
    read -r p1 p2 p3 q <<<"$NL_EPS"
    local host
    for host in a a2 b; do
        nl_check_host "$host" "$p1" "$p2" "$p3" "$q"
    done
    nl_check_lan
    nl_check_lan_exposure
    nl_check_impairment

    echo "check lab $NAME: $NL_PASS passed, $NL_FAIL failed"
    ((NL_FAIL == 0))
}

# ---------------------------------------------------------------------------------------------

main() {
    local cmd=${1:-help}
    (($#)) && shift
    case $cmd in
    up) nl_up "$@" ;;
    down) nl_down "$@" ;;
    status) nl_status "$@" ;;
    check) nl_check "$@" ;;
    exec) nl_exec "$@" ;;
    addr) nl_addr "$@" ;;
    public) nl_public "$@" ;;
    flush) nl_flush "$@" ;;
    help | -h | --help) nl_usage ;;
    *) nl_die "unknown command '$cmd' (try: $NL_SELF help)" ;;
    esac
}

main "$@"
