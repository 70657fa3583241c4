#!/usr/bin/env bash
# The web console's files (aggregator/console/dist, embedded in the aggregator
# binary) are built from aggregator/console/src with esbuild and committed, so
# building altdb needs no Node.
#
#   scripts/console.sh          rebuild dist/ after changing src/ (commit both)
#   scripts/console.sh --check  fail if dist/ is not what src/ builds to
set -euo pipefail
cd "$(dirname "$0")/../aggregator/console"
npm ci --no-audit --no-fund --loglevel=error
case "${1:-}" in
  "") npm run --silent build ;;
  --check)
    out="$(mktemp -d)"
    trap 'rm -rf "$out"' EXIT
    node build.mjs --outdir "$out" >/dev/null
    if ! diff -r "$out" dist >/dev/null; then
      echo "aggregator/console/dist is not what aggregator/console/src builds to;" >&2
      echo "run scripts/console.sh and commit dist/" >&2
      diff -rq "$out" dist >&2 || true
      exit 1
    fi
    echo "console: dist/ matches its sources"
    ;;
  *) echo "usage: scripts/console.sh [--check]" >&2; exit 2 ;;
esac
