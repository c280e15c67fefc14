# pii-ingest container image.
#
#   docker build -t pii-ingest .
#   docker run --rm -v "$PWD/secrets/masking.key:/run/secrets/masking_key:ro" \
#              -e PII_INGEST__MASKING__KEY_FILE=/run/secrets/masking_key -e PII_INGEST__POSTGRES__URL=... \
#              -e PII_INGEST__SQS__ENDPOINT_URL=... pii-ingest run
#
# The health check is `pii-ingest health` (this image has no curl). scripts/compose-check.sh builds
# and runs this file for real (docs/compose-check.md).
#
# The build needs only the Rust toolchain and gcc (no libpq, OpenSSL or cmake). `migrations/` is
# compiled into the binary (diesel `embed_migrations!`), so it is part of the build context.

# ---------------------------------------------------------------- builder
FROM rust:1.95-bookworm AS builder
WORKDIR /build
# Parallel compile jobs: cargo's default is one per core; `--build-arg CARGO_BUILD_JOBS=2` keeps a
# build on a shared machine to two (scripts/compose-check.sh does). Cargo reads the variable itself.
ARG CARGO_BUILD_JOBS=default

# Dependencies first: this layer is rebuilt only when Cargo.toml or Cargo.lock change. Stubs for every
# target Cargo.toml names explicitly (the lib, the main binary, the two benches: cargo refuses a
# manifest whose declared target file is missing) let cargo compile every dependency without the real
# sources. Only the `pii-ingest` binary is built (not the benchmarks).
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches/pii-bench \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/masking.rs \
 && echo 'fn main() {}' > benches/pii-bench/main.rs \
 && cargo build --release --locked --bin pii-ingest \
 && rm -rf src benches

# The crate itself. COPY keeps the files' original mtimes, which can be older than the stub build:
# touch them so cargo does not mistake the stub artifacts for up to date.
COPY src ./src
COPY benches ./benches
COPY migrations ./migrations
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked --bin pii-ingest \
 && ./target/release/pii-ingest --version

# ---------------------------------------------------------------- runtime
FROM debian:bookworm-slim

# CA roots for TLS to AWS (rustls with the platform's certificates); nothing else is needed.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 pii-ingest \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
            --shell /usr/sbin/nologin pii-ingest

COPY --from=builder /build/target/release/pii-ingest /usr/local/bin/pii-ingest

# ./config.toml is read from the working directory; every key can be overridden with
# PII_INGEST__<SECTION>__<KEY>. /app/var holds the sled ledger (mount a volume there to keep it).
WORKDIR /app
COPY config.toml ./config.toml
COPY data/login-queue-sample.jsonl ./data/login-queue-sample.jsonl
RUN mkdir -p /app/var && chown 10001:10001 /app/var

ENV PII_INGEST__LEDGER__PATH=/app/var/ledger

USER 10001:10001

# `run` finishes the batch in hand on SIGTERM; give it time (docker stop -t 30, stop_grace_period).
ENTRYPOINT ["pii-ingest"]
CMD ["run"]
