#!/usr/bin/env bash
# The test command: installs what the tests need (scripts/setup.sh --test: system
# packages, pinned DuckDB and peers, a Kafka broker, an S3-API server), builds the
# binaries the end-to-end tests start, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/altdb-target}"
export PATH="$HOME/.cargo/bin:$PATH"
./scripts/setup.sh --test
cargo build --workspace --bins
cargo test --workspace -- --test-threads 2
