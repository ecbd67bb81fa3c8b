# shellcheck shell=bash
# Other overlays that scripts/bench.sh measures next to pilot: wireguard-go (WireGuard in
# userspace; this kernel has no WireGuard module) and nebula. Each one runs between a fresh
# pair of namespaces made with twonode.sh's helpers, so the same cleanup (tn_release, and the
# EXIT/INT/TERM trap) stops its processes, deletes its namespaces and removes its files.
#
#   netns TN_TAG+"wa" / +"na"                        netns TN_TAG+"wb" / +"nb"
#   wgTAGa fd71::1/64      (wireguard-go)            wgTAGb fd71::2/64
#   nbTAGa 10.99.0.1/24    (nebula, IPv4 only)       nbTAGb 10.99.0.2/24
#   ul0 198.51.100.1/24  <------ veth ------>        ul0 198.51.100.2/24
#
# The tunnel addresses exist only inside these namespaces, which have no route out.
#
# Usage (source twonode.sh first, call tn_init before any of these):
#   cmp_known                # the overlay names this file knows, one per line
#   cmp_installed NAME       # true if the programs NAME needs are on PATH
#   cmp_packages NAME        # the Debian packages that provide them
#   cmp_install NAME...      # apt-get install those packages
#   cmp_version NAME         # the version the program reports
#   cmp_default_mtu NAME     # the tunnel MTU the tool uses when not told otherwise
#   cmp_up NAME MTU          # fresh namespaces, overlay up with that MTU, a ping through it
#                            # answered; sets CMP_ADDR_A/CMP_ADDR_B (tunnel addresses),
#                            # CMP_IFACE (the tunnel interface's name in both namespaces),
#                            # CMP_INNER (IPv4|IPv6), TN_PID_A/TN_PID_B and TN_DAEMON.
#                            # tn_release tears it all down again.

CMP_WG_PORT=51820
CMP_NEBULA_PORT=4242
# wireguard-go's control (UAPI) socket is /var/run/wireguard/IFNAME.sock: a path shared by all
# namespaces, so interface names carry the run's tag and leftovers are removed at cleanup.
CMP_WG_SOCK_DIR=/var/run/wireguard
CMP_WG_IFACES=()
CMP_WG_MADE_SOCK_DIR=0

cmp_known() { printf '%s\n' wireguard-go nebula; }

cmp_is_known() {
    case $1 in
    wireguard-go | nebula) return 0 ;;
    *) return 1 ;;
    esac
}

cmp_commands() {
    case $1 in
    wireguard-go) echo "wireguard-go wg" ;;
    nebula) echo "nebula nebula-cert" ;;
    *) tn_die "unknown overlay '$1'" ;;
    esac
}

cmp_packages() {
    case $1 in
    wireguard-go) echo "wireguard-go wireguard-tools" ;;
    nebula) echo "nebula" ;;
    *) tn_die "unknown overlay '$1'" ;;
    esac
}

cmp_installed() {
    local cmd cmds
    cmds=$(cmp_commands "$1")
    for cmd in $cmds; do
        command -v "$cmd" >/dev/null || return 1
    done
}

# cmp_install NAME...: installs the Debian packages of the named overlays (retrying once after
# `apt-get update`, for a machine whose package lists are missing or stale).
cmp_install() {
    local name pkgs=()
    for name in "$@"; do
        # shellcheck disable=SC2207 # package names have no spaces or globs
        pkgs+=($(cmp_packages "$name"))
    done
    ((${#pkgs[@]})) || return 0
    command -v apt-get >/dev/null || tn_die "BENCH_INSTALL=1 needs apt-get (install ${pkgs[*]} yourself)"
    tn_say "Installing ${pkgs[*]} (BENCH_INSTALL=1)"
    local log=$TN_DIR/logs/apt-get.log
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}" </dev/null >"$log" 2>&1; then
        tn_note "apt-get install failed; running apt-get update and trying again"
        DEBIAN_FRONTEND=noninteractive apt-get update </dev/null >>"$log" 2>&1 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}" </dev/null >>"$log" 2>&1 ||
            tn_die "apt-get install -y ${pkgs[*]} failed (see $(basename "$log"))"
    fi
    for name in "$@"; do
        cmp_installed "$name" || tn_die "installed $(cmp_packages "$name"), but $(cmp_commands "$name") still missing"
    done
}

cmp_version() {
    local v=""
    case $1 in
    wireguard-go) v=$(wireguard-go --version 2>/dev/null | awk 'NR == 1 { sub(/^v/, "", $2); print $2 }') ;;
    wireguard-tools) v=$(wg --version 2>/dev/null | awk 'NR == 1 { sub(/^v/, "", $2); print $2 }') ;;
    nebula) v=$(nebula -version 2>/dev/null | awk '$1 == "Version:" { print $2; exit }') ;;
    *) tn_die "unknown overlay '$1'" ;;
    esac
    printf '%s' "${v:-unknown}"
}

cmp_default_mtu() {
    case $1 in
    wireguard-go) echo 1420 ;;
    nebula) echo 1300 ;;
    *) tn_die "unknown overlay '$1'" ;;
    esac
}

# cmp_up NAME MTU: see the top of the file.
cmp_up() {
    case $1 in
    wireguard-go) cmp_wg_up "$2" ;;
    nebula) cmp_nebula_up "$2" ;;
    *) tn_die "unknown overlay '$1'" ;;
    esac
}

# ---------------------------------------------------------------------------------------------
# Helpers

# cmp_fresh_netns LETTER: a new namespace pair (TN_TAG + LETTER + a/b) joined by the same veth
# underlay as pilot's; tn_add_netns records both for cleanup.
cmp_fresh_netns() {
    # shellcheck disable=SC2034 # twonode.sh's, read by tn_make_netns and tn_in_a/b
    TN_NS_A="${TN_TAG}${1}a"
    # shellcheck disable=SC2034
    TN_NS_B="${TN_TAG}${1}b"
    tn_make_netns
}

# cmp_wait_iface NODE IFACE [FILE]: until IFACE exists in NODE's namespace (and FILE exists,
# if given); fails at once if that node's daemon exits.
cmp_wait_iface() {
    local ns pid_var="TN_PID_${1^^}" deadline=$((SECONDS + TN_TIMEOUT))
    ns=$(tn_ns_of "$1")
    local iface=$2 file=${3:-}
    until ip -n "$ns" link show dev "$iface" >/dev/null 2>&1 && [[ -z $file || -e $file ]]; do
        kill -0 "${!pid_var}" 2>/dev/null || tn_die "$TN_DAEMON on node ${1^^} exited during startup"
        ((SECONDS < deadline)) || tn_die "$TN_DAEMON on node ${1^^} made no $iface${file:+ and no $file} within ${TN_TIMEOUT}s"
        sleep 0.1
    done
}

# Waits until a one-shot ping from A to B's tunnel address is answered (the first packet also
# starts the handshake), so the measurements never include tunnel setup.
cmp_wait_tunnel() {
    local deadline=$((SECONDS + TN_TIMEOUT))
    until tn_in_a ping -c 1 -W 1 -q "$CMP_ADDR_B" >/dev/null 2>&1; do
        tn_check_alive
        ((SECONDS < deadline)) || tn_die "no reply through the $TN_DAEMON tunnel from $CMP_ADDR_B within ${TN_TIMEOUT}s"
        sleep 0.2
    done
}

# ---------------------------------------------------------------------------------------------
# wireguard-go

# Cleanup hook (TN_HOOKS): wireguard-go removes its socket when it exits on SIGTERM, but not
# when it is killed; and the socket directory goes too if this run created it and it is empty.
cmp_wg_cleanup() {
    local iface
    for iface in "${CMP_WG_IFACES[@]}"; do
        rm -f -- "$CMP_WG_SOCK_DIR/$iface.sock"
    done
    CMP_WG_IFACES=()
    if ((CMP_WG_MADE_SOCK_DIR)); then
        rmdir -- "$CMP_WG_SOCK_DIR" 2>/dev/null || true
        CMP_WG_MADE_SOCK_DIR=0
    fi
}

cmp_wg_up() {
    local mtu=$1 dir=$TN_DIR/wireguard-go side ns peer addr peer_addr peer_ul
    mkdir -p "$dir"
    cmp_fresh_netns w
    TN_DAEMON=wireguard-go
    CMP_IFACE="wg${TN_TAG}"
    CMP_ADDR_A=fd71::1
    CMP_ADDR_B=fd71::2
    # shellcheck disable=SC2034 # for the caller
    CMP_INNER=IPv6

    for side in a b; do
        (umask 077 && wg genkey >"$dir/$side.key")
        wg pubkey <"$dir/$side.key" >"$dir/$side.pub"
    done

    # Register the cleanup before anything can create a socket.
    [[ -d $CMP_WG_SOCK_DIR ]] || CMP_WG_MADE_SOCK_DIR=1
    CMP_WG_IFACES=("${CMP_IFACE}a" "${CMP_IFACE}b")
    TN_HOOKS+=(cmp_wg_cleanup)
    for side in a b; do
        # A socket with this run's name can only be left over from a dead run with our PID.
        rm -f -- "$CMP_WG_SOCK_DIR/$CMP_IFACE$side.sock"
        # -f: stay in the foreground, so the recorded PID is the daemon; WG_PROCESS_FOREGROUND
        # also drops the "use the kernel module" banner from the log.
        tn_spawn "$side" "$TN_DIR/logs/wireguard-go-$side.log" \
            env WG_PROCESS_FOREGROUND=1 LOG_LEVEL="${WG_LOG_LEVEL:-error}" wireguard-go -f "$CMP_IFACE$side"
        printf -v "TN_PID_${side^^}" '%s' "$TN_LAST_PID"
    done
    tn_note "wireguard-go A pid $TN_PID_A, B pid $TN_PID_B, interfaces ${CMP_IFACE}a / ${CMP_IFACE}b"

    for side in a b; do
        cmp_wait_iface "$side" "$CMP_IFACE$side" "$CMP_WG_SOCK_DIR/$CMP_IFACE$side.sock"
        ns=$(tn_ns_of "$side")
        if [[ $side == a ]]; then
            peer=b addr=$CMP_ADDR_A peer_addr=$CMP_ADDR_B peer_ul=$TN_UL_B
        else
            peer=a addr=$CMP_ADDR_B peer_addr=$CMP_ADDR_A peer_ul=$TN_UL_A
        fi
        ip netns exec "$ns" wg set "$CMP_IFACE$side" \
            private-key "$dir/$side.key" listen-port "$CMP_WG_PORT" \
            peer "$(<"$dir/$peer.pub")" allowed-ips "$peer_addr/128" endpoint "$peer_ul:$CMP_WG_PORT" ||
            tn_die "wg set $CMP_IFACE$side failed"
        # No link-local address (so no router solicitations into the tunnel), like pilot0; nodad
        # so the address is usable at once.
        ip -n "$ns" link set dev "$CMP_IFACE$side" mtu "$mtu" addrgenmode none
        ip -n "$ns" addr add "$addr/64" dev "$CMP_IFACE$side" nodad
        ip -n "$ns" link set dev "$CMP_IFACE$side" up
    done
    cmp_wait_tunnel
}

# ---------------------------------------------------------------------------------------------
# nebula

# cmp_nebula_config DIR SIDE PEER_VPN_IP PEER_UNDERLAY_IP IFACE MTU: a host config with a
# static peer (no lighthouse), every flow allowed by the firewall.
cmp_nebula_config() {
    local dir=$1 side=$2 peer_ip=$3 peer_ul=$4 iface=$5 mtu=$6
    cat <<EOF
pki:
  ca: $dir/ca.crt
  cert: $dir/$side.crt
  key: $dir/$side.key
static_host_map:
  "$peer_ip": ["$peer_ul:$CMP_NEBULA_PORT"]
lighthouse:
  am_lighthouse: false
  hosts: []
listen:
  host: 0.0.0.0
  port: $CMP_NEBULA_PORT
punchy:
  punch: false
tun:
  disabled: false
  dev: $iface
  mtu: $mtu
logging:
  level: ${NEBULA_LOG_LEVEL:-info}
  format: text
firewall:
  outbound:
    - port: any
      proto: any
      host: any
  inbound:
    - port: any
      proto: any
      host: any
EOF
}

cmp_nebula_up() {
    local mtu=$1 dir=$TN_DIR/nebula side addr peer_addr peer_ul
    mkdir -p "$dir"
    chmod 700 "$dir"
    cmp_fresh_netns n
    TN_DAEMON=nebula
    CMP_IFACE="nb${TN_TAG}"
    CMP_ADDR_A=10.99.0.1
    CMP_ADDR_B=10.99.0.2
    # shellcheck disable=SC2034 # for the caller
    CMP_INNER=IPv4

    local log=$TN_DIR/logs/nebula-cert.log
    nebula-cert ca -name "pilot-bench-$TN_TAG" -duration 24h \
        -out-crt "$dir/ca.crt" -out-key "$dir/ca.key" >"$log" 2>&1 ||
        tn_die "nebula-cert ca failed (see nebula-cert.log)"
    for side in a b; do
        if [[ $side == a ]]; then
            addr=$CMP_ADDR_A peer_addr=$CMP_ADDR_B peer_ul=$TN_UL_B
        else
            addr=$CMP_ADDR_B peer_addr=$CMP_ADDR_A peer_ul=$TN_UL_A
        fi
        nebula-cert sign -ca-crt "$dir/ca.crt" -ca-key "$dir/ca.key" -name "$side" -ip "$addr/24" \
            -out-crt "$dir/$side.crt" -out-key "$dir/$side.key" >>"$log" 2>&1 ||
            tn_die "nebula-cert sign failed (see nebula-cert.log)"
        cmp_nebula_config "$dir" "$side" "$peer_addr" "$peer_ul" "$CMP_IFACE$side" "$mtu" >"$dir/$side.yml"
        nebula -test -config "$dir/$side.yml" </dev/null >"$TN_DIR/logs/nebula-test-$side.log" 2>&1 ||
            tn_die "nebula rejects $dir/$side.yml (see nebula-test-$side.log)"
    done

    for side in a b; do
        tn_spawn "$side" "$TN_DIR/logs/nebula-$side.log" nebula -config "$dir/$side.yml"
        printf -v "TN_PID_${side^^}" '%s' "$TN_LAST_PID"
    done
    tn_note "nebula A pid $TN_PID_A, B pid $TN_PID_B, interfaces ${CMP_IFACE}a / ${CMP_IFACE}b"
    for side in a b; do
        cmp_wait_iface "$side" "$CMP_IFACE$side"
    done
    cmp_wait_tunnel
}
