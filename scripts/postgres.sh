#!/usr/bin/env bash
# Makes sure PostgreSQL answers on 127.0.0.1:5432 (or $PGHOST:$PGPORT): starts the Debian cluster if
# it is installed but stopped, and says what to do otherwise.
set -euo pipefail

HOST="${PGHOST:-127.0.0.1}"
PORT="${PGPORT:-5432}"

ready() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -h "$HOST" -p "$PORT"
  else
    (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null
  fi
}

if ready; then
  exit 0
fi
if command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
  version="$(ls /etc/postgresql | sort -V | tail -n 1)"
  echo "postgres: starting cluster $version/main"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  for _ in $(seq 1 30); do
    ready && exit 0
    sleep 1
  done
fi
echo "postgres: error: nothing answers on $HOST:$PORT. Install and start PostgreSQL" \
     "(Debian: apt-get install postgresql; pg_ctlcluster <version> main start) with trust auth" \
     "for user postgres on 127.0.0.1, or point PII_INGEST__POSTGRES__URL elsewhere." >&2
exit 1
