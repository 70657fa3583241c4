#!/usr/bin/env bash
# Builds altdb (release) and runs a local cluster: 2 leaves, 1 tailer, 1 aggregator.
# Arguments go to altdb-local (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/altdb-target}"
# System packages the build needs, checked before a long build rather than deep
# inside it: installed when this user may, else the exact command is printed.
./scripts/setup.sh
cargo build --release --bins -q
exec "$CARGO_TARGET_DIR/release/altdb-local" "$@"
