# Stand-in for the public `localstack/localstack:<version>` image, built by scripts/compose-check.sh
# from PyPI with the project's pinned constraints (scripts/localstack/), the way scripts/emulator.sh
# installs it on a host. SQS only; curl is present for the compose health check, as in the official
# image; the gateway listens on 0.0.0.0:4566.
FROM debian:bookworm-slim
ARG LOCALSTACK_VERSION
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
COPY constraints.txt /opt/code/localstack/constraints.txt
# pip trusts the system bundle (which holds any CA the base image carries), not only its own.
RUN python3 -m venv /opt/code/localstack/.venv \
 && /opt/code/localstack/.venv/bin/pip install --no-cache-dir --progress-bar off --disable-pip-version-check \
      --cert /etc/ssl/certs/ca-certificates.crt \
      -c /opt/code/localstack/constraints.txt "localstack-core[runtime]==${LOCALSTACK_VERSION}" \
 && mkdir -p /var/lib/localstack /tmp/localstack
ENV GATEWAY_LISTEN=0.0.0.0:4566 \
    SERVICES=sqs \
    DNS_ADDRESS=0 \
    DISABLE_EVENTS=1 \
    SKIP_SSL_CERT_DOWNLOAD=1 \
    LS_LOG=warn
WORKDIR /opt/code/localstack
EXPOSE 4566
CMD ["/opt/code/localstack/.venv/bin/python", "-m", "localstack.runtime.main"]
