#!/usr/bin/env bash
# Proves that scripts/emulator.sh restart keeps the SQS state when PII_INGEST_EMULATOR_PERSIST is set:
# starts a private emulator (port 4599 unless PII_INGEST_EMULATOR_PORT says otherwise; never the shared
# 4566/4576), runs persist_check.py against it (1,000 messages with 100 in flight across a restart, then
# save/load timings for N messages, default 100,000; 0 skips the timing), and stops it again.
#
#   scripts/localstack/persist-check.sh [N]
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(cd -- "$SCRIPT_DIR/../.." && pwd -P)"
export PII_INGEST_EMULATOR_PORT="${PII_INGEST_EMULATOR_PORT:-4599}"
case "$PII_INGEST_EMULATOR_PORT" in
  4566 | 4576)
    echo "persist-check: port $PII_INGEST_EMULATOR_PORT is shared by other tests; pick another" >&2
    exit 2
    ;;
esac
export PII_INGEST_EMULATOR_SERVICES=sqs
VENV="${PII_INGEST_VENV:-$REPO_ROOT/.venv/localstack}"
EMULATOR="$REPO_ROOT/scripts/emulator.sh"

if "$EMULATOR" status >/dev/null 2>&1; then
  echo "persist-check: port $PII_INGEST_EMULATOR_PORT already serves an emulator; stop it or pick another" >&2
  exit 2
fi
PII_INGEST_EMULATOR_PERSIST="$(mktemp -d "${TMPDIR:-/tmp}/pii-emu-persist.XXXXXX")"
export PII_INGEST_EMULATOR_PERSIST
cleanup() {
  "$EMULATOR" stop >/dev/null 2>&1 || true
  rm -rf -- "$PII_INGEST_EMULATOR_PERSIST"
}
trap cleanup EXIT

"$EMULATOR" install >/dev/null
"$VENV/bin/python" "$SCRIPT_DIR/persist_check.py" "${1:-100000}"
