#!/usr/bin/env bash
# meshtest chaos benchmark: how fast faults are applied and seen in the data plane, how fast
# the mesh is back in its steady state after a revert, and what the live view and the probes
# cost in CPU.
#
#   bench/chaos.sh
#
#   Env: RUNS=N runs per fault kind (default 5), FAULT=D each fault's duration (default 3s),
#        RATE=R requests/s of load (default 20), CPU_RUNS=N runs per CPU variant (default 2),
#        CPU_FAULT=D the CPU profile's fault (default 10s), LOAD_MAX=L the 1-minute load
#        average to wait for before measuring (default 0.8), LOAD_WAIT=S at most this long
#        (default 600), KEEP=1 keeps the raw reports (printed path).
#
# It builds release (`cargo build --release`), starts `meshtest up` on a private state
# directory, runs one small profile per fault kind RUNS times with --attach, reads each run's
# summary.json (faults[].apply_ms, faults[].verify_ms, recovery.back_after_ms), then runs a
# CPU profile with and without --no-progress and with and without probes and measures the
# chaos process's CPU time (/usr/bin/time). Writes bench/results/chaos.md. Everything it
# starts is stopped by its trap; all traffic stays on loopback (the embedded mesh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RUNS=${RUNS:-5}
FAULT=${FAULT:-3s}
RATE=${RATE:-20}
CPU_RUNS=${CPU_RUNS:-2}
CPU_FAULT=${CPU_FAULT:-10s}
LOAD_MAX=${LOAD_MAX:-0.8}
LOAD_WAIT=${LOAD_WAIT:-600}
RESULTS=$ROOT/bench/results/chaos.md
BIN=$ROOT/target/release/meshtest

log() { echo "== $*" >&2; }

WORK=$(mktemp -d /tmp/meshtest-chaos-bench.XXXXXX)
export MESHTEST_STATE_DIR=$WORK/state
UP_PID=
CHAOS_PID=

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$CHAOS_PID" ] && kill -0 "$CHAOS_PID" 2>/dev/null; then
    # SIGINT to time and chaos (own process group): chaos reverts its faults, then exits.
    kill -INT -- "-$CHAOS_PID" 2>/dev/null || true
    wait "$CHAOS_PID" 2>/dev/null || true
  fi
  if [ -n "$UP_PID" ] && kill -0 "$UP_PID" 2>/dev/null; then
    # `up` stops its Envoys on SIGTERM (and they carry PR_SET_PDEATHSIG besides).
    kill -TERM "$UP_PID" 2>/dev/null || true
    wait "$UP_PID" 2>/dev/null || true
  fi
  if [ "${KEEP:-0}" = 1 ]; then
    log "raw reports kept in $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- build and start ---------------------------------------------------------
[ -x /usr/bin/time ] || {
  log "apt-get install time"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null
}
log "cargo build --release"
BUILD_START=$(date +%s)
cargo build --release 2>&1 | tail -n 3 >&2
BUILD_S=$(( $(date +%s) - BUILD_START ))

log "meshtest up (state in $MESHTEST_STATE_DIR)"
mkdir -p "$MESHTEST_STATE_DIR"
"$BIN" up >"$WORK/up.log" 2>&1 &
UP_PID=$!
for _ in $(seq 300); do
  grep -q "mesh ready" "$WORK/up.log" 2>/dev/null && break
  kill -0 "$UP_PID" 2>/dev/null || { cat "$WORK/up.log" >&2; log "meshtest up exited"; exit 1; }
  sleep 0.1
done
grep -q "mesh ready" "$WORK/up.log" || { cat "$WORK/up.log" >&2; log "meshtest up not ready in 30 s"; exit 1; }
head -n 1 "$WORK/up.log" >&2
"$BIN" status >"$WORK/status-start.txt" || { cat "$WORK/status-start.txt" >&2; exit 1; }

# --- a quiet machine ---------------------------------------------------------
load1() { cut -d' ' -f1 /proc/loadavg; }
log "waiting for a 1-minute load average below $LOAD_MAX (at most ${LOAD_WAIT}s); now $(load1)"
WAITED=0
QUIET=yes
until awk -v l="$(load1)" -v m="$LOAD_MAX" 'BEGIN { exit !(l < m) }'; do
  if [ "$WAITED" -ge "$LOAD_WAIT" ]; then
    QUIET=no
    log "the machine did not get quiet in ${LOAD_WAIT}s; measuring anyway (load $(load1))"
    break
  fi
  sleep 5
  WAITED=$((WAITED + 5))
done
LOAD_START=$(cat /proc/loadavg)
log "measuring (load average: $LOAD_START; waited ${WAITED}s)"

# --- profiles ----------------------------------------------------------------
# Each fault meets the load (or shows in its process state) so that it can be verified; none
# of them makes a replica fail requests long enough to be ejected for the next run.
mkdir -p "$WORK/profiles"
profile() { # KIND ROUTES-YAML TARGET-AND-FAULT-YAML
  cat >"$WORK/profiles/$1.yaml" <<EOF
name: bench-$1
description: bench/chaos.sh, one $1 fault of $FAULT under $RATE requests/s
load:
  rate: $RATE
  routes:
$2
phases:
  before: 2s
  after: 1s
method:
- name: $1
  duration: $FAULT
$3
EOF
}
BASES='  - name: bases
    path: /api/v1/airtable/bases
    token: {tenant: bench-chaos}'
FILES='  - name: files
    path: /api/v1/files/upload
    token: {tenant: bench-chaos}'
profile workload "$BASES" '  target: {service: airtable-gateway, mode: all}
  fault: {workload: {delay: 5ms}}'
profile pod-kill "$BASES" '  target: {pods: [workflow-engine-0]}
  fault: {pod-kill: {}}'
profile pod-pause "$BASES" '  target: {pods: [llm-orchestrator-1]}
  fault: {pod-pause: {}}'
profile route-fault "$BASES" '  fault: {route-fault: {virtual_service: airtable-gateway, route: "#0", delay: {fixed: 10ms, percent: 100%}}}'
profile network "$BASES" '  target: {service: airtable-gateway, mode: all}
  fault: {network: {from: {service: api-gateway, mode: all}, latency: 5ms}}'
# file-processor has one replica: 50% of one host is no host, so it is never ejected.
profile certificate "$BASES
$FILES" '  target: {pods: [file-processor-0]}
  fault: {certificate: {cert: expired}}
  affects: [files]'
profile rejected-push "$BASES" '  target: {pods: [file-processor-0]}
  fault: {rejected-push: {}}'
KINDS="workload pod-kill pod-pause route-fault network certificate rejected-push"
for k in $KINDS; do
  "$BIN" chaos --profile "$WORK/profiles/$k.yaml" --attach --dry-run >"$WORK/dry-$k.txt" 2>&1 ||
    { cat "$WORK/dry-$k.txt" >&2; log "profile $k does not pass --dry-run"; exit 1; }
done

# One attached chaos run in its own process group (so the trap can stop it), timed.
chaos_run() { # PROFILE REPORT-DIR TIME-FILE EXTRA-ARGS...
  local profile=$1 report=$2 timefile=$3
  shift 3
  setsid /usr/bin/time -o "$timefile" -f '%U %S %e' \
    "$BIN" chaos --attach --profile "$profile" --report-dir "$report" "$@" \
    >"$report.out" 2>"$report.err" &
  CHAOS_PID=$!
  local rc=0
  wait "$CHAOS_PID" || rc=$?
  CHAOS_PID=
  # 0 holds, 1 broken, 3 unchecked: all are timed runs; 2 (bad input) and anything else is not.
  if [ "$rc" != 0 ] && [ "$rc" != 1 ] && [ "$rc" != 3 ]; then
    cat "$report.out" "$report.err" >&2
    log "chaos run failed (exit $rc): $profile"
    exit 1
  fi
  cut -d' ' -f1 /proc/loadavg >>"$WORK/loads"
  if ! "$BIN" status >"$report.status" 2>&1 || ! grep -q "chaos faults in force: none" "$report.status"; then
    cat "$report.status" >&2
    log "the mesh is not healthy, or faults are left, after $report"
    exit 1
  fi
}

# --- fault kinds -------------------------------------------------------------
mkdir -p "$WORK/runs"
for k in $KINDS; do
  for i in $(seq "$RUNS"); do
    log "$k run $i/$RUNS"
    chaos_run "$WORK/profiles/$k.yaml" "$WORK/runs/$k-$i" "$WORK/runs/$k-$i.time" --no-progress
  done
done

# --- CPU of the live view and the probes --------------------------------------
cpu_profile() { # NAME WITH-PROBES
  local probes=''
  if [ "$2" = yes ]; then
    probes='steady_state:
  probes:
  - name: bases answer
    call: {from: ingress, path: /api/v1/airtable/bases, token: {tenant: bench-chaos}}
  - name: ingress 5xx
    stat: {proxy: istio-ingressgateway, name: http.outbound_0.0.0.0_80.downstream_rq_5xx, at_most: 1000}'
  fi
  cat >"$WORK/profiles/$1.yaml" <<EOF
name: bench-$1
description: bench/chaos.sh CPU run ($1)
load:
  rate: $RATE
  routes:
$BASES
$probes
phases:
  before: 3s
  after: 2s
method:
- name: workload delay
  duration: $CPU_FAULT
  target: {service: airtable-gateway, mode: all}
  fault: {workload: {delay: 5ms}}
EOF
}
cpu_profile cpu-plain no
cpu_profile cpu-probes yes
for p in cpu-plain cpu-probes; do
  "$BIN" chaos --profile "$WORK/profiles/$p.yaml" --attach --dry-run >"$WORK/dry-$p.txt" 2>&1 ||
    { cat "$WORK/dry-$p.txt" >&2; log "profile $p does not pass --dry-run"; exit 1; }
done
for i in $(seq "$CPU_RUNS"); do
  for variant in plain-quiet plain-live probes-quiet probes-live; do
    p=cpu-${variant%-*}
    log "CPU run $i/$CPU_RUNS: $variant"
    if [ "${variant#*-}" = quiet ]; then
      chaos_run "$WORK/profiles/$p.yaml" "$WORK/runs/cpu-$variant-$i" "$WORK/runs/cpu-$variant-$i.time" --no-progress
    else
      chaos_run "$WORK/profiles/$p.yaml" "$WORK/runs/cpu-$variant-$i" "$WORK/runs/cpu-$variant-$i.time"
    fi
  done
done
LOAD_END=$(cat /proc/loadavg)

# --- results -----------------------------------------------------------------
mkdir -p "$(dirname "$RESULTS")"
TOXI=$(grep -ri toxiproxy /work/.library/env/packages/ 2>/dev/null | awk -F'\t' '{print $1}' | sed 's/^.*packages\///' | paste -sd ';' - || true)
python3 - "$WORK/runs" "$RESULTS" <<EOF
import json, os, sys, statistics, subprocess
runs, out = sys.argv[1], sys.argv[2]
kinds = "$KINDS".split()
def p50(xs): return statistics.median(xs) if xs else None
def fmt(x): return "-" if x is None else f"{x:.0f}"
rows, detail = [], []
for k in kinds:
    a, v, av, rv, back, verdicts, verified, n = [], [], [], [], [], [], 0, 0
    for i in range(1, $RUNS + 1):
        f = os.path.join(runs, f"{k}-{i}", "summary.json")
        if not os.path.exists(f):
            continue
        s = json.load(open(f)); n += 1
        verdicts.append(s["verdict"])
        for fault in s["faults"]:
            if fault["apply_ms"] is not None: a.append(fault["apply_ms"])
            if fault["verify_ms"] is not None:
                verified += 1; v.append(fault["verify_ms"]); av.append(fault["apply_ms"] + fault["verify_ms"])
            if fault["revert_ms"] is not None: rv.append(fault["revert_ms"])
        r = s.get("recovery") or {}
        if r.get("back_after_ms") is not None: back.append(r["back_after_ms"])
        fault = s["faults"][0]
        detail.append(f"| {k} | {i} | {s['verdict']} | {fault['apply_ms']} | {fault['verify_ms']} | "
                      f"{fault['revert_ms']} | {r.get('back_after_ms')} | {(fault.get('verification') or '').replace('|', chr(92) + '|')[:90]} |")
    apply_ok = a and p50(a) < 200
    back_ok = len(back) == n and back and max(back) < 1000
    rows.append(f"| {k} | {n} | {verified}/{n} | {fmt(p50(a))} / {fmt(max(a) if a else None)} | "
                f"{fmt(p50(v))} / {fmt(max(v) if v else None)} | {fmt(p50(av))} / {fmt(max(av) if av else None)} | "
                f"{fmt(p50(rv))} / {fmt(max(rv) if rv else None)} | {fmt(p50(back))} / {fmt(max(back) if back else None)} | "
                f"{'PASS' if apply_ok else 'FAIL'} | {'PASS' if back_ok else 'FAIL'} |")
cpu = {}
for name in sorted(os.listdir(runs)):
    if name.startswith("cpu-") and name.endswith(".time"):
        variant = name[4:-5].rsplit("-", 1)[0]
        with open(os.path.join(runs, name)) as fh:
            last = fh.read().split("\n")
        fields = [l for l in last if l.strip()][-1].split()
        u, s_, e = map(float, fields[:3])
        cpu.setdefault(variant, []).append((u + s_, e))
def pct(vs): return 100 * sum(c for c, _ in vs) / sum(e for _, e in vs)
with open(out, "w") as f:
    w = lambda s="": f.write(s + "\n")
    w("# meshtest chaos: apply, verify, revert-to-steady and CPU")
    w()
    w("Written by \`bash bench/chaos.sh\` (do not edit by hand). Release build, embedded mesh (real Envoy 1.40.0")
    w("on loopback), one \`meshtest up\`, every run \`meshtest chaos --attach --no-progress\` with one fault of")
    w(f"$FAULT under $RATE requests/s of open-loop load through the ingress (2 s before, 1 s after).")
    w()
    w(f"- machine: {os.cpu_count()} cores; \`cargo build --release\` took ${BUILD_S} s here"
      + (" (already up to date)" if ${BUILD_S} < 5 else ""))
    w(f"- load average when measuring began: \`$LOAD_START\` (target below $LOAD_MAX; "
      + ("reached" if "$QUIET" == "yes" else "NOT reached after ${WAITED} s of waiting, measured anyway") + f", waited ${WAITED} s)")
    loads = [float(x) for x in open(os.path.join(runs, "..", "loads")).read().split()]
    w(f"- load average at the end: \`$LOAD_END\`; 1-minute load after each of the {len(loads)} runs: "
      f"median {statistics.median(loads):.2f}, max {max(loads):.2f} (the mesh, the load and meshtest themselves")
    w("  add some; more means other work shared the 2 cores during that run)")
    w()
    w("## Fault kinds")
    w()
    w("apply: journal fsync + the injection until the mesh (or the agent) confirmed it (\`faults[].apply_ms\`).")
    w("verify: from the end of the apply until the data plane showed the fault (\`faults[].verify_ms\`: the")
    w("agent's or fault proxy's counters, the process state, or Envoy's stats; polled every 50 ms). revert:")
    w("the revert call (\`faults[].revert_ms\`). revert to steady: \`recovery.back_after_ms\`, from the revert")
    w("to the start of the first whole second of load that meets the steady state (error rate below 5%,")
    w("p99 below 1 s, every probe passing, no fault of the run held). The load is judged in whole seconds")
    w("of the run's clock, so when the first second after the revert is already steady this figure is")
    w("just the time from the revert to the next second boundary (1000 ms minus the revert's offset into")
    w("its second; faults start and end on whole seconds of the plan, so it is typically 800-950 ms): a")
    w("figure below 1000 ms says \"steady again in the first second after the revert\", nothing finer.")
    w("Targets: apply p50 < 200 ms; revert to steady < 1 s in every run (max).")
    w()
    w("| kind | runs | verified | apply p50 / max ms | verify p50 / max ms | apply+verify p50 / max ms | revert p50 / max ms | revert to steady p50 / max ms | apply < 200 ms | steady < 1 s |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows: w(r)
    w()
    w("## CPU of the live view and the probes")
    w()
    w(f"One profile (a workload delay of $CPU_FAULT, 3 s before, 2 s after, $RATE requests/s), {$CPU_RUNS} runs")
    w("per variant, alternating; CPU = user + system time of the \`meshtest chaos\` process (/usr/bin/time)")
    w("per second of its wall time, in % of one core. It includes the load generator and the fault")
    w("verification, which every variant has; the live view (one line a second on stderr) and the probes")
    w("(a call through the ingress and an Envoy stat, once a second) are the differences.")
    w()
    w("| variant | runs | CPU s / wall s | % of one core |")
    w("|---|---|---|---|")
    names = {"plain-quiet": "--no-progress, no probes", "plain-live": "live view, no probes",
             "probes-quiet": "--no-progress, 2 probes", "probes-live": "live view + 2 probes"}
    for key in ["plain-quiet", "plain-live", "probes-quiet", "probes-live"]:
        vs = cpu.get(key, [])
        if vs:
            w(f"| {names[key]} | {len(vs)} | {sum(c for c,_ in vs):.2f} / {sum(e for _,e in vs):.1f} | {pct(vs):.2f}% |")
    w()
    w("/usr/bin/time counts CPU in 10 ms steps, so one run's figure is good to about 0.01 s, i.e. about")
    w("0.05 points of one core for one run of this length: differences below that are noise.")
    if all(k in cpu for k in names):
        base = pct(cpu["plain-quiet"]); full = pct(cpu["probes-live"])
        w()
        w(f"Live view + probes cost {full - base:+.2f} points of one core over the plain run "
          f"(live view alone {pct(cpu['plain-live']) - base:+.2f}, probes alone {pct(cpu['probes-quiet']) - base:+.2f}); "
          f"the whole chaos process with both: {full:.2f}% of one core. Target < 5% of one core: "
          + ("**PASS**" if full < 5 else ("**PASS** for the live view and probes (the load generator is most of the rest)" if full - base < 5 else "**FAIL**")) + ".")
    w()
    w("## No competitor side by side")
    w()
    w("Chaos Mesh needs Kubernetes (there is no cluster here). Toxiproxy's server is not on the package")
    w("registries this machine reaches: \`grep -ri toxiproxy\` over the registry lists finds only clients")
    w(f"({'$TOXI' or 'nothing'}), and Debian has no toxiproxy package (\`apt-cache search toxiproxy\` is")
    w("empty). So these figures stand alone.")
    w()
    w("## Every run")
    w()
    w("| kind | run | verdict | apply ms | verify ms | revert ms | revert to steady ms | verification |")
    w("|---|---|---|---|---|---|---|---|")
    for d in detail: w(d)
EOF
log "wrote $RESULTS"
cat "$RESULTS"
