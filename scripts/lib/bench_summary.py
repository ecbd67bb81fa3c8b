"""scripts/bench.sh's summary: reads the raw results in RESULTS (the other settings come in the
environment too, see bench.sh's summarize), prints the human table, then the JSON line (also
to BENCH_JSON)."""
import datetime, json, os, platform, re, textwrap

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

def meta(key):
    with open(os.path.join(res, key + ".meta")) as f:
        return dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)

def lines(name):
    path = os.path.join(res, name)
    return open(path).read().splitlines() if os.path.exists(path) else []

r3 = lambda x: None if x is None else round(x, 3)
ratio = lambda a, b: r3(a / b) if a is not None and b else None

ul, ul_rt = iperf("underlay_tcp")
ul_rtt, ul_mdev, ul_loss = ping("underlay_ping")

# One entry per measured overlay, pilot first, in the order they ran.
keys = lines("overlays")
ov = {}
for k in keys:
    m = meta(k)
    o = {"name": m["name"], "mtu": int(m["mtu"]), "inner": m["inner"], "version": m["version"],
         "rss": (int(m["rss_a"]), int(m["rss_b"]))}
    o["tcp"], o["tcp_rt"] = iperf(k + "_tcp")
    o["rev"], o["rev_rt"] = iperf(k + "_tcp_reverse")
    o["p4"], o["p4_rt"] = iperf(k + "_tcp_4streams")
    o["rtt"], o["mdev"], o["loss"] = ping(k + "_ping")
    o["tcp_vs_ul"] = ratio(o["tcp"], ul)
    o["rtt_vs_ul"] = ratio(o["rtt"], ul_rtt)
    ov[k] = o
p = ov["pilot"]
comps = [k for k in keys if k != "pilot"]
skipped = dict(l.split("\t", 1) for l in lines("skipped"))
known = os.environ["KNOWN"].split()

result = {
    "underlay_tcp_gbps": r3(ul),
    "overlay_tcp_gbps": r3(p["tcp"]),
    "overlay_tcp_reverse_gbps": r3(p["rev"]),
    "overlay_tcp_4streams_gbps": r3(p["p4"]),
    "throughput_ratio": p["tcp_vs_ul"],
    "underlay_rtt_ms": ul_rtt,
    "underlay_rtt_mdev_ms": ul_mdev,
    "overlay_rtt_ms": p["rtt"],
    "overlay_rtt_mdev_ms": p["mdev"],
    "rtt_ratio": p["rtt_vs_ul"],
    "pilotd_rss_kib": {"a": p["rss"][0], "b": p["rss"][1]},
}
# The other overlays: the same figures under their own prefix, and pilot's divided by theirs
# (null when not measured, so the set of keys never changes).
versions = {"pilot": p["version"]}
for name in known:
    k = name.replace("-", "_")
    o = ov.get(k)
    get = lambda f: o[f] if o else None
    result.update({
        f"{k}_tcp_gbps": r3(get("tcp")),
        f"{k}_tcp_reverse_gbps": r3(get("rev")),
        f"{k}_tcp_4streams_gbps": r3(get("p4")),
        f"{k}_throughput_ratio": get("tcp_vs_ul"),
        f"{k}_rtt_ms": get("rtt"),
        f"{k}_rtt_mdev_ms": get("mdev"),
        f"{k}_rtt_ratio": get("rtt_vs_ul"),
        f"{k}_rss_kib": {"a": o["rss"][0], "b": o["rss"][1]} if o else None,
        f"{k}_mtu": get("mtu"),
        f"pilot_vs_{k}_ratio": ratio(p["tcp"], get("tcp")),
        f"pilot_vs_{k}_reverse_ratio": ratio(p["rev"], get("rev")),
        f"pilot_vs_{k}_4streams_ratio": ratio(p["p4"], get("p4")),
        f"pilot_vs_{k}_rtt_ratio": ratio(p["rtt"], get("rtt")),
    })
    versions[k] = get("version")
if "wireguard_go" in ov:
    versions["wireguard_tools"] = os.environ.get("WG_TOOLS_VERSION") or None
versions["iperf3"] = os.environ.get("IPERF3_VERSION") or None
load = [float(x) for x in os.environ["LOADAVG"].split()[:3]]
result.update({
    "versions": versions,
    "compared": {name: "measured" if name.replace("-", "_") in ov else skipped.get(name, "not measured")
                 for name in known},
    "mtu_mode": os.environ["MTU_MODE"],
    "kernel": platform.release(),
    "cpus": os.cpu_count(),
    "mtu": p["mtu"],
    "seconds": int(os.environ["BENCH_SECONDS"]),
    "commit": os.environ["COMMIT"],
    "loadavg_before": load,
    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
})

# The table: one column per overlay (underlay first), then pilot/X for each other overlay.
short = {"wireguard_go": "wg-go"}
L, W = 28, 13
heads = ["underlay"] + [ov[k]["name"] for k in keys] + ["pilot/" + short.get(k, k) for k in comps]
fmt = lambda x, spec: "-" if x is None else format(x, spec)

def row(label, under, field, spec, with_ratio=False):
    cells = [under] + [fmt(ov[k][field], spec) for k in keys]
    if with_ratio:
        cells += [fmt(ratio(p[field], ov[k][field]), ".3f") for k in comps]
    print(f"{label:<{L}}" + "".join(f"{c:>{W}}" for c in cells).rstrip())

print()
print(f"{'':<{L}}" + "".join(f"{h:>{W}}" for h in heads))
row("TCP A->B (Gbit/s)", f"{ul:.3f}", "tcp", ".3f", True)
row("TCP B->A, -R (Gbit/s)", "-", "rev", ".3f", True)
row("TCP A->B, -P 4 (Gbit/s)", "-", "p4", ".3f", True)
row("  retransmits A->B", fmt(ul_rt, "d"), "tcp_rt", "d")
row("  retransmits B->A, -R", "-", "rev_rt", "d")
row("  retransmits A->B, -P 4", "-", "p4_rt", "d")
row("RTT avg (ms)", f"{ul_rtt:.3f}", "rtt", ".3f", True)
row("RTT mdev (ms)", f"{ul_mdev:.3f}", "mdev", ".3f")
row("ping loss (%)", fmt(ul_loss, ".1f"), "loss", ".1f")
row("TCP A->B / underlay", "-", "tcp_vs_ul", ".3f")
row("RTT / underlay", "-", "rtt_vs_ul", ".3f")
row("tunnel MTU", meta("pilot").get("underlay_mtu", "-"), "mtu", "d")
row("inner IP version", "IPv4", "inner", "")
for k in keys:
    ov[k]["rss_txt"] = "%d/%d" % ov[k]["rss"]
row("peak RSS A/B (KiB)", "-", "rss_txt", "")
row("version", "-", "version", "")
notes = []
if comps:
    notes.append("pilot/X = pilot's figure divided by X's: above 1 for throughput means pilot is"
                 " faster, below 1 for RTT means pilot answers sooner.")
mtus = ", ".join(f"{ov[k]['name']} {ov[k]['mtu']}" for k in keys)
if not comps:
    pass
elif os.environ["MTU_MODE"] == "native":
    notes.append(f"MTU: each overlay at its own default ({mtus}); BENCH_MTU=N sets one for all.")
else:
    notes.append(f"MTU: the same tunnel MTU for every overlay ({mtus}), so packets are the same"
                 " size; BENCH_MTU=native leaves each tool at its default instead.")
if "nebula" in ov:
    notes.append("nebula carries IPv4 only: at the same MTU its TCP segments are 20 bytes larger"
                 " than over the IPv6 of pilot and wireguard-go.")
vs = [f"pilot {p['version']} (commit {result['commit']})"]
if "wireguard_go" in ov:
    v = ov["wireguard_go"]["version"]
    note = ""
    m = re.fullmatch(r"0\.0\.(\d{8})", v)
    if m and int(m.group(1)) < 20230223:
        note = " (no GSO/GRO: added in 0.0.20230223)"
    vs.append(f"wireguard-go {v}{note}, wireguard-tools {versions.get('wireguard_tools')}")
if "nebula" in ov:
    vs.append(f"nebula {ov['nebula']['version']}")
vs.append(f"iperf3 {versions['iperf3']}")
notes.append("versions: " + ", ".join(vs))
for name in known:
    if name in skipped:
        notes.append(f"not measured: {name}: {skipped[name]}")
notes.append(f"(kernel {result['kernel']}, {result['cpus']} CPUs, load average before the run"
             f" {os.environ['LOADAVG']}, {result['seconds']}s per iperf3 run; each overlay ran"
             " alone in its own namespaces, one after another; the underlay was measured between"
             " pilot's)")
print()
for n in notes:
    print(textwrap.fill(n, width=100, subsequent_indent="  "))

# Userspace mode, measured in the same run between fresh namespaces.
us_tcp, us_tcp_rt = iperf("userspace_tcp")
us_rev, us_rev_rt = iperf("userspace_tcp_reverse")
us_rtt, us_mdev, _ = ping("userspace_ping")
us_rss = int(meta("userspace")["rss_b"])
result.update({
    "userspace_tcp_gbps": r3(us_tcp),
    "userspace_tcp_reverse_gbps": r3(us_rev),
    "userspace_throughput_ratio": ratio(us_tcp, ul),
    "userspace_vs_kernel_ratio": ratio(us_tcp, p["tcp"]),
    "userspace_vs_kernel_reverse_ratio": ratio(us_rev, p["rev"]),
    "userspace_rtt_ms": us_rtt,
    "userspace_rss_kib": us_rss,
})
W = 14
print()
print(f"{'userspace mode (node B)':<{L}}{'kernel B':>{W}}{'userspace B':>{W}}{'user/kernel':>{W}}{'user/underlay':>{W}}")
print(f"{'TCP A->B (Gbit/s)':<{L}}{p['tcp']:>{W}.3f}{us_tcp:>{W}.3f}{fmt(ratio(us_tcp, p['tcp']), '.3f'):>{W}}{fmt(ratio(us_tcp, ul), '.3f'):>{W}}")
print(f"{'TCP B->A, -R (Gbit/s)':<{L}}{p['rev']:>{W}.3f}{us_rev:>{W}.3f}{fmt(ratio(us_rev, p['rev']), '.3f'):>{W}}{fmt(ratio(us_rev, ul), '.3f'):>{W}}")
print(f"{'  retransmits A->B / -R':<{L}}{fmt(p['tcp_rt'], 'd') + '/' + fmt(p['rev_rt'], 'd'):>{W}}{fmt(us_tcp_rt, 'd') + '/' + fmt(us_rev_rt, 'd'):>{W}}")
print(f"{'RTT avg (ms)':<{L}}{p['rtt']:>{W}.3f}{us_rtt:>{W}.3f}")
print(f"{'peak RSS of B (KiB)':<{L}}{p['rss'][1]:>{W}d}{us_rss:>{W}d}")
print(textwrap.fill(
    "userspace: node B ran `pilotd up --userspace` (smoltcp stack, no TUN) with iperf3 on its"
    " 127.0.0.1 reached through --expose; A->B is its stack receiving, -R its stack sending."
    " Node A is a kernel node in both columns.", width=100, subsequent_indent="  "))

# The NAT section: one row per pair, in the order they ran.
nat = None
if os.environ["BENCH_NAT"] == "1":
    nat = {}
    num = lambda v: int(v) if v else None
    for key in lines("nat_pairs"):
        with open(os.path.join(res, key + ".nat")) as f:
            m = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
        gbps, rt = iperf(key + "_tcp")
        rtt, mdev, loss = ping(key + "_ping")
        nat[m["pair"]] = {
            "path": m["path"],
            "expected_path": m["want"],
            "first_byte_ms": num(m["first_byte_ms"]),
            "direct_ms": num(m["direct_ms"]),
            "relay_ms": num(m["relay_ms"]),
            "tcp_gbps": r3(gbps),
            "tcp_retransmits": rt,
            "rtt_ms": rtt,
            "rtt_mdev_ms": mdev,
            "path_after": m["path_after"],
        }
    print()
    heads = ["NAT pair (A/B)", "path", "first byte ms", "direct ms", "TCP Gbit/s", "RTT ms"]
    widths = [16, 8, 15, 11, 12, 9]
    print("".join(f"{h:<{w}}" if i < 2 else f"{h:>{w}}" for i, (h, w) in enumerate(zip(heads, widths))))
    odd = []
    for pair, n in nat.items():
        path = n["path"] + ("*" if n["path"] != n["expected_path"] or n["path_after"] != n["path"] else "")
        if n["path"] != n["expected_path"]:
            odd.append(f"{pair} ended on {n['path']}, expected {n['expected_path']}.")
        if n["path_after"] != n["path"]:
            odd.append(f"{pair}: the path changed to {n['path_after']} during the measurements.")
        cells = [pair, path, fmt(n["first_byte_ms"], "d"), fmt(n["direct_ms"], "d"),
                 fmt(n["tcp_gbps"], ".3f"), fmt(n["rtt_ms"], ".3f")]
        print("".join(f"{c:<{w}}" if i < 2 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(cells, widths))).rstrip())
    print()
    nat_notes = [
        "+tls: A's router drops all UDP; A registered over TLS (TCP 443 of the rendezvous) and"
        " every packet between A and B goes A -> TLS -> rendezvous -> UDP relay -> B.",
        "first byte: from bob's `pilotctl approve` (both daemons up and registered) to the first byte of an HTTP"
        " reply from B's fd70 address, curl retried from A every 20 ms with a 1 s timeout. direct:"
        " until A's `pilotctl peers` (polled every ~20 ms) reports path=direct; '-' when the pair"
        f" stays relayed (relay counted as settled after holding {os.environ['NAT_STABLE']} s)."
        " TCP: iperf3, one stream A->B; RTT: kernel ping, both through the path the pair ended on.",
        "natlab's routers, its 'internet' and the rendezvous are network namespaces on this same"
        f" {os.cpu_count()}-core machine: a relayed packet goes A -> nat1 -> inet -> rendezvous ->"
        " inet -> nat2 -> B, and the rendezvous process shares the cores with both daemons and"
        " iperf3, so relayed throughput is bounded by that CPU, not by any link. The rendezvous"
        f" ran with --relay-rate {os.environ['RELAY_RATE']} Mbit/s per node (pilotd's default, 100,"
        " would cap relayed TCP near 0.1 Gbit/s); BENCH_RELAY_RATE=100 measures with the default.",
    ] + odd
    for n in nat_notes:
        print(textwrap.fill(n, width=100, subsequent_indent="  "))
result["nat"] = nat
result["nat_relay_rate_mbit"] = int(os.environ["RELAY_RATE"]) if nat is not None else None

print()
line = json.dumps(result, separators=(",", ":"))
print(line)
if os.environ.get("BENCH_JSON"):
    with open(os.environ["BENCH_JSON"], "w") as f:
        f.write(line + "\n")
