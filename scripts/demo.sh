#!/usr/bin/env bash
# The demo: start the SQS emulator, load queue `login-queue` with the 100 sample messages, migrate,
# drain, and show what happened. Run it twice: the second run writes nothing new.
set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "services"
scripts/postgres.sh
scripts/emulator.sh start

step "build"
cargo build --locked --quiet
bin=target/debug/pii-ingest

# A random masking key, made once and kept out of git (var/ is ignored). Real deployments give their
# own key through PII_INGEST__MASKING__KEY or masking.key_file.
key_file=var/masking.key
if [ -z "${PII_INGEST__MASKING__KEY:-}" ] && [ ! -s "$key_file" ]; then
  mkdir -p var
  (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$key_file")
  echo "created a random masking key in $key_file (mode 0600); keep it to look up tokens later"
fi

step "pii-ingest migrate"
$bin migrate

step "pii-ingest seed --file data/login-queue-sample.jsonl"
$bin seed --file data/login-queue-sample.jsonl

step "pii-ingest run --until-empty"
$bin run --until-empty

step "select * from user_logins (5 of them)"
if command -v psql >/dev/null 2>&1; then
  url="${PII_INGEST__POSTGRES__URL:-postgres://postgres@127.0.0.1:5432/pii_ingest}"
  psql "$url" -P pager=off -c "SELECT * FROM user_logins ORDER BY id LIMIT 5" \
    -c "SELECT count(*) AS rows, count(DISTINCT message_id) AS messages, count(*) FILTER (WHERE locale IS NULL) AS null_locale FROM user_logins" \
    -c "SELECT message_id, reason, field, detail, masked_body FROM quarantined_messages ORDER BY id"
else
  echo "(psql is not installed; query the database pii_ingest to see the rows)"
fi

cat <<'MSG'

Run scripts/demo.sh again: the sample is sent again as 100 new SQS messages, but each carries the
same idempotency key (an HMAC of the line and its occurrence number), so the drain reports 100 duplicates and writes nothing new.
MSG
