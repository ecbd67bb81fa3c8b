"""natlab delayer (natlab up --delay; stdlib only).

delay.py QUEUE MS   holds every packet the kernel puts in NFQUEUE number QUEUE for MS
                    milliseconds, then accepts it (the kernel here has no sch_netem). Speaks
                    nfnetlink_queue over a raw netlink socket; runs in the lab's inet namespace,
                    where the iptables NFQUEUE rules send it the packets of the NAT routers'
                    public links. `up` writes it into the lab's state dir and runs it from there.
"""
import collections, os, select, signal, socket, struct, sys, time

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
SO_RCVBUFFORCE = 33
NLM_F_REQUEST, NLM_F_ACK = 1, 4
NLMSG_ERROR = 2
SUBSYS_QUEUE = 3 << 8
MSG_PACKET, MSG_CONFIG, MSG_VERDICT_BATCH = 0, 2, 3
CFG_CMD, CFG_PARAMS, CFG_QUEUE_MAXLEN, CFG_MASK, CFG_FLAGS = 1, 2, 3, 4, 5
CMD_BIND = 1
COPY_META = 1           # we only need the packet id, never the payload
F_GSO = 4               # hand over GSO packets whole instead of segmenting them
PACKET_HDR, VERDICT_HDR = 1, 2
NF_ACCEPT = 1


def nla(kind, payload):
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + b"\0" * (-n % 4)


class Queue:
    def __init__(self, num):
        self.num = num
        self.seq = 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
        self.sock.bind((0, 0))

    def send(self, msg, attrs, ack=False):
        self.seq += 1
        body = struct.pack("!BBH", socket.AF_UNSPEC, 0, self.num) + b"".join(attrs)
        flags = NLM_F_REQUEST | (NLM_F_ACK if ack else 0)
        self.sock.send(struct.pack("=IHHII", 16 + len(body), SUBSYS_QUEUE | msg, flags, self.seq, 0) + body)
        if ack:
            reply = self.sock.recv(65536)
            if struct.unpack_from("=H", reply, 4)[0] == NLMSG_ERROR:
                err = struct.unpack_from("=i", reply, 16)[0]
                if err:
                    raise OSError(-err, "nfnetlink_queue config: " + os.strerror(-err))

    def bind(self, maxlen):
        self.send(MSG_CONFIG, [nla(CFG_CMD, struct.pack("!BxH", CMD_BIND, 0))], ack=True)
        self.send(MSG_CONFIG, [nla(CFG_PARAMS, struct.pack("!IB", 0, COPY_META)),
                               nla(CFG_QUEUE_MAXLEN, struct.pack("!I", maxlen)),
                               nla(CFG_MASK, struct.pack("!I", F_GSO)),
                               nla(CFG_FLAGS, struct.pack("!I", F_GSO))], ack=True)

    def accept_up_to(self, packet_id):
        # One batch verdict accepts every queued packet with an id <= packet_id. The delay is
        # the same for all packets, so they leave in the order they came (ids increase).
        self.send(MSG_VERDICT_BATCH, [nla(VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id))])


def packet_ids(data):
    off = 0
    while off + 16 <= len(data):
        length, kind = struct.unpack_from("=IH", data, off)
        if length < 16:
            return
        if kind == SUBSYS_QUEUE | MSG_PACKET:
            pos, end = off + 20, off + length
            while pos + 4 <= end:
                alen, atype = struct.unpack_from("=HH", data, pos)
                if alen < 4:
                    break
                if atype & 0x7FFF == PACKET_HDR:
                    yield struct.unpack_from("!I", data, pos + 4)[0]
                pos += (alen + 3) & ~3
        off += (length + 3) & ~3


def main():
    num, delay = int(sys.argv[1]), float(sys.argv[2]) / 1000.0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    queue = Queue(num)
    queue.bind(50000)
    held = collections.deque()  # (due, packet id), due times increasing
    print("ready: queue %d, delay %.3f ms" % (num, delay * 1000), flush=True)
    while True:
        timeout = max(0.0, held[0][0] - time.monotonic()) if held else None
        readable, _, _ = select.select([queue.sock], [], [], timeout)
        if readable:
            now = time.monotonic()
            while True:
                try:
                    data = queue.sock.recv(1 << 20, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                for pid in packet_ids(data):
                    held.append((now + delay, pid))
        now = time.monotonic()
        last = None
        while held and held[0][0] <= now:
            last = held.popleft()[1]
        if last is not None:
            queue.accept_up_to(last)


main()
