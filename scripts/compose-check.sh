#!/usr/bin/env bash
# `docker compose up` for real, on a machine that can run containers but cannot pull images.
#
#   sudo scripts/compose-check.sh        (root: it installs packages and may start dockerd)
#
# 1. Installs what is missing (Debian: docker.io, docker-compose, debootstrap) and starts `dockerd` if
#    no engine answers (and stops it again at the end).
# 2. Builds a local stand-in for every base image the Dockerfile and docker-compose.yml name, tagged with
#    that same name (scripts/compose/): debian:bookworm-slim from `debootstrap --variant=minbase`, the
#    rust builder from this machine's toolchain, postgres from Debian's postgresql package (honouring
#    the official image's POSTGRES_* variables and /docker-entrypoint-initdb.d), LocalStack from PyPI
#    with the pins in scripts/localstack/. Stand-ins are kept and reused while their recipe is unchanged.
#    The monitoring profile's images (Prometheus, Grafana) are not built: that profile is not started.
# 3. Runs the project's real Dockerfile and docker-compose.yml (`docker compose`, or Debian's
#    docker-compose 1.29) and checks: rows=99 quarantined=1 through psql in the compose Postgres, every
#    health check healthy and the one-shot services exited 0, `down` then `up` again writes nothing
#    new (tables unchanged; the ingester's report at stop: 100 received, 0 written, 0 quarantined), and
#    the logs of both runs hold no sample ip/device_id, no other IPv4 address outside the compose
#    network and loopback, and no terminal escape code.
# 4. Tears everything down (containers, network, volumes; the stand-in images and pii-ingest:local stay,
#    so a second run reuses the image's cached dependency layer).
#
# Not part of CI (scripts/test.sh): it needs root and a Docker engine, and a cold run takes about 15
# minutes on 2 cores (docs/compose-check.md has the figures). Output: var/compose-check/.
#
# Environment: PII_INGEST_COMPOSE_TIMEOUT (seconds to wait for each state, default 600),
# PII_INGEST_BUILD_JOBS (cargo's jobs inside the image build, default 2: the machine is shared); the
# host's http(s)_proxy/no_proxy, if set, are passed to the image build.
set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."
REPO_ROOT="$PWD"
RECIPES="$REPO_ROOT/scripts/compose"
STATE_DIR="$REPO_ROOT/var/compose-check"
TIMEOUT="${PII_INGEST_COMPOSE_TIMEOUT:-600}"
SAMPLE="data/login-queue-sample.jsonl"
LABEL="org.pii-ingest.standin"
export COMPOSE_PROJECT_NAME=pii-ingest-check
STARTED_DOCKERD=""
COMPOSE=()
LOGS=""    # both runs' logs (compose-logs.txt), checked at the end
SUBNETS="" # the compose network's, read while it exists
WRITTEN="" # the tables after the first run (written_state)

log() { printf '[compose-check %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { printf '[compose-check] error: %s\n' "$*" >&2; exit 1; }

ensure_packages() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then
    missing+=(docker-compose)
  fi
  ((${#missing[@]} == 0)) && return 0
  [[ "$(id -u)" == 0 ]] || die "needs root to install ${missing[*]} (run with sudo)"
  log "installing ${missing[*]}"
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
}

ensure_dockerd() {
  docker info >/dev/null 2>&1 && return 0
  [[ "$(id -u)" == 0 ]] || die "no Docker engine answers and only root can start dockerd"
  mkdir -p "$STATE_DIR"
  log "starting dockerd (log: var/compose-check/dockerd.log)"
  dockerd >"$STATE_DIR/dockerd.log" 2>&1 &
  STARTED_DOCKERD=$!
  local waited=0
  until docker info >/dev/null 2>&1; do
    ((waited++ < 60)) || die "dockerd did not answer within 60 s (see $STATE_DIR/dockerd.log)"
    sleep 1
  done
}

pick_compose() {
  if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
  else
    COMPOSE=(docker-compose)
  fi
  log "compose: $("${COMPOSE[@]}" version --short 2>/dev/null || "${COMPOSE[@]}" version | head -1)"
}

cleanup() {
  local rc=$?
  if ((${#COMPOSE[@]})); then
    ((rc == 0)) || "${COMPOSE[@]}" logs --no-color >>"$STATE_DIR/compose-logs.txt" 2>&1 || true
    log "tearing down (containers, network, volumes)"
    "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  fi
  if [[ -n "$STARTED_DOCKERD" ]]; then
    log "stopping the dockerd this script started"
    kill "$STARTED_DOCKERD" 2>/dev/null || true
    wait "$STARTED_DOCKERD" 2>/dev/null || true
  fi
  if ((rc == 0)); then
    log "PASS in $SECONDS s"
  else
    log "FAIL (exit $rc) after $SECONDS s; compose logs in var/compose-check/compose-logs.txt"
  fi
}

# ---------------------------------------------------------------- stand-in images

# The recipe fingerprint an image was built from ("" if the image is absent or not a stand-in).
standin_label() {
  docker image inspect -f "{{index .Config.Labels \"$LABEL\"}}" "$1" 2>/dev/null || true
}

fingerprint() { cat "$@" | sha256sum | cut -c1-16; }

standin_debian() {
  local name=$1 suite=${1#debian:} fp cas=()
  suite=${suite%-slim}
  # Certificate authorities this machine added locally (an intercepting egress proxy's, say): without
  # them nothing in a container can reach PyPI or crates.io over TLS where the host can. Debian's
  # ca-certificates package folds /usr/local/share/ca-certificates into the bundle when an image
  # installs it, as the builder and runtime stages do.
  shopt -s nullglob
  cas=(/usr/local/share/ca-certificates/*.crt)
  shopt -u nullglob
  fp="debootstrap-minbase-$suite-v1-$( ((${#cas[@]})) && fingerprint "${cas[@]}" || echo no-local-ca)"
  [[ "$(standin_label "$name")" == "$fp" ]] && { log "$name: cached stand-in"; return; }
  log "$name: debootstrap --variant=minbase $suite (about 2 min)"
  local root="$STATE_DIR/rootfs-$suite"
  rm -rf "$root"
  debootstrap --variant=minbase "$suite" "$root" http://deb.debian.org/debian >"$STATE_DIR/debootstrap.log" 2>&1 ||
    die "debootstrap failed (see $STATE_DIR/debootstrap.log)"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  if ((${#cas[@]})); then
    mkdir -p "$root/usr/local/share/ca-certificates"
    cp "${cas[@]}" "$root/usr/local/share/ca-certificates/"
  fi
  tar -C "$root" -c . | docker import --change "LABEL $LABEL=$fp" --change 'CMD ["bash"]' - "$name" >/dev/null
  rm -rf "$root"
}

# The ID of an image this recipe builds on: a rebuilt base means rebuilt stand-ins on top of it.
image_id() { docker image inspect -f '{{.Id}}' "$1"; }

# The sysroot of an installed toolchain whose rustc is release $1 (1.95 matches 1.95.x).
find_toolchain() {
  local version=$1 dir
  for dir in "$(rustc --print sysroot 2>/dev/null)" "${RUSTUP_HOME:-$HOME/.rustup}"/toolchains/*; do
    [[ -x "$dir/bin/cargo" && -x "$dir/bin/rustc" ]] || continue
    if [[ "$("$dir/bin/rustc" --version)" =~ ^rustc\ ${version}[.\ ] ]]; then
      readlink -f "$dir"
      return 0
    fi
  done
  return 1
}

standin_rust() {
  local name=$1 version=${1#rust:} fp toolchain
  version=${version%-bookworm}
  toolchain=$(find_toolchain "$version") ||
    die "$name needs a Rust $version toolchain on this machine (rustup toolchain install $version)"
  fp=$(fingerprint "$RECIPES/rust.Dockerfile" <(image_id debian:bookworm-slim) <("$toolchain/bin/rustc" -vV))
  [[ "$(standin_label "$name")" == "$fp" ]] && { log "$name: cached stand-in"; return; }
  log "$name: from this machine's toolchain $toolchain"
  local ctx="$STATE_DIR/rust-context"
  rm -rf "$ctx" && mkdir -p "$ctx"
  # Hard links: no copy of the 700 MB toolchain on disk (the HTML docs are left out of the image).
  cp -al "$toolchain" "$ctx/toolchain" 2>/dev/null || cp -a "$toolchain" "$ctx/toolchain"
  rm -rf "$ctx/toolchain/share/doc"
  docker build -q -f "$RECIPES/rust.Dockerfile" --build-arg "RUST_VERSION=$version" --label "$LABEL=$fp" \
    -t "$name" "$ctx" >"$STATE_DIR/build-rust.log" 2>&1 || die "building $name failed (see $STATE_DIR/build-rust.log)"
  rm -rf "$ctx"
}

standin_postgres() {
  local name=$1 major=${1#postgres:} fp
  [[ "$major" =~ ^[0-9]+$ ]] || die "$name: expected postgres:<major>"
  fp=$(fingerprint "$RECIPES/postgres.Dockerfile" "$RECIPES/postgres-entrypoint.sh" <(image_id debian:bookworm-slim) <(echo "$major"))
  [[ "$(standin_label "$name")" == "$fp" ]] && { log "$name: cached stand-in"; return; }
  log "$name: Debian's postgresql-$major"
  docker build -q -f "$RECIPES/postgres.Dockerfile" --build-arg "PG_MAJOR=$major" --label "$LABEL=$fp" \
    -t "$name" "$RECIPES" >"$STATE_DIR/build-postgres.log" 2>&1 ||
    die "building $name failed (see $STATE_DIR/build-postgres.log; Debian bookworm has postgresql-15 only)"
}

standin_localstack() {
  local name=$1 version=${1#*:} fp constraints ctx
  constraints="$REPO_ROOT/scripts/localstack/constraints-$version.txt"
  [[ -f "$constraints" ]] || die "$name: no pins in $constraints"
  fp=$(fingerprint "$RECIPES/localstack.Dockerfile" "$constraints" <(image_id debian:bookworm-slim))
  [[ "$(standin_label "$name")" == "$fp" ]] && { log "$name: cached stand-in"; return; }
  log "$name: localstack-core $version from PyPI (about 5 min)"
  ctx="$STATE_DIR/localstack-context"
  rm -rf "$ctx" && mkdir -p "$ctx"
  cp "$RECIPES/localstack.Dockerfile" "$ctx/" && cp "$constraints" "$ctx/constraints.txt"
  docker build -q -f "$ctx/localstack.Dockerfile" --build-arg "LOCALSTACK_VERSION=$version" --label "$LABEL=$fp" \
    -t "$name" "$ctx" >"$STATE_DIR/build-localstack.log" 2>&1 || die "building $name failed (see $STATE_DIR/build-localstack.log)"
  rm -rf "$ctx"
}

# Every image the Dockerfile's FROM lines and the compose file's services name, the base first.
named_images() {
  {
    sed -n 's/^FROM[[:space:]]\{1,\}\([^[:space:]]*\).*/\1/p' Dockerfile
    sed -n 's/^[[:space:]]*image:[[:space:]]*\([^[:space:]#]*\).*/\1/p' docker-compose.yml
  } | awk '!seen[$0]++' | awk '/^debian:/ {print; next} {rest[++n] = $0} END {for (i = 1; i <= n; i++) print rest[i]}'
}

build_standins() {
  local name
  for name in $(named_images); do
    case "$name" in
      debian:*) standin_debian "$name" ;;
      rust:*-bookworm) standin_rust "$name" ;;
      postgres:*) standin_postgres "$name" ;;
      localstack/localstack:*) standin_localstack "$name" ;;
      pii-ingest:*) ;; # the project's own image: compose builds it from the Dockerfile
      prom/prometheus:* | grafana/grafana:*) log "$name: monitoring profile, not started here" ;;
      *) die "no stand-in recipe for image $name (add one to scripts/compose-check.sh)" ;;
    esac
  done
}

# ---------------------------------------------------------------- checks

psql_compose() {
  "${COMPOSE[@]}" exec -T postgres psql -U postgres -d pii_ingest -v ON_ERROR_STOP=1 -Atq -c "$1"
}

counts() {
  psql_compose "SELECT 'rows=' || (SELECT count(*) FROM user_logins) || ' quarantined=' || (SELECT count(*) FROM quarantined_messages)" 2>/dev/null
}

# Everything written: counts plus the last ingested_at of each table (a rewrite would move them).
written_state() {
  psql_compose "SELECT (SELECT count(*) || '/' || coalesce(max(ingested_at)::text, '-') FROM user_logins) || ' ' ||
                       (SELECT count(*) || '/' || coalesce(max(quarantined_at)::text, '-') FROM quarantined_messages)"
}

wait_for() {
  local what=$1 deadline=$((SECONDS + TIMEOUT))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || die "timed out after $TIMEOUT s waiting for $what"
    sleep 2
  done
}

container() { "${COMPOSE[@]}" ps -q "$1"; }

health_of() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$(container "$1")"; }

all_healthy() {
  local svc
  for svc in postgres localstack ingester; do
    [[ "$(health_of "$svc")" == healthy ]] || return 1
  done
}

one_shots_succeeded() {
  local svc state
  for svc in migrate seed; do
    state=$(docker inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$(container "$svc")")
    [[ "$state" == "exited 0" ]] || die "$svc: $state (expected exited 0; see var/compose-check/compose-logs.txt)"
  done
}

# All 100 lines of the sample have reached a table (or more: the check after says so).
all_landed() {
  local n
  n=$(psql_compose "SELECT (SELECT count(*) FROM user_logins) + (SELECT count(*) FROM quarantined_messages)" 2>/dev/null) || return 1
  ((n >= 100))
}

# One series' value (summed over its labels) from the ingester's /metrics, scraped from inside the
# compose network (the runtime image has no curl; the LocalStack image has).
metric() {
  "${COMPOSE[@]}" exec -T localstack curl -fsS http://ingester:9898/metrics 2>/dev/null |
    awk -v name="$1" '$1 == name || index($1, name "{") == 1 { sum += $2 } END { printf "%d\n", sum }'
}

# The second run has settled every one of the 100 messages the seed sent again.
second_run_done() { (($(metric pii_ingest_messages_deleted_total) >= 100)); }

# Stops the stack (the ingester prints its report on SIGTERM), appends every service's log to $1 and
# prints the ingester's last report, without the compose log prefix.
stop_and_report() {
  local logs=$1
  "${COMPOSE[@]}" stop >/dev/null 2>&1
  "${COMPOSE[@]}" logs --no-color >>"$logs" 2>&1
  "${COMPOSE[@]}" logs --no-color ingester 2>&1 | sed 's/^[^|]*| \{0,1\}//' |
    awk '/^received / { report = "" } /^received /, /^elapsed / { report = report $0 "\n" } END { printf "%s", report }'
}

indent() { sed 's/^/    /'; }

# A number from a report line such as "rows written        99".
report_value() { awk -v label="$2" 'index($0, label) == 1 { print $NF; exit }' <<<"$1"; }

# The compose network's subnets: container addresses in the logs are not PII.
network_subnets() {
  docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' "${COMPOSE_PROJECT_NAME}_default" 2>/dev/null || true
}

# One line: what the logs hold, "FAIL ..." if a sample ip or device_id, another IPv4 address outside the
# compose network and loopback, or a terminal escape byte is among them.
scan_logs() {
  python3 - "$SAMPLE" "$@" <<'EOF'
import ipaddress, json, re, sys
sample, logs, subnets = sys.argv[1], sys.argv[2], sys.argv[3].split()
values = set()
for line in open(sample, encoding="utf-8"):
    event = json.loads(line)
    values |= {event[f] for f in ("ip", "device_id") if isinstance(event.get(f), str) and event[f]}
allowed = [ipaddress.ip_network(s) for s in subnets] + [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("0.0.0.0/32")]
text = open(logs, encoding="utf-8", errors="replace").read()
lines = text.splitlines()
pii = [l for l in lines if any(v in l for v in values)]
foreign = set()
for token in re.findall(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])", text):
    try:
        address = ipaddress.ip_address(token)
    except ValueError:
        continue
    if not any(address in net for net in allowed):
        foreign.add(token)
escapes = sum(1 for l in lines if "\x1b" in l)
if len(values) < 150:
    print(f"FAIL expected ~198 ip/device_id values in {sample}, found {len(values)}")
elif pii or foreign or escapes:
    print(f"FAIL {len(pii)} lines hold a sample ip or device_id; IPv4 addresses outside the compose network: "
          f"{len(foreign)}; lines with an escape byte: {escapes}")
else:
    print(f"{len(lines)} lines, none holds one of the sample's {len(values)} ip/device_id values, an IPv4 address "
          f"outside the compose network ({' '.join(subnets) or 'none'}) and loopback, or an escape byte")
EOF
}

check_logs() {
  local logs=$1 subnets=$2 verdict
  verdict=$(scan_logs "$logs" "$subnets")
  [[ "$verdict" != FAIL* ]] || die "logs: ${verdict#FAIL } (see $logs)"
  log "logs: $verdict"
}

# ---------------------------------------------------------------- main

# The masking key, as a compose secret file (never an environment variable). Readable inside the
# containers by the image's uid; its folder is private to this user on the host.
make_secret() {
  local secrets="$STATE_DIR/secrets"
  (umask 077 && mkdir -p "$secrets")
  [[ -s "$secrets/masking.key" ]] || od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$secrets/masking.key"
  chmod 0644 "$secrets/masking.key"
  export PII_INGEST_MASKING_KEY_FILE="$secrets/masking.key"
}

# Build arguments: compile jobs (2 by default: a shared machine) and the host's proxy settings, if any.
build_args() {
  local var
  printf -- '--build-arg\nCARGO_BUILD_JOBS=%s\n' "${PII_INGEST_BUILD_JOBS:-2}"
  for var in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
    [[ -n "${!var:-}" ]] && printf -- '--build-arg\n%s\n' "$var"
  done
  return 0
}

build_image() {
  local t0=$SECONDS args
  mapfile -t args < <(build_args)
  log "building pii-ingest:local from the project's Dockerfile, ${args[*]} (log: var/compose-check/build.log)"
  "${COMPOSE[@]}" build "${args[@]}" >"$STATE_DIR/build.log" 2>&1 ||
    { tail -30 "$STATE_DIR/build.log"; die "docker compose build failed"; }
  log "image built in $((SECONDS - t0)) s"
}

first_run() {
  local t0=$SECONDS report
  log "up"
  "${COMPOSE[@]}" up -d >"$STATE_DIR/up.log" 2>&1 || { cat "$STATE_DIR/up.log"; die "docker compose up failed"; }
  wait_for "the sample's 100 lines in Postgres" all_landed
  one_shots_succeeded
  [[ "$(counts)" == "rows=99 quarantined=1" ]] || die "expected rows=99 quarantined=1, got $(counts)"
  log "$(counts) after $((SECONDS - t0)) s (psql in the compose postgres)"
  counts
  wait_for "every health check healthy" all_healthy
  log "healthy: postgres=$(health_of postgres) localstack=$(health_of localstack) ingester=$(health_of ingester); migrate and seed exited 0"
  WRITTEN=$(written_state)
  report=$(stop_and_report "$LOGS")
  log "first run, the ingester's report at stop:"
  indent <<<"$report"
}

second_run() {
  local t0=$SECONDS after final report
  log "down (volumes kept), then up again: the seed sends the same 100 lines again"
  "${COMPOSE[@]}" down >/dev/null 2>&1
  "${COMPOSE[@]}" up -d >>"$STATE_DIR/up.log" 2>&1 || { cat "$STATE_DIR/up.log"; die "second docker compose up failed"; }
  wait_for "the second run to settle the 100 messages" second_run_done
  one_shots_succeeded
  wait_for "every health check healthy (second run)" all_healthy
  log "healthy again: postgres=$(health_of postgres) localstack=$(health_of localstack) ingester=$(health_of ingester) after $((SECONDS - t0)) s"
  SUBNETS=$(network_subnets)
  after=$(written_state)
  final=$(counts)
  [[ "$WRITTEN" == "$after" ]] || die "the second up wrote something: before $WRITTEN, after $after"
  report=$(stop_and_report "$LOGS")
  log "second run, the ingester's report at stop:"
  indent <<<"$report"
  [[ "$(report_value "$report" received)" == 100 ]] || die "the second run received $(report_value "$report" received) messages, expected 100"
  [[ "$(report_value "$report" 'rows written')" == 0 ]] || die "the second run wrote rows"
  [[ "$(report_value "$report" quarantined)" == 0 ]] || die "the second run quarantined messages"
  grep -q '^reconciliation *ok' <<<"$report" || die "the second run's report does not reconcile"
  log "second up wrote nothing: tables unchanged (rows/last ingested_at, records/last quarantined_at: $after)"
  echo "$final"
}

main() {
  [[ -f "$SAMPLE" ]] || die "run from a checkout of pii-ingest ($SAMPLE is missing)"
  mkdir -p "$STATE_DIR"
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  ensure_packages
  ensure_dockerd
  log "docker engine $(docker version -f '{{.Server.Version}}'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
  local t0=$SECONDS
  build_standins
  log "stand-ins ready in $((SECONDS - t0)) s"
  pick_compose
  make_secret
  "${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
  build_image
  LOGS="$STATE_DIR/compose-logs.txt"
  : >"$LOGS"
  first_run
  second_run
  check_logs "$LOGS" "$SUBNETS"
}

main "$@"
