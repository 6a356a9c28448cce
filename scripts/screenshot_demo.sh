#!/usr/bin/env bash
# Screenshot of an `attnseg demo` page with headless Chromium (Debian: apt-get install -y chromium).
# Usage: scripts/screenshot_demo.sh DEMO_DIR [OUT.png] [WIDTHxHEIGHT]
#   DEMO_DIR  folder written by `attnseg demo --out DEMO_DIR` (holds index.html)
#   OUT.png   default DEMO_DIR/screenshot.png;  WIDTHxHEIGHT default 1400x2400
set -euo pipefail
demo_dir=${1:?usage: $0 DEMO_DIR [OUT.png] [WIDTHxHEIGHT]}
out=${2:-$demo_dir/screenshot.png}
size=${3:-1400x2400}
page="$(cd "$demo_dir" && pwd)/index.html"
[[ -f $page ]] || { echo "$page: not found (run attnseg demo --out $demo_dir first)" >&2; exit 1; }
browser=$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)
[[ -n $browser ]] || { echo "no chromium found: apt-get install -y chromium" >&2; exit 1; }
out_abs="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
# --no-sandbox: containers often run as root, where Chromium's sandbox refuses to start.
# --allow-file-access-from-files: the page links its pictures by relative file:// paths.
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$profile" \
  --allow-file-access-from-files --window-size="${size/x/,}" --virtual-time-budget=5000 \
  --screenshot="$out_abs" "file://$page" >/dev/null 2>&1
[[ -s $out_abs ]] || { echo "chromium wrote no screenshot" >&2; exit 1; }
echo "$out_abs"
