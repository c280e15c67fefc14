#!/usr/bin/env bash
# Throughput benchmark: starts Postgres and the SQS emulator if needed, builds in release mode, and runs
# pii-bench, which measures pii-ingest against bare baselines in the same run and prints one table:
#   SQS drain at 0, 20 and 50 ms round trip (a delaying proxy between the drains and the emulator):
#     pii-ingest pinned to the bare drain's concurrency vs a bare receive+delete drain (same queue
#     size; the bare drain runs before and after pii-ingest and the baseline is their mean, as the
#     emulator drifts), and pii-ingest with default (self-sizing) receivers vs itself at 0 ms,
#   Postgres write path (replay) vs psql's \copy of the final rows a replay leaves (user_logins,
#     message_claims, quarantined_messages, into a freshly migrated database; one psql, and one psql per
#     table at once), plus a bare binary COPY of the rows (as many streams as writers); rounds
#     interleaved, medians; then the sink's COPY vs INSERT ... SELECT FROM unnest at 10 to 5000 rows a
#     transaction (PII_BENCH_DB_TAG suffixes the database names),
#   peak RSS and CPU while draining, and sent->commit latency at half the measured rate.
# Arguments go to pii-bench: --messages N (30000 per drain) --rtt-ms 0,20,50 --rows N (200000) --rounds R (5) --receivers N (8)
#   --latency-seconds S (20; 0 skips) --backlog N (0; 1000000 is the issue's figure, ~10 more minutes)
#   --large N (0; 1500 is the issue's figure: peak RSS draining ~1 MiB bodies mixed with small ones, with
#     default settings and with 5x the batch and 2x the receivers; the feed runs at the emulator's pace:
#     36 s for 1500 on a fresh emulator, 25 minutes on one slowed by a day's use; run it against a second emulator:
#     PII_INGEST_EMULATOR_PORT=4577 scripts/emulator.sh start, then --sqs-endpoint http://127.0.0.1:4577)
#   --skip-sqs --skip-postgres
#   With --backlog, the same backlog is also drained by the ingester as it was before the performance
#   work (commit PII_BENCH_BASELINE_REV, default 2e6fa15), built once into target/bench-baseline/, and
#   the table gives peak RSS against the 64 MiB bound and CPU per million messages against that
#   ingester's (target <= 0.50) and against a bare receive+delete drain through the same SDK (its
#   floor). --baseline-ingester PATH names another one.
# Takes about 6 minutes with the defaults on 2 cores (plus a cold release build, about 4 minutes).
set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."
scripts/postgres.sh
scripts/emulator.sh start
scripts/build-bench.sh

extra=()
wants_backlog=false
for arg in "$@"; do
  case "$arg" in
    --backlog|--backlog=*) wants_backlog=true ;;
    --baseline-ingester|--baseline-ingester=*) wants_backlog=false; break ;;
  esac
done
if $wants_backlog; then
  rev="${PII_BENCH_BASELINE_REV:-2e6fa15}"
  dir="target/bench-baseline/$(git rev-parse --short "$rev")"
  if [ ! -x "$dir/pii-ingest" ]; then
    echo "== building the baseline ingester ($rev) into $dir (a cold release build, about 4 minutes)"
    rm -rf "$dir/src"
    mkdir -p "$dir/src"
    git archive "$rev" | tar -x -C "$dir/src"
    (cd "$dir/src" && CARGO_TARGET_DIR="$PWD/../target" cargo build --release --locked --bin pii-ingest)
    cp "$dir/target/release/pii-ingest" "$dir/pii-ingest"
  fi
  extra=(--baseline-ingester "$dir/pii-ingest")
fi
exec target/release/pii-bench "$@" "${extra[@]}"
