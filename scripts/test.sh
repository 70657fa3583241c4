#!/usr/bin/env bash
# Builds the binaries the end-to-end tests start, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/altdb-target}"
cargo build --workspace --bins
cargo test --workspace -- --test-threads 2
