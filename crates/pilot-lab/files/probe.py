"""natlab probe (natlab check, flush; stdlib only).

probe.py server EP...    a STUN-like UDP echo server: replies with the source ip:port it saw,
                         and on request sends unsolicited "pokes" from its other sockets.
probe.py client ...      sends from ONE socket to several servers, prints what each one saw
                         and which pokes got in (and from where), one "key value" per line.
probe.py isolation NS... checks that every interface of the given namespaces stays inside them.
probe.py ctflush         empties the conntrack table of the namespace it runs in (what
                         `conntrack -F` does, over ctnetlink, so no conntrack package needed).

natlab (crates/pilot-lab) writes it into the lab's state dir and runs it from there.
"""
import heapq, itertools, json, os, select, socket, struct, subprocess, sys, time


def parse_ep(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


def fmt(addr):
    return "%s:%d" % (addr[0], addr[1])


def server(binds):
    socks = {}
    for b in binds:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(parse_ep(b))
        socks[fmt(s.getsockname())] = s
    print(json.dumps({"bound": list(socks)}), flush=True)
    pending, order, scheduled = [], itertools.count(), set()
    while True:
        timeout = max(0.0, pending[0][0] - time.monotonic()) if pending else None
        readable, _, _ = select.select(list(socks.values()), [], [], timeout)
        for s in readable:
            try:
                data, addr = s.recvfrom(4096)
                msg = json.loads(data)
            except (OSError, ValueError):
                continue
            if not isinstance(msg, dict):
                continue
            op, mid = msg.get("op"), msg.get("id")
            if op == "echo":
                s.sendto(json.dumps({"op": "echo", "id": mid, "seen": fmt(addr)}).encode(), addr)
            elif op == "poke":
                s.sendto(json.dumps({"op": "poke-ack", "id": mid, "seen": fmt(addr)}).encode(), addr)
                if (addr, mid) in scheduled:
                    continue  # a retried request: the pokes are already on their way
                scheduled.add((addr, mid))
                start, gap = time.monotonic(), float(msg.get("gap", 0.02))
                for k in range(int(msg.get("copies", 5))):
                    for src in msg.get("from", []):
                        if src in socks:
                            body = json.dumps({"op": "poked", "id": mid, "from": src}).encode()
                            heapq.heappush(pending, (start + k * gap, next(order), src, body, addr))
        now = time.monotonic()
        while pending and pending[0][0] <= now:
            _, _, src, body, addr = heapq.heappop(pending)
            try:
                socks[src].sendto(body, addr)
            except OSError:
                pass


def client(args):
    opts = {"echo": [], "poke_from": [], "poke_via": None, "timeout": 0.3, "tries": 12,
            "copies": 8, "gap": 0.02, "bind": "0.0.0.0:0"}
    it = iter(args)
    for a in it:
        key = a.lstrip("-").replace("-", "_")
        if key in ("echo", "poke_from"):
            opts[key].append(next(it))
        elif key in ("timeout", "gap"):
            opts[key] = float(next(it))
        elif key in ("tries", "copies"):
            opts[key] = int(next(it))
        elif key in ("poke_via", "bind"):
            opts[key] = next(it)
        else:
            sys.exit("probe client: unknown option " + a)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(parse_ep(opts["bind"]))
    out = [("port", s.getsockname()[1])]
    base = int.from_bytes(os.urandom(4), "big")
    pokes = {}  # poke id -> {claimed source: actual source}

    def receive(until, want=None):
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return None
            if not select.select([s], [], [], left)[0]:
                return None
            try:
                data, addr = s.recvfrom(4096)
                msg = json.loads(data)
            except (OSError, ValueError):
                continue
            if not isinstance(msg, dict):
                continue
            if msg.get("op") == "poked":
                pokes.setdefault(msg.get("id"), {})[str(msg.get("from"))] = fmt(addr)
            elif want is not None and (msg.get("op"), msg.get("id")) == want:
                return msg

    def transact(dest, msg, reply_op):
        for _ in range(opts["tries"]):
            try:
                s.sendto(json.dumps(msg).encode(), parse_ep(dest))
            except OSError:
                pass
            got = receive(time.monotonic() + opts["timeout"], (reply_op, msg["id"]))
            if got is not None:
                return got
        return None

    for n, dest in enumerate(opts["echo"]):
        got = transact(dest, {"op": "echo", "id": base + n}, "echo")
        out.append(("echo%d" % n, got and got.get("seen")))
    if opts["poke_via"]:
        pid = base + 1000
        msg = {"op": "poke", "id": pid, "from": opts["poke_from"], "copies": opts["copies"], "gap": opts["gap"]}
        out.append(("ack", "yes" if transact(opts["poke_via"], msg, "poke-ack") else "no"))
        receive(time.monotonic() + opts["copies"] * opts["gap"] + 2 * opts["timeout"])
        got = pokes.get(pid, {})
        out += [("poke%d" % n, got.get(src)) for n, src in enumerate(opts["poke_from"])]
    # One "key value" line each (value "-" for no answer): easy to read from a shell.
    for key, value in out:
        print(key, "-" if value is None else value)


def ip_json(ns, *args):
    res = subprocess.run(["ip", "-n", ns, "-j"] + list(args), capture_output=True, text=True, check=True)
    return json.loads(res.stdout or "[]")


def isolation(namespaces):
    """Every interface is lo, a bridge, a TUN device, or a veth whose peer is in the lab."""
    links = {ns: ip_json(ns, "-d", "link", "show") for ns in namespaces}
    problems = []
    for ns in namespaces:
        nsids = {e["nsid"]: e.get("name") for e in ip_json(ns, "netns", "list-id")}
        for link in links[ns]:
            name, kind = link["ifname"], link.get("linkinfo", {}).get("info_kind")
            if name == "lo" or kind in ("bridge", "tun"):
                continue
            if kind != "veth":
                problems.append("%s: %s is a %s device" % (ns, name, kind or "physical"))
                continue
            peer_ns = nsids.get(link["link_netnsid"]) if "link_netnsid" in link else ns
            if peer_ns not in links:
                problems.append("%s: veth %s has its peer outside the lab (%s)" % (ns, name, peer_ns))
                continue
            if not any(p["ifindex"] == link.get("link_index") for p in links[peer_ns]):
                problems.append("%s: veth %s: peer not found in %s" % (ns, name, peer_ns))
    for p in problems:
        print(p)
    sys.exit(1 if problems else 0)


def conntrack_entries():
    try:
        with open("/proc/net/nf_conntrack") as f:
            return sum(1 for _ in f)
    except OSError:
        return 0  # no conntrack in this namespace yet (e.g. a router of kind none)


def ctflush():
    before = conntrack_entries()
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 12)  # NETLINK_NETFILTER
    sock.bind((0, 0))
    # IPCTNL_MSG_CT_DELETE (subsystem CTNETLINK = 1) without a tuple deletes every entry;
    # family AF_UNSPEC: IPv4 and IPv6.
    body = struct.pack("!BBH", socket.AF_UNSPEC, 0, 0)
    sock.send(struct.pack("=IHHII", 16 + len(body), (1 << 8) | 2, 1 | 4, 1, 0) + body)
    reply = sock.recv(65536)
    if struct.unpack_from("=H", reply, 4)[0] == 2:  # NLMSG_ERROR; error 0 is the ack
        err = struct.unpack_from("=i", reply, 16)[0]
        if err:
            sys.exit("conntrack flush: " + os.strerror(-err))
    print("flushed %d conntrack entries (%d left)" % (before, conntrack_entries()))


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    if mode == "server":
        server(rest)
    elif mode == "client":
        client(rest)
    elif mode == "isolation":
        isolation(rest)
    elif mode == "ctflush":
        ctflush()
    else:
        sys.exit("usage: probe.py server EP... | client ... | isolation NS... | ctflush")
