"""The open-loop comparison of bench/run.sh (meshtest vs wrk2), as markdown for RESULTS.md.

Reads bench/out/open-RATE-TOOL-ROUND.{out,time,target_ns} (and meshtest's report
directories) and the stall runs. Every figure of a rate comes from the same
alternating run: per rate, the rounds of both tools took turns against one Envoy.
"""
import json
import os
import re
import statistics



def _read(out, name):
    p = os.path.join(out, name)
    return open(p).read() if os.path.exists(p) else None


def _cpu_s(out, name):
    u, s, _e, _m = _read(out, name + ".time").split()[-4:]
    return float(u) + float(s)


def _ms(v, unit):
    return float(v) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk2_latency(text, pct):
    """wrk2 --latency: the 'NN.000%  1.23ms' line of its corrected (HdrHistogram) distribution."""
    m = re.search(r"^\s*%s%%\s+([\d.]+)(us|ms|s|m)\b" % re.escape(pct), text, re.M)
    return _ms(*m.groups()) if m else float("nan")


def wrk2_run(out, name):
    t = _read(out, name + ".out")
    n = int(re.search(r"(\d+) requests in", t).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
    return dict(requests=n, achieved=rps, p50=wrk2_latency(t, "50.000"), p99=wrk2_latency(t, "99.000"),
                cpu=_cpu_s(out, name), errors=sum(int(x) for x in errs.groups()) if errs else 0,
                saturated=None, conns=None)


def meshtest_run(out, name):
    s = json.load(open(os.path.join(out, name, "summary.json")))
    sat = s["saturation"]
    return dict(requests=s["requests"]["total"], achieved=s["rate"]["achieved"], p50=s["latency_ms"]["p50"],
                p99=s["latency_ms"]["p99"], cpu=_cpu_s(out, name), errors=s["requests"]["errors"],
                saturated=sat["rate"] if sat["saturated"] else 0, conns=s["connections_used"],
                cap=s["connections"], threads=s["threads"])


def _runs(out, rate, tool, rounds):
    parse = meshtest_run if tool == "meshtest" else wrk2_run
    runs = []
    for k in range(1, rounds + 1):
        name = f"open-{rate}-{tool}-{k}"
        if _read(out, name + ".time") is None:
            continue
        r = parse(out, name)
        ns = _read(out, name + ".target_ns")
        r["target_s"] = int(ns) / 1e9 if ns else float("nan")
        runs.append(r)
    return runs


def _aggregate(runs):
    n = sum(r["requests"] for r in runs)
    return dict(
        achieved=statistics.median(r["achieved"] for r in runs),
        p50=statistics.median(r["p50"] for r in runs),
        p99=statistics.median(r["p99"] for r in runs),
        us=sum(r["cpu"] for r in runs) / max(n, 1) * 1e6,
        target_us=sum(r["target_s"] for r in runs) / max(n, 1) * 1e6,
        errors=sum(r["errors"] for r in runs),
        saturated=[r["saturated"] for r in runs if r.get("saturated")],
        conns=max((r["conns"] or 0) for r in runs),
        rounds=len(runs),
    )


def comparison(out, env):
    """{rate: {"meshtest": agg, "wrk2": agg, "runs": {...}}} for the rates that ran."""
    rounds = int(env.get("open_rounds", "5"))
    res = {}
    for rate in env.get("open_rates", "").split():
        runs = {t: _runs(out, rate, t, rounds) for t in ("meshtest", "wrk2")}
        if runs["meshtest"] and runs["wrk2"]:
            res[int(rate)] = dict(meshtest=_aggregate(runs["meshtest"]), wrk2=_aggregate(runs["wrk2"]), runs=runs)
    return res


def stall(out):
    """p99/max of meshtest's and wrk2's stall runs (ms), when they ran."""
    res = {}
    if os.path.exists(os.path.join(out, "stall", "summary.json")):
        s = json.load(open(os.path.join(out, "stall", "summary.json")))
        res["meshtest"] = dict(p99=s["latency_ms"]["p99"], max=s["latency_ms"]["max"],
                               achieved=s["rate"]["achieved"])
    t = _read(out, "stall-wrk2.out")
    if t:
        res["wrk2"] = dict(p99=wrk2_latency(t, "99.000"), max=wrk2_latency(t, "100.000"),
                           achieved=float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1)))
    return res


PROTOCOLS = [("h2c", "meshtest --http2 (h2c, prior knowledge)"),
             ("tls", "meshtest over TLS (HTTP/1.1)"),
             ("mtls", "meshtest over mutual TLS (HTTP/1.1, client certificate)"),
             ("h2-tls", "meshtest --http2 over TLS (ALPN h2)"),
             ("wrk2-tls", "wrk2 over TLS (HTTP/1.1), for reference")]


def protocols(out, env):
    """The open loop over HTTP/2 and TLS at PROTO_RATE, as markdown ('' when it did not run)."""
    rows = []
    for key, label in PROTOCOLS:
        name = "proto-" + key
        if _read(out, name + ".time") is None:
            continue
        r = wrk2_run(out, name) if key.startswith("wrk2") else meshtest_run(out, name)
        ns = _read(out, name + ".target_ns")
        target = int(ns) / 1e3 / max(r["requests"], 1) if ns and int(ns) else 0.0
        conns = env.get("wrk2_conns") if key.startswith("wrk2") else r["conns"]
        rows.append(f"| {label} | {r['achieved']:.0f} | {r['p50']:.3f} | {r['p99']:.3f} | "
                    f"{r['cpu'] / max(r['requests'], 1) * 1e6:.2f} | {_us(target)} | {conns} | {r['errors']} |")
    if not rows:
        return ""
    return "\n".join([
        f"\n### The open loop over HTTP/2 and TLS, {env.get('proto_rate', '?')}/s\n",
        "meshtest's hyper client carries these (the hand-rolled HTTP/1.1 client only speaks plain text), in "
        "the same pool and thread structure; with HTTP/2 each generator thread multiplexes over one connection. "
        "Envoy's :10002 (TLS) and :10003 (mTLS, bench CA client certificate) listeners, one run each.\n",
        "| run | achieved/s | p50 ms | p99 ms | CPU µs/req | Envoy µs/req | conns used | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|", *rows]) + "\n"


def checks(cmp, st):
    """Acceptance rows of issue 10: (criterion, measured, pass)."""
    rows = []
    if 50000 in cmp:
        m, w = cmp[50000]["meshtest"], cmp[50000]["wrk2"]
        rows.append(("open loop 50,000/s: achieved >= 99% of asked",
                     f"{m['achieved']:.0f}/s ({m['achieved'] / 500:.1f}%; wrk2 {w['achieved']:.0f}/s)",
                     m["achieved"] >= 0.99 * 50000))
        rows.append(("open loop 50,000/s: p99 <= 2x wrk2's, or < 5 ms",
                     f"{m['p99']:.2f} ms vs wrk2 {w['p99']:.2f} ms ({m['p99'] / w['p99']:.2f}x)",
                     m["p99"] <= 2 * w["p99"] or m["p99"] < 5))
        rows.append(("open loop 50,000/s: CPU per request <= wrk2's",
                     f"{m['us']:.2f} vs {w['us']:.2f} µs ({m['us'] / w['us']:.2f}x)", m["us"] <= w["us"]))
    if 65000 in cmp:
        m, w = cmp[65000]["meshtest"], cmp[65000]["wrk2"]
        rows.append(("open loop 65,000/s: achieved >= wrk2's",
                     f"{m['achieved']:.0f} vs {w['achieved']:.0f}/s ({m['achieved'] / w['achieved']:.3f}x)",
                     m["achieved"] >= w["achieved"]))
    if cmp:
        ratios = ", ".join(f"{r // 1000}k {cmp[r]['meshtest']['us'] / cmp[r]['wrk2']['us']:.2f}x" for r in sorted(cmp))
        rows.append(("open loop, every rate: CPU per request <= wrk2's", ratios,
                     all(cmp[r]["meshtest"]["us"] <= cmp[r]["wrk2"]["us"] for r in cmp)))
    if "meshtest" in st:
        w = st.get("wrk2")
        rows.append(("one 500 ms stall at 1,000/s: meshtest's p99 >= 300 ms",
                     f"meshtest p99 {st['meshtest']['p99']:.1f} ms"
                     + (f" (wrk2 p99 {w['p99']:.1f} ms)" if w else " (wrk2 not run)"),
                     st["meshtest"]["p99"] >= 300))
    return rows


def stall_md(st):
    """The stall runs as markdown ('' when none ran)."""
    if not st:
        return ""
    lines = ["\n### One 500 ms stall at 1,000/s, both open loop\n", "| tool | achieved/s | p99 ms | max ms |",
             "|---|---:|---:|---:|"]
    for tool in ("meshtest", "wrk2"):
        if tool in st:
            s = st[tool]
            lines.append(f"| {tool} | {s['achieved']:.1f} | {s['p99']:.1f} | {s['max']:.1f} |")
    lines.append("\nBoth count from intended send times, so both show the stall. wrk2 ends its run at the "
                 "duration and never records requests still unanswered then; meshtest sends its whole "
                 "schedule and waits for every answer (up to `--timeout`).")
    return "\n".join(lines) + "\n"


def _sat(a):
    return "no" if not a["saturated"] else "~" + "/".join(f"{x:.0f}" for x in a["saturated"]) + "/s"


def _ratio(a, b):
    """a / b as "1.23x", or n/a when the denominator was not measured (0)."""
    return f"{a / b:.2f}x" if b else "n/a"


def _us(v):
    """Envoy's CPU per request; 0 means /proc/PID/task/*/schedstat could not be read."""
    return f"{v:.2f}" if v else "n/a"


def render(out, env):
    """The markdown section; '' when wrk2 did not run."""
    cmp = comparison(out, env)
    st = stall(out)
    lines = ["## Open loop vs wrk2\n"]
    if env.get("wrk2_found") != "1":
        lines.append(f"**wrk2 was not found** (looked at `{env.get('wrk2_path', '?')}`; set `WRK2=/path/to/wrk2`): "
                     "the open-loop comparison with it did not run.\n")
        lines.append(protocols(out, env))
        lines.append(stall_md(st))
        return "\n".join(lines) + "\n", checks(cmp, st)
    lines.append(
        f"Envoy on core 0, the generator on core 1, {env['open_duration']} s per run. Per rate, "
        f"{env['open_rounds']} rounds of meshtest and wrk2 back to back, the order swapped every round, so the "
        f"machine's drift hits both alike; every ratio below comes from this one alternating run. Achieved rate, "
        f"p50 and p99 are the median over the rounds; CPU per request is the generator's user+sys time over all "
        f"rounds divided by its completed requests, and the target's is Envoy's CPU time over those runs divided "
        f"by the same requests. wrk2 runs as `wrk2 -t1 -c{env['wrk2_conns']} -R RATE --latency` (its corrected "
        f"HdrHistogram percentiles); meshtest as `loadgen URL --rate RATE` with its defaults: one generator thread "
        f"(the one core it may use), a pool of at most max(64, rate/1000) connections opened on demand, sends "
        f"batched per 1 ms (wrk2's timer granularity).\n")
    lines.append("| asked/s | tool | achieved/s | p50 ms | p99 ms | CPU µs/req | Envoy µs/req | conns used | "
                 "generator saturated | errors |")
    lines.append("|---:|---|---:|---:|---:|---:|---:|---:|---|---:|")
    for rate in sorted(cmp):
        for tool in ("meshtest", "wrk2"):
            a = cmp[rate][tool]
            conns = str(a["conns"]) if tool == "meshtest" else env["wrk2_conns"]
            sat = _sat(a) if tool == "meshtest" else "n/a"
            lines.append(f"| {rate} | {tool} | {a['achieved']:.0f} | {a['p50']:.3f} | {a['p99']:.3f} | {a['us']:.2f} | "
                         f"{_us(a['target_us'])} | {conns} | {sat} | {a['errors']} |")
    lines.append("\nmeshtest / wrk2:\n")
    lines.append("| asked/s | achieved | p50 | p99 | CPU per request | Envoy CPU per request |")
    lines.append("|---:|---:|---:|---:|---:|---:|")
    for rate in sorted(cmp):
        m, w = cmp[rate]["meshtest"], cmp[rate]["wrk2"]
        lines.append(f"| {rate} | {m['achieved'] / w['achieved']:.3f}x | {m['p50'] / w['p50']:.2f}x | "
                     f"{m['p99'] / w['p99']:.2f}x | {m['us'] / w['us']:.2f}x | {_ratio(m['target_us'], w['target_us'])} |")
    lines.append("\nEvery round:\n")
    lines.append("| asked/s | round | tool | achieved/s | p50 ms | p99 ms | CPU s | requests |")
    lines.append("|---:|---:|---|---:|---:|---:|---:|---:|")
    for rate in sorted(cmp):
        for tool in ("meshtest", "wrk2"):
            for k, r in enumerate(cmp[rate]["runs"][tool], 1):
                lines.append(f"| {rate} | {k} | {tool} | {r['achieved']:.0f} | {r['p50']:.3f} | {r['p99']:.3f} | "
                             f"{r['cpu']:.2f} | {r['requests']} |")
    lines.append(protocols(out, env))
    lines.append(stall_md(st))
    return "\n".join(lines) + "\n", checks(cmp, st)
