#!/usr/bin/env bash
# The long chaos run, by hand (issue 11; results in docs/chaos-results.md): 1,000,000 messages drained by
# four workers while 50 SIGKILLs land on them, Postgres is crash-restarted and the SQS emulator is
# restarted, then checked message by message against a clean drain of the same messages.
#
#   scripts/chaos-long.sh [--messages N] [--marathon-kills K] [any scripts/chaos.sh option]
#
# It restarts the servers it runs against, so it never uses the shared ones: it makes a Postgres
# cluster of its own (initdb, port 5499, under var/chaos-long/) and an emulator of its own (port 4598)
# that keeps its SQS state across a restart (PII_INGEST_EMULATOR_PERSIST, see scripts/emulator.sh), as
# real SQS does. Both are stopped and removed at the end. A release build; about 30-40 minutes here
# for a million messages (seeding twice, the clean baseline drain, then the marathon).
set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."

PG_PORT="${PII_INGEST_CHAOS_LONG_PG_PORT:-5499}"
SQS_PORT="${PII_INGEST_CHAOS_LONG_SQS_PORT:-4598}"
WORK="$PWD/var/chaos-long"
PGDATA="$WORK/pg"
PERSIST="$WORK/sqs-state"

pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
[[ -x "$pg_bin/initdb" ]] || { echo "chaos-long: no /usr/lib/postgresql/*/bin/initdb (apt-get install postgresql)" >&2; exit 1; }
# initdb refuses root: as root, the cluster belongs to the postgres user.
as_pg=()
if [[ "$(id -u)" -eq 0 ]]; then as_pg=(runuser -u postgres --); fi

emulator() { PII_INGEST_EMULATOR_PORT="$SQS_PORT" PII_INGEST_EMULATOR_SERVICES=sqs PII_INGEST_EMULATOR_PERSIST="$PERSIST" scripts/emulator.sh "$@"; }
cleanup() {
  "${as_pg[@]}" "$pg_bin/pg_ctl" -D "$PGDATA" -m fast stop >/dev/null 2>&1 || true
  emulator stop >/dev/null 2>&1 || true
  rm -rf "$PGDATA" "$PERSIST"
}
trap cleanup EXIT

cleanup
mkdir -p "$WORK" "$PERSIST"
mkdir -p "$PGDATA"
[[ "$(id -u)" -ne 0 ]] || chown postgres: "$PGDATA"
"${as_pg[@]}" "$pg_bin/initdb" -D "$PGDATA" -U postgres --auth=trust >"$WORK/initdb.log"
"${as_pg[@]}" "$pg_bin/pg_ctl" -D "$PGDATA" -l "$PGDATA/server.log" -w \
  -o "-p $PG_PORT -k /tmp -c listen_addresses=127.0.0.1 -c fsync=on" start >/dev/null
echo "chaos-long: Postgres of its own on 127.0.0.1:$PG_PORT ($PGDATA)" >&2
emulator start >&2

export PII_INGEST_CHAOS_POSTGRES="postgres://postgres@127.0.0.1:$PG_PORT"
export PII_INGEST_CHAOS_SQS="http://127.0.0.1:$SQS_PORT"
export PII_INGEST_CHAOS_EMULATOR_PID_FILE="var/emulator/localstack-$SQS_PORT.pid"
export PII_INGEST_CHAOS_PG_RESTART="${as_pg[*]} $pg_bin/pg_ctl -D $PGDATA -m immediate -w restart -l $PGDATA/server.log -o '-p $PG_PORT -k /tmp -c listen_addresses=127.0.0.1'"
export PII_INGEST_CHAOS_SQS_RESTART="PII_INGEST_EMULATOR_PORT=$SQS_PORT PII_INGEST_EMULATOR_SERVICES=sqs PII_INGEST_EMULATOR_PERSIST=$PERSIST scripts/emulator.sh restart"

# PII_INGEST_CHAOS_LONG_DEBUG=1 uses the debug build (a quick rehearsal with --messages 20000).
release=--release
[[ -z "${PII_INGEST_CHAOS_LONG_DEBUG:-}" ]] || release=
scripts/chaos.sh $release --scenarios marathon --messages 1000000 --scenario-timeout 7200 \
  --visibility 30 "$@" | tee "$WORK/result-$(date -u +%Y%m%dT%H%M%SZ).md"
