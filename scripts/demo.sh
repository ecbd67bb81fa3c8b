#!/usr/bin/env bash
# The pilot demo: two nodes behind two different NAT routers find each other through a
# rendezvous server, and an ordinary program (curl) fetches a web page from the other node's
# fd70:: overlay address, through the encrypted tunnel: directly when the two NATs let a hole
# be punched (birthday probing when one of them is symmetric), through the rendezvous' relay
# when both are symmetric.
#
# Usage: scripts/demo.sh   (as yourself: installs the missing Debian packages and builds the
#                          release binaries as you, then runs the rest as root through sudo;
#                          as root it does all of it directly)
#   DEMO_NAT1=KIND  node A's router (default prc: a home router, Linux masquerade)
#   DEMO_NAT2=KIND  node B's router (default sym: carrier-grade / symmetric NAT)
#                   KIND is none, cone, prc or sym (see natlab --help, crates/pilot-lab)
#   PILOT_BIN=DIR   where pilotd/pilotctl are (default: target/release; built if missing)
#
# Everything runs inside a NAT lab of network namespaces (natlab, crates/pilot-lab) created for this
# run and removed at the end (also on Ctrl-C). Exits non-zero, showing the logs, if a step fails.
set -euo pipefail

# shellcheck source=lib/twonode.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib/twonode.sh"
# shellcheck source=lib/natpair.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib/natpair.sh"
# shellcheck source=lib/root.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib/root.sh"

HTTP_PORT=8080
DEMO_NAT1=${DEMO_NAT1:-prc}
DEMO_NAT2=${DEMO_NAT2:-sym}

# Seconds since T0 (set when the nodes were started), one decimal.
since_start() {
    awk -v t0="$T0" -v t="$(date +%s.%N)" 'BEGIN { printf "%.1f", t - t0 }'
}

# The closing explanation of the path the pair ended on.
explain() {
    local path=$1 want=$2 pair="nat1=$DEMO_NAT1, nat2=$DEMO_NAT2"
    if [[ $path == direct ]]; then
        tn_note "Path: direct ($pair). When the rendezvous introduced the nodes, it told both to"
        tn_note "probe each other's public endpoints at the same moment, and the packets now go"
        tn_note "straight from one node's public endpoint to the other's; only the first ones went"
        tn_note "through the rendezvous' relay."
        case "$DEMO_NAT1/$DEMO_NAT2" in
        prc/sym | sym/prc)
            tn_note "Here a plain punch cannot work: the symmetric NAT gives every destination a new"
            tn_note "public port, and the home router lets in only the exact ip:port its node sent to."
            tn_note "So the symmetric side opened 256 mappings at once (a probe from each of 256 spare"
            tn_note "sockets) while the other side probed random ports of its address, about 1,000 a"
            tn_note "second, until one landed on an open mapping (birthday probing: 95 % within 0.75 s)."
            tn_note "Only two symmetric NATs stay on the relay; see it with:"
            tn_note "  DEMO_NAT1=sym scripts/demo.sh"
            ;;
        *)
            tn_note "See birthday probing find a way through a symmetric NAT with the default pair:"
            tn_note "  scripts/demo.sh                  (prc/sym)"
            ;;
        esac
    else
        tn_note "Path: relay ($pair). Both NATs give every destination a new public port, so"
        tn_note "neither node can know the port the other's probes will come from, and no number of"
        tn_note "guesses covers two random ports: the packets go through the rendezvous' relay."
        tn_note "The tunnel is still end to end: the relay forwards WireGuard datagrams it cannot read."
        tn_note "A router that maps a port (UPnP-IGD, NAT-PMP, PCP) would make even this pair direct."
    fi
    if [[ $path != "$want" ]]; then
        tn_warn "pilot should end on '$want' for $DEMO_NAT1/$DEMO_NAT2, but reports '$path'"
    fi
}

# What runs as the user before the demo raises itself: the packages it needs, and the
# release binaries built (or brought up to date) by the user's own cargo.
prepare() {
    back_to_sudo_user "$0" "$@"
    need_packages iproute2 nftables iptables curl python3 iputils-ping
    if [[ -z ${PILOT_BIN:-} ]] && command -v cargo >/dev/null; then
        echo "==> Building pilot (cargo build --release; takes a few minutes the first time)"
        (cd "$(dirname "${BASH_SOURCE[0]}")/.." && cargo build --release --locked) </dev/null
    fi
    ROOT_KEEP_ENV="DEMO_NAT1 DEMO_NAT2 PILOT_BIN PILOT_MTU TN_TIMEOUT" become_root "$0" "$@"
}

main() {
    local kind
    for kind in "$DEMO_NAT1" "$DEMO_NAT2"; do
        np_is_kind "$kind" || {
            echo "DEMO_NAT1/DEMO_NAT2: unknown NAT kind '$kind' (one of: $NP_KINDS)" >&2
            exit 2
        }
    done
    tn_init pdm
    local want
    want=$(np_expected_path "$DEMO_NAT1" "$DEMO_NAT2")

    tn_say "Building a small internet out of network namespaces (natlab, crates/pilot-lab)"
    tn_ensure_binaries
    np_lab_up "$DEMO_NAT1" "$DEMO_NAT2" d
    tn_note "rendezvous  $NP_RDV_IP, a public address on the \"internet\""
    tn_note "node A      198.51.100.10, behind nat1 (public 203.0.113.1): $DEMO_NAT1, $(np_describe "$DEMO_NAT1")"
    tn_note "node B      192.0.2.10, behind nat2 (public 203.0.113.2): $DEMO_NAT2, $(np_describe "$DEMO_NAT2")"
    tn_note "(lab $NP_LAB: namespaces $NP_LAB-a, $NP_LAB-b, $NP_LAB-rdv, $NP_LAB-n1, $NP_LAB-n2, ...)"

    tn_say "Giving the rendezvous and both nodes their identities (Ed25519 keys; a node's fd70:: address is derived from its key)"
    np_make_identities "$TN_DIR/nat"
    tn_note "node A: $TN_ADDR_A ($TN_NODE_A)"
    tn_note "node B: $TN_ADDR_B ($TN_NODE_B)"

    tn_say "Starting the rendezvous on $NP_RDV_IP:$NP_RDV_PORT (UDP; port $((NP_RDV_PORT + 1)) for NAT detection)"
    tn_note "\$ pilotd rendezvous --listen $NP_RDV_IP:$NP_RDV_PORT"
    np_start_rendezvous rendezvous

    tn_say "Starting pilotd on both nodes: each knows only the rendezvous, and claims a hostname"
    tn_note "\$ pilotd up --rendezvous ${NP_RDV_KEY:0:8}…@$NP_RDV_IP:$NP_RDV_PORT --hostname alice    # on node A"
    tn_note "\$ pilotd up --rendezvous ${NP_RDV_KEY:0:8}…@$NP_RDV_IP:$NP_RDV_PORT --hostname bob      # on node B"
    T0=$(date +%s.%N)
    np_start_nodes pilotd
    tn_wait_ready

    tn_say "What each node found out about its own NAT (pilotctl netcheck)"
    np_wait_registered a
    np_wait_registered b
    tn_note "\$ pilotctl netcheck    # on node A"
    tn_ctl_a netcheck | sed 's/^/    A: /'
    tn_note "\$ pilotctl netcheck    # on node B"
    tn_ctl_b netcheck | sed 's/^/    B: /'

    tn_say "Trust is bilateral: nothing passes until alice asks and bob approves"
    np_trust
    tn_note "(trusted $(since_start) s after the nodes were started)"

    tn_say "Serving a small web page on node B (python3 -m http.server on port $HTTP_PORT)"
    local site=$TN_DIR/site
    mkdir -p "$site"
    cat >"$site/index.html" <<EOF
<!doctype html>
<title>pilot demo</title>
<h1>Hello from node B</h1>
<p>This page was served by node B at [$TN_ADDR_B] ($TN_NODE_B), behind a $DEMO_NAT2 NAT,
and reached node A, behind a $DEMO_NAT1 NAT, through the pilot tunnel.</p>
EOF
    tn_spawn b "$TN_DIR/logs/http-server-b.log" \
        python3 -m http.server --bind :: --directory "$site" "$HTTP_PORT"
    tn_wait_listen b :: "$HTTP_PORT"

    np_resolver_a
    local url="http://bob.pilot:$HTTP_PORT/" page="" deadline=$((SECONDS + TN_TIMEOUT))
    tn_say "Fetching the page from node A with plain curl, by name, over the tunnel"
    tn_note "(node A's resolver asks pilotd's DNS stub at fd70::53: bob.pilot -> $TN_ADDR_B)"
    tn_note "\$ curl -sS --fail '$url'"
    until page=$(tn_in_a curl -sS --fail -m 2 "$url" 2>"$TN_DIR/logs/curl.log"); do
        np_check_alive
        ((SECONDS < deadline)) || tn_die "curl on node A could not fetch $url within ${TN_TIMEOUT}s ($(tail -n 1 "$TN_DIR/logs/curl.log"))"
        sleep 0.2
    done
    printf '%s\n' "$page" | sed 's/^/    | /'
    grep -qF "$TN_ADDR_B" <<<"$page" || tn_die "the page did not contain B's address"
    tn_note "(fetched $(since_start) s after the nodes were started; path then: $(np_path))"

    local path
    path=$(np_path)
    if [[ $want == direct && $path != direct ]]; then
        tn_say "Waiting for the hole punch to make the path direct"
        deadline=$((SECONDS + TN_TIMEOUT))
        until [[ $path == direct ]] || ((SECONDS >= deadline)); do
            np_check_alive
            sleep 0.1
            path=$(np_path)
        done
        if [[ $path == direct ]]; then
            tn_note "direct $(since_start) s after the nodes were started"
        else
            tn_note "still '$path' after ${TN_TIMEOUT}s"
        fi
    fi

    tn_say "Pinging node B from node A through the tunnel (pilotctl ping shows the path)"
    tn_note "\$ pilotctl ping $TN_ADDR_B -c 3"
    tn_ctl_a ping "$TN_ADDR_B" -c 3 | sed 's/^/    /' || tn_die "pilotctl ping got no reply from node B"

    tn_say "Node A's view of its peers (pilotctl peers)"
    tn_note "\$ pilotctl peers"
    tn_ctl_a peers | sed 's/^/    /' || tn_die "pilotctl peers failed on node A"

    path=$(np_path)
    tn_say "Why this path"
    explain "$path" "$want"

    np_check_alive
    tn_say "Tearing everything down"
    tn_cleanup
    trap - EXIT
    echo "demo OK"
}

prepare "$@"
main "$@"
