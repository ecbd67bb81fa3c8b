"""scripts/idle.sh's two steps, run with settings in the environment (see idle.sh).

snapshot   per-thread context switches of the processes in PIDS ("name=pid ...") and the UDP
           counters in the file SNMP (/proc/net/snmp and snmp6 of node A's namespace), as one
           JSON object on standard output
summarize  the table and the JSON line from RESULTS/t0.json and RESULTS/t1.json
"""
import datetime
import json
import os
import sys
import time


def snapshot():
    out = {"t": time.monotonic(), "procs": {}, "udp": {"in": 0, "out": 0}}
    for item in os.environ["PIDS"].split():
        name, pid = item.split("=")
        tasks = {}
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                f = dict(l.split(":", 1) for l in open(f"/proc/{pid}/task/{tid}/status") if ":" in l)
            except OSError:
                continue  # the thread exited meanwhile
            tasks[tid] = [f["Name"].strip(), int(f["voluntary_ctxt_switches"]),
                          int(f["nonvoluntary_ctxt_switches"])]
        out["procs"][name] = tasks
    rows = [l.split() for l in open(os.environ["SNMP"])]
    for i, r in enumerate(rows):  # "Udp: InDatagrams ..." header then values; snmp6: "Udp6InDatagrams N"
        if r[0] == "Udp:" and i + 1 < len(rows) and rows[i + 1][0] == "Udp:" and not r[1].isdigit():
            vals = dict(zip(r[1:], map(int, rows[i + 1][1:])))
            out["udp"]["in"] += vals["InDatagrams"]
            out["udp"]["out"] += vals["OutDatagrams"]
        elif r[0] in ("Udp6InDatagrams", "Udp6OutDatagrams"):
            out["udp"]["in" if "In" in r[0] else "out"] += int(r[1])
    print(json.dumps(out))


def summarize():
    env = os.environ
    t0, t1 = (json.load(open(os.path.join(env["RESULTS"], n + ".json"))) for n in ("t0", "t1"))
    secs = t1["t"] - t0["t"]
    now = datetime.datetime.now(datetime.timezone.utc)
    result = {"test": "idle", "date": now.isoformat(timespec="seconds"),
              "commit": env["COMMIT"] or None, "bin": env["BIN"], "nats": env["NATS"],
              "settle_s": int(env["SETTLE"]), "window_s": round(secs, 1),
              "path": [env["PATH_BEFORE"], env["PATH_AFTER"]],
              "loadavg_before": env["LOADAVG"], "nproc": os.cpu_count()}
    labels = {"a": "pilotd A", "b": "pilotd B", "rdv": "rendezvous"}
    print(f"\nIdle wake-ups over {secs:.1f} s (NATs {env['NATS']}, after {env['SETTLE']} s settle;"
          f" path A->B {env['PATH_BEFORE']} -> {env['PATH_AFTER']})")
    print(f"  {'process':<12} {'wake-ups/s':>10} {'voluntary':>10} {'nonvol':>8} {'threads':>8}  by thread (/s)")
    for p, label in labels.items():
        before, after = t0["procs"][p], t1["procs"][p]
        vol = sum(v for _, v, _ in after.values()) - sum(before[t][1] for t in after if t in before)
        nonvol = sum(n for _, _, n in after.values()) - sum(before[t][2] for t in after if t in before)
        per = {}
        for tid, (name, v, n) in after.items():
            b = before.get(tid, [name, 0, 0])
            per[name] = per.get(name, 0) + (v - b[1]) + (n - b[2])
        gone, born = len(set(before) - set(after)), len(set(after) - set(before))
        rate = (vol + nonvol) / secs
        threads = f"{len(after)}" + (f" (+{born}/-{gone})" if born or gone else "")
        detail = ", ".join(f"{k} {v / secs:.1f}" for k, v in sorted(per.items(), key=lambda kv: -kv[1]))
        print(f"  {label:<12} {rate:>10.1f} {vol:>10} {nonvol:>8} {threads:>8}  {detail}")
        result[p] = {"wakeups_per_s": round(rate, 1), "voluntary": vol, "nonvoluntary": nonvol,
                     "threads": len(after), "threads_born": born, "threads_gone": gone,
                     "by_thread_per_s": {k: round(v / secs, 2) for k, v in per.items()}}
    udp_in, udp_out = (t1["udp"][k] - t0["udp"][k] for k in ("in", "out"))
    print(f"  node A UDP (kernel counters of its namespace): sent {udp_out} ({udp_out / secs:.2f}/s),"
          f" received {udp_in} ({udp_in / secs:.2f}/s)")
    result["a"]["udp_sent"], result["a"]["udp_received"] = udp_out, udp_in
    line = json.dumps(result, separators=(",", ":"))
    print("\n" + line)
    if env.get("IDLE_JSON"):
        with open(env["IDLE_JSON"], "w") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    {"snapshot": snapshot, "summarize": summarize}[sys.argv[1]]()
