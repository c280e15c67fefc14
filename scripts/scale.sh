#!/usr/bin/env bash
# Horizontal scaling measurement: k pii-ingest processes draining one queue, for each k given.
#
#   scripts/scale.sh                      1, 2 and 4 processes, 20,000 messages each run
#   scripts/scale.sh --messages 50000 --workers "1 2 3 4" --baseline
#   options: --timeout S (600)  --cleanup (drop the databases)  --no-build (use the existing binary)
#
# Per k: a fresh database pii_scale_k<k> (dropped and recreated, then `migrate`), a fresh queue
# (scale-k<k>-<time>), `seed --generate N`, then k concurrent `run --until-empty`, each with its own
# ledger and metrics on an ephemeral port. Times from the start of the first process to the exit of
# the last, then checks rows == N and count(distinct message_id) == count(*), and that every
# process reconciled. --baseline first runs pii-bench's bare receive+delete drain of N messages (no
# parsing, no Postgres), the emulator's own ceiling on this machine.
#
# Needs Postgres on 127.0.0.1:5432 (trust for `postgres`) and the SQS emulator on 127.0.0.1:4566;
# starts them if they are down (never stops or restarts them). Bounded: each drain is killed after
# --timeout seconds (default 600) and the run fails. A drained queue is deleted, a failed run's is
# kept; the databases are kept for inspection unless --cleanup.
set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."

MESSAGES=20000
WORKERS="1 2 4"
TIMEOUT=600
BASELINE=0
CLEANUP=0
BUILD=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --messages) MESSAGES="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;
    --timeout) TIMEOUT="$2"; shift 2 ;;
    --baseline) BASELINE=1; shift ;;
    --cleanup) CLEANUP=1; shift ;;
    --no-build) BUILD=0; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "scale: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

export PGOPTIONS="-c client_min_messages=warning" # no NOTICE from DROP DATABASE IF EXISTS
PG_SERVER="${PII_INGEST_SCALE_POSTGRES:-postgres://postgres@127.0.0.1:5432}"
SQS="${PII_INGEST_SCALE_SQS:-http://127.0.0.1:4566}"
# PII_INGEST_SCALE_BIN: a directory holding pii-ingest and pii-bench (a copy, so that a rebuild in
# a shared target directory cannot swap the binary mid-measurement); default target/release.
BIN_DIR="${PII_INGEST_SCALE_BIN:-target/release}"
BIN="$BIN_DIR/pii-ingest"

scripts/postgres.sh
scripts/emulator.sh start >/dev/null
[[ "$BUILD" == 0 ]] || scripts/build-bench.sh --quiet
[[ -x "$BIN" ]] || { echo "scale: $BIN is missing (build with scripts/build-bench.sh)" >&2; exit 2; }

WORK="$(mktemp -d -t pii-scale.XXXXXX)"
PIDS=()
cleanup_work() {
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  rm -rf -- "$WORK"
}
trap cleanup_work EXIT

# The environment every command of one run gets (queue, database and key); callers add the rest.
common_env() { # queue db
  echo "PII_INGEST__SQS__ENDPOINT_URL=$SQS"
  echo "PII_INGEST__SQS__ACCESS_KEY_ID=test"
  echo "PII_INGEST__SQS__SECRET_ACCESS_KEY=test"
  echo "PII_INGEST__SQS__QUEUE_NAME=$1"
  echo "PII_INGEST__SQS__WAIT_TIME_SECONDS=1"
  echo "PII_INGEST__POSTGRES__URL=$PG_SERVER/$2"
  echo "PII_INGEST__MASKING__KEY=scale-measurement-key-not-a-secret-0123456789"
  echo "PII_INGEST__MASKING__KEY_ID=scale"
  echo "PII_INGEST__LOG__FILTER=warn"
}

pii() { # queue db args...
  local queue="$1" db="$2"; shift 2
  # shellcheck disable=SC2046
  env $(common_env "$queue" "$db") "$BIN" --config /dev/null "$@"
}

psql_n() { # db sql
  psql -X -q -t -A "$PG_SERVER/$1" -c "$2"
}

now() { date +%s.%N; }

# CPU time in clock ticks: of a process (utime + stime), and of this shell's waited-for children
# (cutime + cstime), so the drain's CPU can be split between the emulator and the ingesters.
TICK="$(getconf CLK_TCK)"
EMULATOR_PID="$(cat var/emulator/localstack.pid 2>/dev/null || true)"
process_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
children_ticks() { awk '{print $16 + $17}' "/proc/$$/stat"; }

# The emulator's query API (no AWS CLI needed): deletes a drained queue of ours.
delete_queue() { # name
  local url
  url="$(curl -s -X POST "$SQS/" -d "Action=GetQueueUrl&QueueName=$1&Version=2012-11-05" |
    sed -n 's:.*<QueueUrl>\(.*\)</QueueUrl>.*:\1:p')"
  [[ -z "$url" ]] || curl -s -X POST "$SQS/" --data-urlencode "QueueUrl=$url" \
    -d "Action=DeleteQueue&Version=2012-11-05" >/dev/null || true
}

if [[ "$BASELINE" == 1 ]]; then
  echo "== baseline: bare receive+delete drain of $MESSAGES messages (pii-bench, no Postgres)"
  "$BIN_DIR/pii-bench" --skip-postgres --messages "$MESSAGES" --latency-seconds 0 --sqs-endpoint "$SQS" \
    --postgres "$PG_SERVER" 2>&1 | tee "$WORK/baseline.txt"
fi

declare -A RESULT
FAILED=0
for k in $WORKERS; do
  db="pii_scale_k$k"
  queue="scale-k$k-$(date +%s)-$RANDOM"
  echo "== k=$k: database $db, queue $queue, $MESSAGES messages"
  psql -X -q "$PG_SERVER/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"
  pii "$queue" "$db" migrate >/dev/null
  seed_start="$(now)"
  pii "$queue" "$db" seed --generate "$MESSAGES" >/dev/null
  echo "   seeded in $(echo "$(now) - $seed_start" | bc -l | xargs printf '%.1f') s"

  PIDS=()
  emulator_before="$( [[ -n "$EMULATOR_PID" ]] && process_ticks "$EMULATOR_PID" || echo 0)"
  children_before="$(children_ticks)"
  start="$(now)"
  for i in $(seq 1 "$k"); do
    # shellcheck disable=SC2046
    env $(common_env "$queue" "$db") \
      PII_INGEST__LEDGER__PATH="$WORK/k$k-w$i/ledger" \
      PII_INGEST__METRICS__LISTEN=127.0.0.1:0 \
      timeout --signal=TERM --kill-after=30 "$TIMEOUT" \
      "$BIN" --config /dev/null run --until-empty --json \
      >"$WORK/k$k-w$i.json" 2>"$WORK/k$k-w$i.err" &
    PIDS+=("$!")
  done
  ok=1
  for i in "${!PIDS[@]}"; do
    if ! wait "${PIDS[$i]}"; then
      ok=0
      echo "   worker $((i + 1)) failed:" >&2
      tail -n 20 "$WORK/k$k-w$((i + 1)).err" >&2
    fi
  done
  PIDS=()
  end="$(now)"
  seconds="$(echo "$end - $start" | bc -l)"
  emulator_cpu="$(echo "($( [[ -n "$EMULATOR_PID" ]] && process_ticks "$EMULATOR_PID" || echo 0) - $emulator_before) / $TICK / $seconds * 100" | bc -l)"
  workers_cpu="$(echo "($(children_ticks) - $children_before) / $TICK / $seconds * 100" | bc -l)"

  rows="$(psql_n "$db" 'SELECT count(*) FROM user_logins')"
  distinct="$(psql_n "$db" 'SELECT count(DISTINCT message_id) FROM user_logins')"
  quarantined="$(psql_n "$db" 'SELECT count(*) FROM quarantined_messages')"
  per_worker=""
  duplicates=0
  for i in $(seq 1 "$k"); do
    report="$WORK/k$k-w$i.json"
    received="$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["received"])' "$report" 2>/dev/null || echo '?')"
    dup="$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["duplicate_in_batch"]+r["duplicate_ledger"]+r["duplicate_database"])' "$report" 2>/dev/null || echo 0)"
    per_worker+="${per_worker:+ + }$received"
    duplicates=$((duplicates + dup))
  done
  rate="$(echo "$MESSAGES / $seconds" | bc -l)"
  verdict="ok"
  if [[ "$ok" != 1 || "$rows" != "$MESSAGES" || "$distinct" != "$rows" || "$quarantined" != 0 ]]; then
    verdict="FAILED"
    FAILED=1
  fi
  line="$(printf 'k=%s  %6.2f s  %6.0f msg/s  rows %s  distinct %s  received per worker %s  duplicates %s  CPU: emulator %.0f%%, ingesters %.0f%%  %s' \
    "$k" "$seconds" "$rate" "$rows" "$distinct" "$per_worker" "$duplicates" "$emulator_cpu" "$workers_cpu" "$verdict")"
  RESULT[$k]="$line"
  echo "   $line"
  # A drained queue is deleted; one that failed is kept for inspection.
  [[ "$verdict" != ok ]] || delete_queue "$queue"
  if [[ "$CLEANUP" == 1 ]]; then
    psql -X -q "$PG_SERVER/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)"
  fi
done

echo
echo "== summary ($MESSAGES messages, $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), emulator at $SQS)"
echo "   (CPU: percent of one core over the drain, summed over processes; $(nproc) cores = $(( $(nproc) * 100 ))%)"
for k in $WORKERS; do echo "${RESULT[$k]}"; done
exit "$FAILED"
