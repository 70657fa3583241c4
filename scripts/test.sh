#!/usr/bin/env bash
# The test command: installs what the tests need (scripts/setup.sh --test: system
# packages, pinned DuckDB and peers, a Kafka broker, an S3-API server, Chromium
# and playwright-core), checks the console's committed build, builds the
# binaries the end-to-end tests start, then runs every test (the console's
# browser tests save screenshots under tests/console/screenshots/).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/altdb-target}"
export PATH="$HOME/.cargo/bin:$PATH"
./scripts/setup.sh --test
# The console embedded in the aggregator is what its sources build to.
./scripts/console.sh --check
cargo build --workspace --bins
cargo test --workspace -- --test-threads 2
