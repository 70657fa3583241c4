#!/usr/bin/env bash
# The test command: installs what the tests need (scripts/setup.sh --test: system
# packages, pinned DuckDB and peers, a Kafka broker, an S3-API server, Chromium
# and playwright-core), checks the console's committed build, builds the
# binaries the end-to-end tests start, checks the Helm chart and the
# Dockerfile, then runs every test (the console's
# browser tests save screenshots under tests/console/screenshots/).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/altdb-target}"
export PATH="$HOME/.cargo/bin:$PATH"
./scripts/setup.sh --test
# The console embedded in the aggregator is what its sources build to.
./scripts/console.sh --check
cargo build --workspace --bins
# The Helm chart lints, renders and validates offline; the Dockerfile names the
# binaries, flags and libraries that exist (no docker here).
python3 tests/helm/chart.py check
python3 scripts/check_dockerfile.py --bin-dir "$CARGO_TARGET_DIR/debug"
cargo test --workspace -- --test-threads 2
