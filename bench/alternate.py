#!/usr/bin/env python3
"""Closed-loop comparison in alternation: several load generators against one target, one at a time.

    alternate.py --out FILE --target-pid PID [--admin URL] [--slot S] [--cycles N] [--cpu C] NAME=COMMAND...

Why: the bench machine is a shared VM whose speed drifts by a third within a few
seconds, so running tool A for 10 s and then tool B for 10 s compares the
machine's moods, not the tools. Here every tool is started once (its own
connections, its own listener :BASE_PORT+i), then frozen with SIGSTOP, and
the tools take turns of SLOT seconds for CYCLES cycles (order reversed every
other cycle): each runs alone while it runs, and every tool sees the same
machine. A tool's throughput is the requests the target counted on its listener
divided by the time it was running; its CPU is what the kernel accounted to it
(/proc/PID/task/*/schedstat, in ns) over the same turns.

COMMAND is a shell-free argument string; `{url}` becomes the tool's URL and
`{duration}` a duration in seconds long enough for the whole alternation. Each
generator runs under `taskset -c C`. The target is Envoy (bench/envoy.yaml's
listeners gen0-gen3) or harness/crates/load/examples/responder.rs, which serves
the same counters. Writes a JSON file for results.py.
"""
import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request

ADMIN = "http://127.0.0.1:9901"  # --admin: the target's stats endpoint
START_DEADLINE_S = 10


def stats(admin):
    """Per-listener counters: {i: {"downstream_rq_total": n, "downstream_rq_2xx": n, "downstream_cx_active": n}}."""
    url = admin + "/stats?filter=" + urllib.parse.quote(r"^http\.gen[0-9]\.downstream_(rq_total|rq_2xx|cx_active)$")
    out = {}
    for line in urllib.request.urlopen(url, timeout=5).read().decode().splitlines():
        name, value = line.split(": ")
        i = int(name.split(".")[1][3:])
        out.setdefault(i, {})[name.rsplit(".", 1)[1]] = int(value)
    return out


def cpu_ns(pid):
    """On-CPU time of all of a process's threads, in ns."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(open(f"/proc/{pid}/task/{tid}/schedstat").read().split()[0])
        except FileNotFoundError:
            pass  # the thread exited between listdir and open
    return total


def sys_share(pid):
    """Fraction of the process's CPU ticks spent in the kernel (from /proc/PID/stat)."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    utime, stime = int(f[11]), int(f[12])
    return stime / max(utime + stime, 1)


def hwm_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--target-pid", type=int, required=True, help="the target's process, for its CPU time")
    ap.add_argument("--admin", default=ADMIN, help="where the target serves Envoy-style /stats")
    ap.add_argument("--base-port", type=int, default=10010, help="tool i gets 127.0.0.1:BASE_PORT+i")
    ap.add_argument("--slot", type=float, default=0.25)
    ap.add_argument("--cycles", type=int, default=40)
    ap.add_argument("--cpu", default="1")
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("tools", nargs="+", metavar="NAME=COMMAND")
    a = ap.parse_args()
    specs = [t.split("=", 1) for t in a.tools]
    # Started one by one (0.5-2 s each), then the turns, then a margin: each
    # tool's own duration must outlast all of it, the tools are stopped anyway.
    duration = int(len(specs) * (START_DEADLINE_S + 1) + a.cycles * len(specs) * a.slot + 10)
    procs = []

    def cleanup():
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.kill()
                p.wait()

    try:
        out_dir = os.path.dirname(os.path.abspath(a.out))
        for i, (name, cmd) in enumerate(specs):
            argv = [x.format(url=f"http://127.0.0.1:{a.base_port + i}/", duration=duration) for x in shlex.split(cmd)]
            log = open(os.path.join(out_dir, f"alt-{name}.log"), "w")
            p = subprocess.Popen(["taskset", "-c", a.cpu, *argv], stdout=log, stderr=subprocess.STDOUT)
            procs.append(p)
            deadline = time.monotonic() + START_DEADLINE_S
            while stats(a.admin).get(i, {}).get("downstream_cx_active", 0) < a.conns:
                if p.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"alternate.py: {name} did not open {a.conns} connections to :{a.base_port + i} "
                             f"(see {log.name})")
                time.sleep(0.05)
            time.sleep(0.3)  # let it settle into its loop before freezing it
            p.send_signal(signal.SIGSTOP)

        k = len(specs)
        res = [dict(name=n, command=c, requests=0, seconds=0.0, cpu_ns=0, target_cpu_ns=0, turns=[])
               for n, c in specs]
        time.sleep(0.2)  # every tool is frozen: let the target answer what is in flight
        base = last = stats(a.admin)
        for cycle in range(a.cycles):
            order = range(k) if cycle % 2 == 0 else reversed(range(k))
            for i in order:
                p = procs[i]
                c0, e0 = cpu_ns(p.pid), cpu_ns(a.target_pid)
                t0 = time.monotonic()
                p.send_signal(signal.SIGCONT)
                time.sleep(a.slot)
                p.send_signal(signal.SIGSTOP)
                t1 = time.monotonic()
                if p.poll() is not None:
                    sys.exit(f"alternate.py: {specs[i][0]} exited during the run (status {p.returncode})")
                now = stats(a.admin)
                c1, e1 = cpu_ns(p.pid), cpu_ns(a.target_pid)
                # Requests are counted on arrival, so a request sent just before the
                # SIGSTOP may land in the next turn's reading: still on this listener.
                n = now[i]["downstream_rq_total"] - last[i]["downstream_rq_total"]
                last = now
                r = res[i]
                r["requests"] += n
                r["seconds"] += t1 - t0
                r["cpu_ns"] += c1 - c0
                r["target_cpu_ns"] += e1 - e0
                r["turns"].append([cycle, n, round(t1 - t0, 6), c1 - c0, e1 - e0])
        time.sleep(0.2)
        end = stats(a.admin)
        for i, (r, p) in enumerate(zip(res, procs)):
            failed = lambda s: s[i]["downstream_rq_total"] - s[i]["downstream_rq_2xx"]
            r["non_2xx"] = failed(end) - failed(base)
            r["sys_share"] = sys_share(p.pid)
            r["max_rss_kib"] = hwm_kib(p.pid)
        json.dump(dict(slot=a.slot, cycles=a.cycles, cpu=a.cpu, conns=a.conns, tools=res), open(a.out, "w"), indent=1)
    finally:
        cleanup()


if __name__ == "__main__":
    main()
