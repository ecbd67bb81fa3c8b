#!/usr/bin/env bash
# Measures what the overlay costs: TCP throughput and ping RTT between two pilot nodes, over
# the plain underlay (veth) and over the overlay (pilot0, fd70:: addresses), in one run.
#
# Usage: sudo scripts/bench.sh
#   BENCH_SECONDS=N   length of each iperf3 run (default 10)
#   BENCH_JSON=FILE   also write the one-line JSON result to FILE
#   PILOT_BIN=DIR     where pilotd/pilotctl are (default: target/release; built if missing)
#
# It only measures and prints: there are no timing assertions. It exits non-zero only when a
# step fails outright (a daemon dies, iperf3 cannot connect, ping gets no reply...).
# Everything runs inside two network namespaces created for this run and removed at the end.
set -euo pipefail

# shellcheck source=lib/twonode.sh source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib/twonode.sh"

BENCH_SECONDS=${BENCH_SECONDS:-10}
# Unique per run, as asked; each run also has its own namespaces, so this is belt and braces.
IPERF_PORT=$((5201 + $$ % 1000))
PING_COUNT=50
PING_INTERVAL=0.02

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

# Reads the raw results and prints the human table, then the JSON line (also to BENCH_JSON).
summarize() {
    BENCH_SECONDS=$BENCH_SECONDS MTU=$1 RSS_A=$2 RSS_B=$3 RESULTS=$RESULTS \
        COMMIT=$(git -C "$TN_ROOT" describe --always --dirty 2>/dev/null || echo unknown) \
        python3 - <<'PY'
import datetime, json, os, platform, re

res = os.environ["RESULTS"]

def iperf(name):
    """Receiver-side throughput in Gbit/s and the sender's retransmits."""
    with open(os.path.join(res, name + ".json")) as f:
        end = json.load(f)["end"]
    gbps = end["sum_received"]["bits_per_second"] / 1e9
    return gbps, end.get("sum_sent", {}).get("retransmits")

def ping(name):
    """avg and mdev in ms, and packet loss in percent, from `ping -q` output."""
    text = open(os.path.join(res, name + ".ping")).read()
    rtt = re.search(r"= ([\d.]+)/([\d.]+)/([\d.]+)/([\d.]+) ms", text)
    loss = re.search(r"([\d.]+)% packet loss", text)
    if not rtt:
        raise SystemExit(f"cannot parse ping output for {name}:\n{text}")
    return float(rtt.group(2)), float(rtt.group(4)), float(loss.group(1)) if loss else None

ul, ul_rt = iperf("underlay_tcp")
ov, ov_rt = iperf("overlay_tcp")
ovr, ovr_rt = iperf("overlay_tcp_reverse")
ov4, ov4_rt = iperf("overlay_tcp_4streams")
ul_rtt, ul_mdev, ul_loss = ping("underlay_ping")
ov_rtt, ov_mdev, ov_loss = ping("overlay_ping")

r3 = lambda x: round(x, 3)
result = {
    "underlay_tcp_gbps": r3(ul),
    "overlay_tcp_gbps": r3(ov),
    "overlay_tcp_reverse_gbps": r3(ovr),
    "overlay_tcp_4streams_gbps": r3(ov4),
    "throughput_ratio": r3(ov / ul) if ul else None,
    "underlay_rtt_ms": ul_rtt,
    "underlay_rtt_mdev_ms": ul_mdev,
    "overlay_rtt_ms": ov_rtt,
    "overlay_rtt_mdev_ms": ov_mdev,
    "rtt_ratio": r3(ov_rtt / ul_rtt) if ul_rtt else None,
    "pilotd_rss_kib": {"a": int(os.environ["RSS_A"]), "b": int(os.environ["RSS_B"])},
    "kernel": platform.release(),
    "cpus": os.cpu_count(),
    "mtu": int(os.environ["MTU"]),
    "seconds": int(os.environ["BENCH_SECONDS"]),
    "commit": os.environ["COMMIT"],
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
}

rt = lambda n: "-" if n is None else str(n)
print()
print(f"{'measurement':<34} {'result':>14} {'retransmits':>12}")
print(f"{'TCP underlay A->B':<34} {ul:>9.3f} Gb/s {rt(ul_rt):>12}")
print(f"{'TCP overlay A->B':<34} {ov:>9.3f} Gb/s {rt(ov_rt):>12}")
print(f"{'TCP overlay B->A (-R)':<34} {ovr:>9.3f} Gb/s {rt(ovr_rt):>12}")
print(f"{'TCP overlay A->B, 4 streams (-P 4)':<34} {ov4:>9.3f} Gb/s {rt(ov4_rt):>12}")
print(f"{'throughput overlay/underlay':<34} {str(result['throughput_ratio']):>14}")
print(f"{'RTT underlay (avg ± mdev)':<34} {ul_rtt:>8.3f} ± {ul_mdev:.3f} ms  loss {ul_loss}%")
print(f"{'RTT overlay (avg ± mdev)':<34} {ov_rtt:>8.3f} ± {ov_mdev:.3f} ms  loss {ov_loss}%")
print(f"{'RTT overlay/underlay':<34} {str(result['rtt_ratio']):>14}")
print(f"{'pilotd peak RSS A / B':<34} {result['pilotd_rss_kib']['a']:>7} / {result['pilotd_rss_kib']['b']} KiB")
print(f"(kernel {result['kernel']}, {result['cpus']} CPUs, overlay MTU {result['mtu']}, "
      f"{result['seconds']}s per iperf3 run, commit {result['commit']})")
print()
line = json.dumps(result, separators=(",", ":"))
print(line)
if os.environ.get("BENCH_JSON"):
    with open(os.environ["BENCH_JSON"], "w") as f:
        f.write(line + "\n")
PY
}

main() {
    [[ $BENCH_SECONDS =~ ^[1-9][0-9]*$ ]] || { echo "BENCH_SECONDS must be a positive integer" >&2; exit 2; }
    command -v iperf3 >/dev/null || { echo "missing command: iperf3" >&2; exit 1; }
    tn_init pbn
    RESULTS=$TN_DIR/results
    mkdir -p "$RESULTS"

    tn_say "Setting up two nodes in network namespaces $TN_NS_A and $TN_NS_B"
    tn_up
    tn_wait_tunnel
    local mtu
    mtu=$(tn_ctl_a info --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["mtu"])')
    tn_note "tunnel up: $TN_ADDR_A <-> $TN_ADDR_B, overlay MTU $mtu"

    tn_say "Ping RTT, underlay then overlay ($PING_COUNT pings, ${PING_INTERVAL}s apart)"
    run_ping underlay_ping "$TN_UL_B"
    run_ping overlay_ping "$TN_ADDR_B"

    tn_say "Starting iperf3 servers on node B (port $IPERF_PORT)"
    start_iperf_server "$TN_UL_B"
    start_iperf_server "$TN_ADDR_B"

    tn_say "TCP throughput over the underlay (veth, no tunnel)"
    run_iperf underlay_tcp "$TN_UL_B"
    tn_say "TCP throughput over the overlay (pilot0, encrypted tunnel)"
    run_iperf overlay_tcp "$TN_ADDR_B"
    run_iperf overlay_tcp_reverse "$TN_ADDR_B" -R
    run_iperf overlay_tcp_4streams "$TN_ADDR_B" -P 4

    # Read the high-water marks while the daemons still run.
    local rss_a rss_b
    rss_a=$(peak_rss_kib "$TN_PID_A")
    rss_b=$(peak_rss_kib "$TN_PID_B")

    summarize "$mtu" "$rss_a" "$rss_b"
}

main "$@"
