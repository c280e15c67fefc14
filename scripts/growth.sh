#!/usr/bin/env bash
# Growth measurement (issue 16 item 5): N login rows over 24 months loaded through `replay` of envelope
# files (release build), into a partitioned `user_logins` (the schema as migrated) and into an
# unpartitioned copy of it (migration 8 reverted). Reports the write rate of the first and the last
# chunk, the unique indexes' sizes, and the time of two analyst queries; docs/scaling.md holds a run.
#
#   scripts/growth.sh                       2,000,000 rows in 8 chunks, both layouts
#   scripts/growth.sh --rows 4000000 --chunks 8 --layouts "partitioned"
#   options: --no-build (use target/release as is)  --keep (keep the databases and files)
#
# The envelopes are in time order (chunk 1 holds the oldest months), as a queue or an archive delivers
# them: the last chunk writes into a table that already holds 7/8 of the rows. Each chunk is one
# `replay --no-ledger` (Postgres' claims still dedup), timed from start to exit. Both layouts keep the
# global `message_claims` (one row per message), so its growth is in both figures.
#
# Needs Postgres on 127.0.0.1:5432 (trust for `postgres`) and python3. Databases pii_growth_<layout>
# are dropped and recreated; files go to ${PII_INGEST_GROWTH_DIR:-/tmp/pii-growth}.
set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."

ROWS=2000000
CHUNKS=8
LAYOUTS="partitioned unpartitioned"
BUILD=1
KEEP=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rows) ROWS="$2"; shift 2 ;;
    --chunks) CHUNKS="$2"; shift 2 ;;
    --layouts) LAYOUTS="$2"; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "growth: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

export PGOPTIONS="-c client_min_messages=warning"
PG="${PII_INGEST_GROWTH_POSTGRES:-postgres://postgres@127.0.0.1:5432}"
DIR="${PII_INGEST_GROWTH_DIR:-/tmp/pii-growth}"
BIN=target/release/pii-ingest
MIG8=migrations/2026-12-01-000008_partition_user_logins

scripts/postgres.sh
[ "$BUILD" -eq 0 ] || cargo build --release --locked --bin pii-ingest
mkdir -p "$DIR"

# N envelopes over 24 months (720 days from 2022-12-04), in time order, split into CHUNKS files. 200,000
# users, 150,000 devices, 100,000 ips: an ip is shared by several devices, as behind a NAT.
python3 - "$ROWS" "$CHUNKS" "$DIR" <<'EOF'
import json, random, sys, uuid
rows, chunks, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
random.seed(16)
start, span = 1670112000000, 720 * 86400 * 1000
per = rows // chunks
for c in range(chunks):
    with open(f"{out}/chunk-{c + 1}.jsonl", "w") as f:
        for i in range(c * per, (c + 1) * per):
            device = random.randrange(150000)
            body = json.dumps({
                "user_id": f"user-{random.randrange(200000)}",
                "app_version": "2.3.0",
                "device_type": "android" if device % 3 else "ios",
                "ip": f"10.{device % 97}.{random.randrange(32)}.{random.randrange(1, 33)}",
                "locale": "RU",
                "device_id": f"{device // 10000:03d}-{device // 100 % 100:02d}-{device % 10000:04d}",
            }, separators=(",", ":"))
            sent = start + span * i // rows
            f.write(json.dumps({"message_id": str(uuid.UUID(int=random.getrandbits(128), version=4)),
                                "sent_timestamp": sent, "body": body}) + "\n")
EOF
echo "growth: $ROWS rows in $CHUNKS chunks under $DIR"

env_for() {
  export PII_INGEST__POSTGRES__URL="$PG/pii_growth_$1"
  export PII_INGEST__MASKING__KEY=growth-measurement-key-not-a-secret-0123456789
  export PII_INGEST__MASKING__KEY_ID=growth
  export PII_INGEST__METRICS__LISTEN=""
  export PII_INGEST__LOG__FILTER=warn
}

sql() { psql "$PII_INGEST__POSTGRES__URL" -Atqc "$1"; }

# Seconds a query takes, warm (the second of two runs).
timed() {
  sql "$1" >/dev/null
  local t0 t1
  t0=$(date +%s.%N); sql "$1" >/dev/null; t1=$(date +%s.%N)
  echo "$t1 - $t0" | bc
}

for layout in $LAYOUTS; do
  env_for "$layout"
  psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS pii_growth_$layout WITH (FORCE)"
  "$BIN" --config /dev/null migrate >/dev/null
  if [ "$layout" = unpartitioned ]; then
    # Migration 8 reverted, bookkeeping left as migrated; a no-op stands in for the partition
    # function the ingester calls, so both layouts make the same calls.
    psql "$PII_INGEST__POSTGRES__URL" -q -v ON_ERROR_STOP=1 -1 -f "$MIG8/down.sql" \
      -c "CREATE FUNCTION user_logins_ensure_partitions(date[]) RETURNS integer LANGUAGE sql AS 'SELECT 0'" >/dev/null
  fi
  echo "== $layout: relkind $(sql "SELECT relkind FROM pg_class WHERE relname = 'user_logins'")"
  for c in $(seq 1 "$CHUNKS"); do
    t0=$(date +%s.%N)
    "$BIN" --config /dev/null replay --file "$DIR/chunk-$c.jsonl" --no-ledger --json >"$DIR/report-$layout-$c.json"
    t1=$(date +%s.%N)
    written=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['written'])" "$DIR/report-$layout-$c.json")
    printf '%s chunk %d: %d rows in %.1f s = %.0f rows/s (table then %s rows)\n' "$layout" "$c" "$written" \
      "$(echo "$t1 - $t0" | bc)" "$(echo "$written / ($t1 - $t0)" | bc -l)" "$(sql 'SELECT count(*) FROM user_logins')"
  done
  sql "VACUUM ANALYZE user_logins" >/dev/null
  sql "VACUUM ANALYZE message_claims" >/dev/null
  if [ "$layout" = partitioned ]; then
    sql "SELECT 'unique index (message_id, create_date): ' || pg_size_pretty(sum(pg_relation_size(relid))) || ' in '
           || count(*) || ' partitions, largest ' || pg_size_pretty(max(pg_relation_size(relid)))
         FROM pg_partition_tree('user_logins_message_id_create_date_key') WHERE isleaf"
  else
    sql "SELECT 'unique index (message_id): ' || pg_size_pretty(pg_relation_size('user_logins_message_id_key'))"
  fi
  sql "SELECT 'message_claims: ' || pg_size_pretty(pg_relation_size('message_claims')) || ' heap, primary key '
         || pg_size_pretty(pg_relation_size('message_claims_pkey')) || ', '
         || round(pg_total_relation_size('message_claims')::numeric / greatest(count(*), 1)) || ' bytes a claim in all'
       FROM message_claims"
  sql "SELECT 'user_logins total: ' || pg_size_pretty(coalesce(sum(pg_total_relation_size(relid)),
         pg_total_relation_size('user_logins'))) FROM pg_partition_tree('user_logins')"
  q1="SELECT create_date, count(DISTINCT masked_device_id) FROM user_logins
      WHERE create_date >= '2024-06-01' AND create_date < '2024-07-01' GROUP BY 1"
  q2="SELECT count(*) FROM (SELECT masked_ip FROM user_logins GROUP BY masked_ip
      HAVING count(DISTINCT masked_device_id) > 1) shared"
  echo "query distinct devices per day, June 2024: $(timed "$q1") s"
  echo "query ips shared by more than one device: $(timed "$q2") s ($(sql "$q2") ips)"
  [ "$KEEP" -eq 1 ] || psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS pii_growth_$layout WITH (FORCE)"
done
[ "$KEEP" -eq 1 ] || rm -rf "$DIR"
