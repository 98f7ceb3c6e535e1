#!/usr/bin/env bash
# Refresh the dashboard's third-party front-end files in static/vendor/.
#
# Takes release tarballs from the npm registry at PINNED versions (`npm pack`),
# copies only the dist files the dashboard loads plus their licence files, and
# records the versions in static/vendor/VERSIONS.md. No CDN is used at runtime:
# the files are committed and embedded in the fastgate binary.
#
# Usage: scripts/vendor-frontend.sh            (uses the pins below)
#        BOOTSTRAP_VERSION=5.3.x CHARTJS_VERSION=4.x.y scripts/vendor-frontend.sh
set -euo pipefail

BOOTSTRAP_VERSION="${BOOTSTRAP_VERSION:-5.3.8}"
CHARTJS_VERSION="${CHARTJS_VERSION:-4.5.1}"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENDOR="$ROOT/static/vendor"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

fetch() { # fetch NAME VERSION -> prints extracted package dir
  local name="$1" version="$2" dir="$TMP/$1"
  mkdir -p "$dir"
  (cd "$dir" && npm pack --silent "${name}@${version}" >/dev/null)
  local tgz
  tgz="$(ls "$dir"/*.tgz)"
  tar -xzf "$tgz" -C "$dir"
  # record the integrity of what was fetched
  sha256sum "$tgz" | awk '{print $1}' >"$dir/sha256"
  echo "$dir/package"
}

need() { [ -f "$1" ] || { echo "missing expected file: $1" >&2; exit 1; }; }

bs="$(fetch bootstrap "$BOOTSTRAP_VERSION")"
cj="$(fetch chart.js "$CHARTJS_VERSION")"

for f in "$bs/dist/css/bootstrap.min.css" "$bs/dist/js/bootstrap.bundle.min.js" "$bs/LICENSE" \
         "$cj/dist/chart.umd.min.js" "$cj/LICENSE.md"; do
  need "$f"
done

rm -rf "$VENDOR/bootstrap" "$VENDOR/chartjs"
mkdir -p "$VENDOR/bootstrap" "$VENDOR/chartjs"

# Strip the trailing sourceMappingURL comments: the .map files are not vendored,
# and a dangling reference only produces 404 noise in the browser console.
strip_map() { sed -E '/^\/[*\/]# sourceMappingURL=.*$/d' "$1" >"$2"; }

strip_map "$bs/dist/css/bootstrap.min.css" "$VENDOR/bootstrap/bootstrap.min.css"
strip_map "$bs/dist/js/bootstrap.bundle.min.js" "$VENDOR/bootstrap/bootstrap.bundle.min.js"
cp "$bs/LICENSE" "$VENDOR/bootstrap/LICENSE"
strip_map "$cj/dist/chart.umd.min.js" "$VENDOR/chartjs/chart.umd.min.js"
cp "$cj/LICENSE.md" "$VENDOR/chartjs/LICENSE.md"

cat >"$VENDOR/VERSIONS.md" <<MD
# Vendored front-end files

Fetched from the npm registry by \`scripts/vendor-frontend.sh\` (do not edit by hand;
re-run the script to refresh). \`sourceMappingURL\` comments are stripped.

| Package | Version | npm tarball sha256 | Files | Licence |
|---|---|---|---|---|
| bootstrap | ${BOOTSTRAP_VERSION} | \`$(cat "$TMP/bootstrap/sha256")\` | \`bootstrap/bootstrap.min.css\`, \`bootstrap/bootstrap.bundle.min.js\` | MIT (\`bootstrap/LICENSE\`) |
| chart.js | ${CHARTJS_VERSION} | \`$(cat "$TMP/chart.js/sha256")\` | \`chartjs/chart.umd.min.js\` | MIT (\`chartjs/LICENSE.md\`) |
MD

echo "vendored bootstrap@${BOOTSTRAP_VERSION} chart.js@${CHARTJS_VERSION} into $VENDOR"
