#!/usr/bin/env bash
# The pilot demo: two nodes on one virtual LAN, and an ordinary program (curl) fetching a web
# page from the other node's fd70:: overlay address, through the encrypted tunnel.
#
# Usage: sudo scripts/demo.sh
#   PILOT_BIN=DIR   where pilotd/pilotctl are (default: target/release; built if missing)
#
# Everything runs inside two network namespaces created for this run and removed at the end
# (also on Ctrl-C). Exits non-zero, showing the daemon logs, if any step fails.
set -euo pipefail

# shellcheck source=lib/twonode.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib/twonode.sh"

HTTP_PORT=8080

main() {
    tn_init pdm

    tn_say "Setting up two machines, A and B, as network namespaces on one virtual LAN"
    tn_ensure_binaries
    tn_make_netns

    tn_say "Giving each node its identity (an Ed25519 key; its fd70:: address is derived from the key)"
    tn_make_identities

    tn_say "Starting pilotd on both nodes, each told about the other as a peer"
    tn_start_daemons
    tn_wait_ready
    tn_note "both daemons are up; each has a pilot0 interface with its fd70:: address"
    tn_in_a ip -brief addr show dev "$TN_IFACE" | sed 's/^/    A: /'
    tn_in_b ip -brief addr show dev "$TN_IFACE" | sed 's/^/    B: /'

    tn_say "Serving a small web page on node B (python3 -m http.server on port $HTTP_PORT)"
    local site=$TN_DIR/site
    mkdir -p "$site"
    cat >"$site/index.html" <<EOF
<!doctype html>
<title>pilot demo</title>
<h1>Hello from node B</h1>
<p>This page was served by node B at [$TN_ADDR_B] ($TN_NODE_B)
and reached node A through the pilot tunnel.</p>
EOF
    tn_spawn b "$TN_DIR/logs/http-server-b.log" \
        python3 -m http.server --bind :: --directory "$site" "$HTTP_PORT"
    tn_wait_listen b :: "$HTTP_PORT"

    local url="http://[$TN_ADDR_B]:$HTTP_PORT/"
    tn_say "Fetching the page from node A with plain curl, over the tunnel"
    tn_note "\$ curl -sS --fail -m 10 '$url'"
    local page
    page=$(tn_in_a curl -sS --fail -m 10 "$url") || tn_die "curl on node A could not fetch $url"
    printf '%s\n' "$page" | sed 's/^/    | /'
    grep -qF "$TN_ADDR_B" <<<"$page" || tn_die "the page did not contain B's address"

    tn_say "Pinging node B from node A through the tunnel (pilotctl ping)"
    tn_note "\$ pilotctl ping $TN_ADDR_B -c 3"
    tn_ctl_a ping "$TN_ADDR_B" -c 3 | sed 's/^/    /' || tn_die "pilotctl ping got no reply from node B"

    tn_say "Node A's view of its peers (pilotctl peers)"
    tn_note "\$ pilotctl peers"
    tn_ctl_a peers | sed 's/^/    /' || tn_die "pilotctl peers failed on node A"

    tn_check_alive
    tn_say "Tearing everything down"
    tn_cleanup
    trap - EXIT
    echo "demo OK"
}

main "$@"
