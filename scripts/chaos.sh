#!/usr/bin/env bash
# Chaos run: loads a fresh queue per scenario with N generated messages (about 1% malformed), drains
# it into a fresh database while hurting the ingester, and checks that every message ended as exactly
# one row or one quarantine record. Prints one table row per scenario; exits 1 if any scenario has a
# duplicate, a lost message, a message left in the queue, or a message whose fate differs from a
# clean drain (the `baseline` scenario, always run first).
#
#   scripts/chaos.sh [--messages N] [--scenarios a,b,c] [--release] [--no-sqs-pause] [--keep]
#                    [--set SECTION.KEY=VALUE ...]   (e.g. --set postgres.write_method=insert)
#
# Scenarios (default: all):
#   kill9          SIGKILL `run` 0.3-3 s after each start, restart, until nothing is visible
#   sigterm        SIGTERM `run` at a random moment: must exit 0 within the visibility timeout
#   four-workers   four `run --until-empty` at once, each with its own ledger
#   ledger-damage  SIGKILL at 50/65/80 %, and wipe / truncate / overwrite the ledger in between
#   postgres-cut   pg_terminate_backend on the scenario database's connections every 50 ms for 5 s
#                  (the server is never restarted: other tests share it)
#   postgres-stall LOCK TABLE user_logins for 5 s and pg_cancel_backend every insert waiting on it
#                  (what statement_timeout / lock_timeout do to a stuck write)
#   sqs-pause      SIGSTOP the shared LocalStack process for 10 s, then SIGCONT (pauses every user of
#                  the emulator for those 10 s; --no-sqs-pause skips it)
#   restore        pg_dump at 30 %, drain to 70 %, pg_restore --clean, re-drive the queue's archive
#                  (export --peek) under its MessageIds, drain on with the same, stale, ledger
#   key-conflicts  1 % extra pairs sharing an idempotency key with different bodies: one row + one
#                  key_conflict record per pair
#   archive        replay an archive's first 60 %, then the whole of it re-exported in another order,
#                  then again, with SIGKILLs: one row or record per line, nothing twice
#   marathon       (not in the default set) 4 workers, 50 SIGKILLs, a Postgres and an emulator restart:
#                  only through scripts/chaos-long.sh, which gives it servers of its own
# Each scenario gives up after 10 minutes (--scenario-timeout S) and then counts as failed.
# Every scenario finishes with `run --until-empty`, so "left in queue" is 0 unless that failed.
# More options (--visibility, --seed, --max-restarts, ...): scripts/chaos.sh --help.
#
# Needs Postgres on 127.0.0.1:5432 (trust auth for postgres) and the SQS emulator on 127.0.0.1:4566;
# starts either if it is not running, never restarts them. Queues are deleted at the end; databases
# (pii_chaos_<run>_<scenario>) and logs (var/chaos/<run>/) are dropped unless the scenario failed.
set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."

profile=debug
args=()
for arg in "$@"; do
  case "$arg" in
    --release) profile=release ;;
    -h | --help) sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//'; echo; args+=("$arg") ;;
    *) args+=("$arg") ;;
  esac
done

PY="${PII_INGEST_VENV:-.venv/localstack}/bin/python"
if [[ " ${args[*]-} " != *" --help "* && " ${args[*]-} " != *" -h "* ]]; then
  scripts/postgres.sh
  scripts/emulator.sh start >&2
  if [[ "$profile" == release ]]; then
    cargo build --release --bin pii-ingest >&2
  else
    cargo build --bin pii-ingest >&2
  fi
fi
[[ -x "$PY" ]] || { echo "chaos: $PY missing (scripts/emulator.sh install creates it)" >&2; exit 1; }

exec "$PY" scripts/chaos/chaos.py --binary "target/$profile/pii-ingest" "${args[@]}"
