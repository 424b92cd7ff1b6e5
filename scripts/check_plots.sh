#!/usr/bin/env bash
# Render the pipeline's plots with `dvc plots show` and open the page in headless Chromium, offline: fails if
# the page logs a JavaScript error or renders fewer vega charts than it holds. Run after `dvc repro`:
#   bash scripts/env.sh bash scripts/check_plots.sh [OUT_DIR]
# Needs Debian's chromium (installed here when missing, as root) and npm (to fetch vega's JS files once).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.regl/plots_html}"
vendor=.regl/vendor

if ! command -v chromium >/dev/null; then
  echo "check_plots: installing Debian's chromium" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
if [ ! -f "$vendor/vega-embed.min.js" ]; then
  mkdir -p "$vendor" && tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent vega@5.20.2 vega-lite@5.2.0 vega-embed@6.18.2 >/dev/null)
  for pkg in vega vega-lite vega-embed; do
    tar xzf "$tmp/$pkg"-[0-9]*.tgz -C "$tmp" && cp "$tmp/package/build/$pkg.min.js" "$vendor/" && rm -rf "$tmp/package"
  done
  rm -rf "$tmp"
fi

rm -rf "$out"
dvc plots show -o "$out" --html-template scripts/plots_offline.html >/dev/null
cp "$vendor"/*.min.js "$out/"
page="$(cd "$out" && pwd)/index.html"
charts=$(grep -c "vegaEmbed(" "$page" || true)

log=$(mktemp)
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$(mktemp -d)" --enable-logging=stderr --v=0 \
  --virtual-time-budget=15000 --window-size=1400,4000 --screenshot="$out/screenshot.png" \
  --allow-file-access-from-files "file://$page" 2>"$log" >/dev/null || true
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$(mktemp -d)" --virtual-time-budget=15000 \
  --allow-file-access-from-files --dump-dom "file://$page" 2>/dev/null > "$out/dom.html" || true

errors=$(grep "CONSOLE" "$log" | grep -E "Uncaught|Error|ERROR|Failed to load" | grep -v "\"WARN " || true)
rendered=$(grep -o 'class="marks"' "$out/dom.html" | wc -l)
images=$(grep -o '<img' "$out/dom.html" | wc -l)
echo "check_plots: $page: $charts vega charts declared, $rendered rendered, $images images; screenshot $out/screenshot.png"
if [ -n "$errors" ]; then echo "check_plots: JavaScript errors:"; echo "$errors"; exit 1; fi
if [ "$rendered" -lt "$charts" ]; then echo "check_plots: only $rendered of $charts charts rendered"; exit 1; fi
echo "check_plots: ok"
