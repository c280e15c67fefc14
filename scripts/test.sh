#!/usr/bin/env bash
# The whole test suite, as CI runs it: makes sure Postgres is up, installs and starts the SQS emulator
# (LocalStack, pinned, in .venv/), checks formatting, runs clippy (warnings fail), then every unit and integration test.
# Extra arguments go to `cargo test` (for example `scripts/test.sh exactly_once`) and skip clippy.
set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."

scripts/postgres.sh
scripts/emulator.sh start
# The envelope tests subscribe an SQS queue to a real SNS topic. An emulator started before SNS was in
# its default services runs SQS only: then a second one, with both, serves those tests.
if [ -z "${PII_INGEST_TEST_SNS:-}" ]; then
  if scripts/emulator.sh has sns; then
    export PII_INGEST_TEST_SNS="http://127.0.0.1:${PII_INGEST_EMULATOR_PORT:-4566}"
  else
    sns_port="${PII_INGEST_SNS_EMULATOR_PORT:-4576}"
    PII_INGEST_EMULATOR_PORT="$sns_port" PII_INGEST_EMULATOR_SERVICES=sqs,sns scripts/emulator.sh start
    export PII_INGEST_TEST_SNS="http://127.0.0.1:$sns_port"
  fi
fi

# promtool runs the alerting rules' unit tests (tests/it/alerts.rs) and lints a live /metrics scrape
# (tests/it/server.rs); Debian ships it in `prometheus`.
# policy-rc.d keeps the package from starting a Prometheus server of its own.
if ! command -v promtool >/dev/null 2>&1; then
  echo "== installing promtool (Debian package prometheus)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod +x "$policy"
  fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus
  [ -z "$policy" ] || $sudo rm -f "$policy"
fi

# Databases of earlier runs whose tests failed before cleaning up after themselves: only those older
# than two hours, so a second suite running beside this one (another checkout) keeps its databases.
# Not the migrated templates test databases are copied from (pii_it_template_<hash of migrations/>).
if command -v psql >/dev/null 2>&1; then
  psql -h 127.0.0.1 -U postgres -d postgres -Atqc \
    "SELECT datname FROM pg_database WHERE datname LIKE 'pii_it_%' AND NOT datistemplate
       AND (pg_stat_file('base/' || oid || '/PG_VERSION')).modification < now() - interval '2 hours'" 2>/dev/null |
    while read -r name; do
      psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$name\" WITH (FORCE)" >/dev/null 2>&1 || true
    done
fi

# Lints first: unformatted code and any warning fail the suite as a failing test does ([lints] in
# Cargo.toml).
if [ $# -eq 0 ]; then
  cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
  cargo fmt --check
  cargo clippy --locked --all-targets -- -D warnings
fi

cargo test --locked "$@"
if [ $# -eq 0 ]; then
  # The default write method is COPY; the exactly-once and bad-input tests run again on INSERT.
  echo "== integration tests again with the INSERT write method"
  PII_INGEST_TEST_SINK=insert cargo test --locked --test it -- exactly_once:: quarantine::
fi
