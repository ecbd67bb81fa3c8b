"""scripts/soak.sh's helpers.

junk TARGET...              random datagrams to the targets (ip:port), a fifth of them starting
                            like WireGuard (1-4), a fifth like a Pilot control message
                            (0x50-0x63), at ~400 a second until killed
judge CSV SECONDS CLK_TCK   the summary table of the samples in CSV; exits 1 on growth
"""
import csv
import os
import random
import socket
import statistics
import sys
import time


def junk(args):
    targets = [(t.rsplit(":", 1)[0], int(t.rsplit(":", 1)[1])) for t in args]
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = 0
    while True:
        for _ in range(40):
            n = random.randint(0, 1400)
            d = bytearray(os.urandom(n))
            r = random.random()
            if n and r < 0.2:
                d[0] = random.randint(1, 4)
            elif n and r < 0.4:
                d[0] = random.randint(0x50, 0x63)
            try:
                s.sendto(bytes(d), random.choice(targets))
                sent += 1
            except OSError:
                pass
        time.sleep(0.1)


def judge(args):
    path, duration, hz = args[0], int(args[1]), int(args[2])
    rows = [r for r in csv.reader(open(path))]
    warm = min(60, duration // 4)
    failed = []
    print("%-10s %10s %10s %8s %8s %10s %10s %9s %9s" % (
        "daemon", "rss KiB", "rss KiB", "fds", "fds", "store B", "store B", "cpu %", "cpu %"))
    print("%-10s %10s %10s %8s %8s %10s %10s %9s %9s" % (
        "", "after warm", "at end", "warm", "end", "warm", "end", "1st half", "2nd half"))
    for proc in ("rendezvous", "alice"):
        s = [(int(t), int(rss), int(fds), int(cpu), int(store), int(wal))
             for t, p, rss, fds, cpu, store, wal in rows if p == proc]
        after = [x for x in s if x[0] >= warm]
        base = after[: max(3, len(after) // 3)]
        end = after[-3:]
        med = lambda xs, i: statistics.median(x[i] for x in xs)
        rss0, rss1 = med(base, 1), med(end, 1)
        fds0, fds1 = med(base, 2), med(end, 2)
        st0, st1 = med(base, 4), s[-1][4]
        mid = after[len(after) // 2]
        rate = lambda a, b: 100.0 * (b[3] - a[3]) / hz / max(1, b[0] - a[0])
        cpu0, cpu1 = rate(after[0], mid), rate(mid, after[-1])
        print("%-10s %10d %10d %8d %8d %10d %10d %9.1f %9.1f" % (
            proc, rss0, rss1, fds0, fds1, st0, st1, cpu0, cpu1))
        if rss1 > rss0 * 1.25 + 4096:
            failed.append("%s: RSS grew from %d to %d KiB" % (proc, rss0, rss1))
        if fds1 > fds0 + 8:
            failed.append("%s: open fds grew from %d to %d" % (proc, fds0, fds1))
        if proc == "rendezvous" and st1 > st0 + 2 * 1024 * 1024:
            failed.append("the rendezvous' database grew from %d to %d bytes" % (st0, st1))
        wal = max(x[5] for x in s)
        if proc == "rendezvous" and wal > 8 * 1024 * 1024:
            failed.append("the rendezvous' write-ahead log reached %d bytes" % wal)
        # In a short run the halves hold unequal numbers of iperf3 bursts: judged from 10 minutes.
        if duration >= 600 and cpu1 > 2 * cpu0 + 5:
            failed.append("%s: CPU went from %.1f %% to %.1f %%" % (proc, cpu0, cpu1))
    for f in failed:
        print("GROWTH: " + f)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    {"junk": junk, "judge": judge}[sys.argv[1]](sys.argv[2:])
