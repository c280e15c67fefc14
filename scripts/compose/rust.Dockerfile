# Stand-in for the public `rust:<version>-bookworm` image, built by scripts/compose-check.sh from the
# machine's own toolchain (no image registry is reachable here). Same layout and variables as the
# official image: RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo, cargo and rustc on PATH.
# The build context holds `toolchain/`: a copy of ~/.rustup/toolchains/<version>-x86_64-unknown-linux-gnu
# without its HTML docs.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev make pkg-config git curl \
 && rm -rf /var/lib/apt/lists/*
ARG RUST_VERSION
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    RUST_VERSION=${RUST_VERSION}
COPY toolchain /usr/local/rustup/toolchains/${RUST_VERSION}-x86_64-unknown-linux-gnu
RUN mkdir -p /usr/local/cargo/bin \
 && for tool in /usr/local/rustup/toolchains/${RUST_VERSION}-x86_64-unknown-linux-gnu/bin/*; do \
      ln -s "$tool" /usr/local/cargo/bin/; \
    done \
 && chmod -R a+w /usr/local/cargo \
 && cargo --version && rustc --version
