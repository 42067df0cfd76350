#!/usr/bin/env bash
# Embedded-mesh scale: how long `meshtest up` takes to be ready and how much memory its
# proxies use, for synthetic meshes of 10, 50, 100 and 200 pods (bench/synthetic_mesh.py:
# N services x 2 replicas, a policy, a DestinationRule and STRICT mTLS each), and how many
# inotify instances the proxies hold (file-watched xDS held two per Envoy, and the per-user
# default limit of 128 stopped meshes near 64 proxies). Each size runs twice: as is (every
# proxy carries every service), with a Sidecar per service narrowing its egress to the next
# service of the chain (synthetic_mesh.py --sidecars), and with those Sidecars REGISTRY_ONLY.
#
#   bench/scale.sh            writes bench/SCALE.md (SIZES="5 25 50 100" services to try)
#
# Uses the release build (cargo build --release -p meshtest). Everything stays on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-"5 25 50 100"}
cargo build --release -p meshtest >/dev/null
BIN=$PWD/target/release/meshtest
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
{
  echo "# Embedded-mesh scale"
  echo
  echo "\`bash bench/scale.sh\` on $(nproc) cores, $(date -u +%Y-%m-%d), release build; one run per size."
  echo
  echo "| pods | Sidecar egress | proxies | ready in | PSS of all proxies | PSS per proxy | inotify instances held |"
  echo "|---|---|---|---|---|---|---|"
} > "$WORK/SCALE.md"
for services in $SIZES; do
for sidecars in "" --sidecars "--sidecars --registry-only"; do
  pods=$((services * 2))
  run="$services${sidecars// /}"
  mesh="$WORK/mesh-$run"
  python3 bench/synthetic_mesh.py "$services" 2 "$mesh" $sidecars
  export MESHTEST_STATE_DIR="$WORK/state-$run"
  log="$WORK/up-$run.log"
  timeout 600 "$BIN" up --mesh "$mesh" > "$log" 2>&1 &
  up=$!
  deadline=$((SECONDS + 600))
  until grep -q "ready in\|error" "$log"; do
    if (( SECONDS > deadline )) || ! kill -0 "$up" 2>/dev/null; then break; fi
    sleep 0.5
  done
  ready=$(grep -o "ready in [0-9.]*s" "$log" | awk '{print $3}' | tr -d s || true)
  # `timeout` is $up; meshtest is its child, and the proxies are meshtest's.
  mesh_pid=$(pgrep -P "$up" | head -1 || true)
  read -r proxies pss inotify < <(python3 - "${mesh_pid:-0}" <<'PY'
import os, sys
parent = sys.argv[1]
pss = inotify = n = 0
for pid in os.listdir("/proc"):
    if not pid.isdigit():
        continue
    try:
        stat = open(f"/proc/{pid}/stat").read().split()
        if stat[3] != parent or "envoy" not in open(f"/proc/{pid}/cmdline").read():
            continue
        n += 1
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                pss += int(line.split()[1])
        for fd in os.listdir(f"/proc/{pid}/fd"):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == "anon_inode:inotify":
                inotify += 1
    except OSError:
        pass
print(n, pss // 1024, inotify)
PY
)
  "$BIN" down >/dev/null 2>&1 || kill "$up" 2>/dev/null || true
  wait "$up" 2>/dev/null || true
  per=$(( proxies > 0 ? pss / proxies : 0 ))
  case "$sidecars" in
    "") egress="none: every service" ;;
    --sidecars) egress="next service only (ALLOW_ANY)" ;;
    *) egress="next service only, REGISTRY_ONLY" ;;
  esac
  echo "| $pods | $egress | $proxies | ${ready:-did not start}${ready:+ s} | $pss MiB | $per MiB | $inotify |" >> "$WORK/SCALE.md"
  if [[ -z "$ready" ]]; then tail -5 "$log" | sed 's/^/    /' >> "$WORK/SCALE.md"; fi
done
done
cp "$WORK/SCALE.md" bench/SCALE.md
cat bench/SCALE.md
