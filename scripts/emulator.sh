#!/usr/bin/env bash
# Local SQS emulator for pii-ingest: LocalStack 4.8.1 in host mode (a plain Python
# process, no Docker).
#
#   scripts/emulator.sh install   create the venv and pip install LocalStack (pinned)
#   scripts/emulator.sh start     install if needed, start in the background, wait until ready
#   scripts/emulator.sh stop      stop the emulator started by this script
#   scripts/emulator.sh status    exit 0 if the emulator answers with SQS up, 1 otherwise
#   scripts/emulator.sh has SVC   exit 0 if the emulator on the port runs service SVC (e.g. sns)
#   scripts/emulator.sh restart   stop + start
#
# Environment:
#   PII_INGEST_EMULATOR_PORT     port on 127.0.0.1 (default 4566)
#   PII_INGEST_VENV              venv location (default <repo>/.venv/localstack)
#   PII_INGEST_PYTHON            interpreter used to create the venv (default python3; 3.11 is the
#                                tested version: later LocalStack releases need other Pythons)
#   PII_INGEST_EMULATOR_TIMEOUT  seconds to wait for readiness on start (default 60)
#   PII_INGEST_EMULATOR_SERVICES services to run (default sqs,sns: SNS for the envelope tests, whose
#                                SNS -> SQS subscriptions deliver real notification envelopes)
#   PII_INGEST_EMULATOR_PERSIST  a directory: keep the SQS state across stop/start (off by default)
#   PII_INGEST_EMULATOR_STOP_TIMEOUT  seconds 'stop' waits after TERM before KILL (default 10, or 120
#                                for an emulator that persists, to leave time for the save)
#
# Persistence: community LocalStack keeps SQS in memory only (PERSISTENCE=1 is a Pro feature), so a
# restart would lose every queue and message, which a real SQS outage never does. With
# PII_INGEST_EMULATOR_PERSIST=DIR the emulator runs through scripts/localstack/persistent.py, which saves
# all SQS queues and messages (visible, in flight with their receipt handles and visibility deadlines,
# delayed) to DIR/sqs-state.pickle when 'stop' sends TERM, and loads them on the next start before
# serving. So 'restart' behaves like an SQS endpoint outage: connections refused while it is down,
# every message still there after. 'stop' fails if the state could not be saved. A snapshot is consumed
# when loaded, so after a KILL (no save) the next start is empty rather than stale. SNS is not saved.
# scripts/localstack/persist-check.sh proves it (and times save/load for 100,000 messages).
#
# Clients: endpoint http://127.0.0.1:4566, region us-east-1, access key/secret "test"/"test".
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
REPO_ROOT="$(cd -- "$SCRIPT_DIR/.." && pwd -P)"

LOCALSTACK_VERSION="4.8.1"
CONSTRAINTS="$SCRIPT_DIR/localstack/constraints-$LOCALSTACK_VERSION.txt"
VENV="${PII_INGEST_VENV:-$REPO_ROOT/.venv/localstack}"
PYTHON="${PII_INGEST_PYTHON:-python3}"
PORT="${PII_INGEST_EMULATOR_PORT:-4566}"
HOST="127.0.0.1"
TIMEOUT="${PII_INGEST_EMULATOR_TIMEOUT:-60}"
SERVICES="${PII_INGEST_EMULATOR_SERVICES:-sqs,sns}"
PERSIST="${PII_INGEST_EMULATOR_PERSIST:-}"
STOP_TIMEOUT="${PII_INGEST_EMULATOR_STOP_TIMEOUT:-}"

# Default port: var/emulator/localstack.{log,pid}; another port gets its own files (localstack-PORT.*)
# so that several emulators can run side by side.
STATE_DIR="$REPO_ROOT/var/emulator"
SUFFIX=""
[[ "$PORT" == 4566 ]] || SUFFIX="-$PORT"
LOG_FILE="$STATE_DIR/localstack$SUFFIX.log"
PID_FILE="$STATE_DIR/localstack$SUFFIX.pid"
EMU_TMPDIR="$STATE_DIR/tmp$SUFFIX"
EMU_FSROOT="$STATE_DIR/fs$SUFFIX"
PIP_LOG="$STATE_DIR/pip-install.log"
HEALTH_URL="http://$HOST:$PORT/_localstack/health"

log() { printf 'emulator: %s\n' "$*"; }
die() { printf 'emulator: error: %s\n' "$*" >&2; exit 1; }

case "$PORT" in
  '' | *[!0-9]*) die "PII_INGEST_EMULATOR_PORT must be a port number, got '$PORT'" ;;
esac
case "$STOP_TIMEOUT" in
  *[!0-9]*) die "PII_INGEST_EMULATOR_STOP_TIMEOUT must be a number of seconds, got '$STOP_TIMEOUT'" ;;
esac

# ---------------------------------------------------------------- install

venv_ok() {
  [[ -x "$VENV/bin/python" ]] || return 1
  "$VENV/bin/python" - "$LOCALSTACK_VERSION" >/dev/null 2>&1 <<'EOF'
import sys
from importlib.metadata import version
import localstack  # noqa: F401
sys.exit(0 if version("localstack-core") == sys.argv[1] else 1)
EOF
}

cmd_install() {
  if venv_ok; then
    log "localstack-core $LOCALSTACK_VERSION already installed in $VENV"
    return 0
  fi
  [[ -f "$CONSTRAINTS" ]] || die "pins file missing: $CONSTRAINTS"
  command -v "$PYTHON" >/dev/null 2>&1 || die "'$PYTHON' not found (set PII_INGEST_PYTHON to a Python 3.11 interpreter)"
  mkdir -p "$STATE_DIR"
  local started=$SECONDS

  # A venv whose interpreter no longer runs (moved folder, removed Python) is rebuilt from scratch.
  if [[ -e "$VENV" ]] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    if [[ -f "$VENV/pyvenv.cfg" ]]; then
      log "removing broken venv $VENV"
      rm -rf -- "$VENV"
    else
      die "$VENV exists but is not a working venv; remove it or set PII_INGEST_VENV"
    fi
  fi

  : >"$PIP_LOG"
  if [[ ! -x "$VENV/bin/python" ]]; then
    mkdir -p "$(dirname -- "$VENV")"
    if ! "$PYTHON" -m venv "$VENV" >>"$PIP_LOG" 2>&1; then
      tail -n 20 "$PIP_LOG" >&2
      die "'$PYTHON -m venv' failed (on Debian: apt-get install python3-venv)"
    fi
  fi

  if ! "$VENV/bin/python" -m pip install --progress-bar off --disable-pip-version-check \
        -c "$CONSTRAINTS" "localstack-core[runtime]==$LOCALSTACK_VERSION" >>"$PIP_LOG" 2>&1; then
    printf -- '--- last lines of %s ---\n' "$PIP_LOG" >&2
    tail -n 40 "$PIP_LOG" >&2
    die "pip install failed (full log: $PIP_LOG)"
  fi
  venv_ok || die "pip install finished but 'import localstack' ($LOCALSTACK_VERSION) fails in $VENV"
  log "installed localstack-core $LOCALSTACK_VERSION into $VENV in $((SECONDS - started)) s"
}

# ---------------------------------------------------------------- helpers

# 0 when the health endpoint reports service $1 (default sqs) running/available.
healthy() {
  local service="${1:-sqs}"
  local body
  if command -v curl >/dev/null 2>&1; then
    body="$(curl -fsS --max-time 2 "$HEALTH_URL" 2>/dev/null)" || return 1
  else
    local py="$PYTHON"
    [[ -x "$VENV/bin/python" ]] && py="$VENV/bin/python"
    body="$("$py" -c 'import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode())' "$HEALTH_URL" 2>/dev/null)" || return 1
  fi
  [[ "$body" =~ \"$service\":\ *\"(running|available)\" ]]
}

# 0 when every service of $SERVICES is up.
all_healthy() {
  local service
  for service in ${SERVICES//,/ }; do
    healthy "$service" || return 1
  done
}

# 0 when something accepts TCP connections on the port.
port_in_use() {
  (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null
}

# 0 when process $1 runs through the persistence launcher.
persists() {
  [[ -r "/proc/$1/cmdline" ]] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q 'localstack/persistent\.py'
}

# Prints the pid from the pid file if that process is alive and is our emulator.
managed_pid() {
  [[ -f "$PID_FILE" ]] || return 1
  local pid
  pid="$(tr -dc '0-9' <"$PID_FILE")"
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 1
  if [[ -r "/proc/$pid/cmdline" ]] &&
      ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -Eq 'localstack\.runtime\.main|localstack/persistent\.py'; then
    return 1 # pid reused by something else
  fi
  printf '%s\n' "$pid"
}

log_tail() {
  [[ -f "$LOG_FILE" ]] || return 0
  printf -- '--- last lines of %s ---\n' "$LOG_FILE" >&2
  tail -n 40 "$LOG_FILE" >&2
}

# ---------------------------------------------------------------- start / stop / status

cmd_start() {
  if healthy; then
    log "already running on $HOST:$PORT (sqs up)"
    local running
    if [[ -n "$PERSIST" ]] && { ! running="$(managed_pid)" || ! persists "$running"; }; then
      log "warning: that emulator was not started with PII_INGEST_EMULATOR_PERSIST: it keeps no state"
    fi
    return 0
  fi
  venv_ok || cmd_install
  mkdir -p "$STATE_DIR" "$EMU_TMPDIR" "$EMU_FSROOT"

  local pid
  if pid="$(managed_pid)"; then
    log "emulator process $pid exists but is not ready yet; waiting"
  else
    rm -f -- "$PID_FILE"
    if port_in_use; then
      die "port $PORT is in use by something that is not a ready LocalStack SQS (set PII_INGEST_EMULATOR_PORT)"
    fi
    [[ -f "$LOG_FILE" ]] && mv -f -- "$LOG_FILE" "$LOG_FILE.prev"
    # The runtime itself, or the launcher that runs it with the SQS state saved and loaded.
    local entry=(-m localstack.runtime.main)
    if [[ -n "$PERSIST" ]]; then
      mkdir -p -- "$PERSIST" || die "cannot create PII_INGEST_EMULATOR_PERSIST directory '$PERSIST'"
      PERSIST="$(cd -- "$PERSIST" && pwd -P)" # the emulator runs in $STATE_DIR
      entry=("$SCRIPT_DIR/localstack/persistent.py")
    fi
    local launcher=()
    command -v setsid >/dev/null 2>&1 && launcher=(setsid)
    # OVERRIDE_IN_DOCKER=0: inside a container LocalStack otherwise picks its container layout and
    # writes to /var/lib/localstack (fails for non-root). FILESYSTEM_ROOT keeps its files under var/.
    # Without job control the background child is not a group leader, so setsid does not fork:
    # $! is the Python process and leads its own session/process group.
    (
      cd -- "$STATE_DIR"
      exec "${launcher[@]}" nohup env \
        TMPDIR="$EMU_TMPDIR" \
        OVERRIDE_IN_DOCKER=0 \
        FILESYSTEM_ROOT="$EMU_FSROOT" \
        GATEWAY_LISTEN="$HOST:$PORT" \
        LOCALSTACK_HOST="$HOST:$PORT" \
        SERVICES="$SERVICES" \
        EAGER_SERVICE_LOADING=1 \
        SQS_ENDPOINT_STRATEGY=path \
        DNS_ADDRESS=0 \
        DISABLE_EVENTS=1 \
        SKIP_SSL_CERT_DOWNLOAD=1 \
        LS_LOG=warn \
        PII_INGEST_EMULATOR_PERSIST="$PERSIST" \
        "$VENV/bin/python" "${entry[@]}"
    ) >"$LOG_FILE" 2>&1 </dev/null &
    pid=$!
    printf '%s\n' "$pid" >"$PID_FILE"
  fi

  local started=$SECONDS
  while ((SECONDS - started < TIMEOUT)); do
    if all_healthy; then
      log "running on http://$HOST:$PORT (pid $pid, ready in $((SECONDS - started)) s, log $LOG_FILE)"
      [[ -z "$PERSIST" ]] || grep -h '^persistent: ' "$LOG_FILE" | sed 's/^/emulator: /' || true
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      log_tail
      rm -f -- "$PID_FILE"
      die "emulator process $pid exited during startup"
    fi
    sleep 0.5
  done
  log_tail
  die "emulator not ready after $TIMEOUT s (pid $pid still running; 'scripts/emulator.sh stop' to kill it)"
}

cmd_stop() {
  local pid
  if ! pid="$(managed_pid)"; then
    rm -f -- "$PID_FILE"
    if port_in_use; then
      die "no emulator started by this script, but port $PORT is in use by another process"
    fi
    log "not running"
    return 0
  fi

  # Signal the whole process group when the emulator leads one, else just the process.
  local target="$pid"
  local pgid
  pgid="$(ps -o pgid= -p "$pid" 2>/dev/null | tr -dc '0-9' || true)"
  if [[ -z "$pgid" && -r "/proc/$pid/stat" ]]; then
    pgid="$(sed 's/^.*) //' "/proc/$pid/stat" | cut -d' ' -f3)"
  fi
  [[ "$pgid" == "$pid" ]] && target="-$pid"

  # Whether this emulator saves its state is decided by how it was started, not by our environment.
  local persisting="" grace="${STOP_TIMEOUT:-10}"
  if persists "$pid"; then
    persisting=1
    grace="${STOP_TIMEOUT:-120}"
  fi

  kill -TERM -- "$target" 2>/dev/null || true
  local i killed=""
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid did not exit within $grace s of TERM; sending KILL"
    kill -KILL -- "$target" 2>/dev/null || true
    killed=1
    sleep 0.5
  fi
  rm -f -- "$PID_FILE"
  if [[ -n "$persisting" ]]; then
    local saved
    saved="$(grep -h '^persistent: saved ' "$LOG_FILE" 2>/dev/null | tail -n 1)" || saved=""
    if [[ -n "$killed" || -z "$saved" ]]; then
      log_tail
      die "pid $pid stopped without saving its SQS state (see $LOG_FILE)"
    fi
    log "${saved#persistent: }"
  fi

  for ((i = 0; i < 100; i++)); do # wait up to 10 s for the port
    port_in_use || { log "stopped (pid $pid)"; return 0; }
    sleep 0.1
  done
  die "pid $pid stopped but port $PORT is still in use"
}

cmd_status() {
  local pid=""
  pid="$(managed_pid)" || pid=""
  if healthy; then
    log "up: http://$HOST:$PORT (sqs running${pid:+, pid $pid})"
    return 0
  fi
  if [[ -n "$pid" ]]; then
    log "down: process $pid is alive but SQS is not ready on port $PORT (see $LOG_FILE)"
  else
    log "down: nothing answering on http://$HOST:$PORT"
  fi
  return 1
}

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  has) healthy "${2:?usage: emulator.sh has SERVICE}" ;;
  restart) cmd_stop; cmd_start ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
