# One image with the three altdb binaries (altdb-leaf, altdb-tailer,
# altdb-aggregator); the Helm chart in helm/altdb runs each role from it.
#   docker build -t altdb:0.1.0 .
# scripts/check_dockerfile.py checks in CI that the runtime stage names the
# binaries and flags that exist and installs the libraries they link.

# --- build: the Rust toolchain of rust-toolchain.toml on Debian 12 ---------
FROM rust:1.95.0-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libclang-dev clang make pkg-config zlib1g-dev libssl-dev libsasl2-dev protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin altdb-leaf --bin altdb-tailer --bin altdb-aggregator \
 && mkdir -p /out \
 && cp target/release/altdb-leaf target/release/altdb-tailer target/release/altdb-aggregator /out/

# --- runtime: Debian 12 slim, the shared libraries the binaries link, non-root
FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 libsasl2-2 zlib1g libstdc++6 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 altdb \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin altdb \
 && mkdir -p /var/lib/altdb \
 && chown altdb:altdb /var/lib/altdb
COPY --from=build /out/altdb-leaf /out/altdb-tailer /out/altdb-aggregator /usr/local/bin/
USER 10001:10001
WORKDIR /var/lib/altdb
# 7700 aggregator HTTP, 7432 Postgres, 7433 Flight SQL, 7701 tailer HTTP, 7801 leaf Flight.
EXPOSE 7700 7432 7433 7701 7801
# The role is the command: altdb-leaf, altdb-tailer or altdb-aggregator.
ENTRYPOINT []
CMD ["altdb-aggregator", "--help"]
