#!/usr/bin/env bash
# Renders a load report's index.html to a PNG with headless Chromium.
# Usage: bench/render-report.sh REPORT_DIR [OUT.png]
set -euo pipefail
dir=${1:?usage: render-report.sh REPORT_DIR [OUT.png]}
out=${2:-$dir/index.png}
if ! command -v chromium >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --screenshot="$out" --window-size=1200,1400 \
  "file://$(realpath "$dir")/index.html" 2>/dev/null
echo "$out"
