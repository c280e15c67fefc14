#!/usr/bin/env bash
# Entrypoint of the postgres stand-in image (scripts/compose/postgres.Dockerfile): the parts of the
# official image's docker-entrypoint.sh that its users rely on.
#   POSTGRES_USER (default postgres), POSTGRES_PASSWORD, POSTGRES_DB (default $POSTGRES_USER),
#   POSTGRES_HOST_AUTH_METHOD (default scram-sha-256 with a password; `trust` needs no password),
#   POSTGRES_INITDB_ARGS, PGDATA; on first start *.sh, *.sql and *.sql.gz in /docker-entrypoint-initdb.d
#   run in name order against POSTGRES_DB while the server listens on its socket only.
set -Eeuo pipefail

if [[ "${1:-}" == -* ]]; then
  set -- postgres "$@"
fi

# As root: own the data directory, then run again as postgres.
if [[ "$1" == postgres && "$(id -u)" == 0 ]]; then
  mkdir -p "$PGDATA"
  chown postgres:postgres "$PGDATA"
  chmod 0700 "$PGDATA"
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$BASH_SOURCE" "$@"
fi

[[ "$1" == postgres ]] || exec "$@"

export POSTGRES_USER="${POSTGRES_USER:-postgres}"
export POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
export PGUSER="$POSTGRES_USER"

if [[ ! -s "$PGDATA/PG_VERSION" ]]; then
  auth="${POSTGRES_HOST_AUTH_METHOD:-}"
  if [[ -z "${POSTGRES_PASSWORD:-}" && "$auth" != trust ]]; then
    echo >&2 "error: database is uninitialized and no superuser password is set:"
    echo >&2 "  set POSTGRES_PASSWORD, or POSTGRES_HOST_AUTH_METHOD=trust to allow every connection"
    exit 1
  fi
  auth="${auth:-scram-sha-256}"

  initdb_args=(--username="$POSTGRES_USER" --encoding=UTF8 --locale=C.UTF-8 -D "$PGDATA")
  if [[ -n "${POSTGRES_PASSWORD:-}" ]]; then
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    initdb_args+=(--pwfile="$pwfile")
  fi
  # shellcheck disable=SC2086 # POSTGRES_INITDB_ARGS is a list of flags, as in the official image
  initdb "${initdb_args[@]}" ${POSTGRES_INITDB_ARGS:-} >/dev/null
  [[ -n "${pwfile:-}" ]] && rm -f "$pwfile"
  printf '\nhost all all all %s\n' "$auth" >>"$PGDATA/pg_hba.conf"
  printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"

  # First start: socket only, so no client sees a half-initialised database.
  pg_ctl -D "$PGDATA" -w -o "-c listen_addresses=''" start >/dev/null
  if [[ "$POSTGRES_DB" != postgres ]]; then
    echo 'CREATE DATABASE :"db";' | psql -v ON_ERROR_STOP=1 --no-psqlrc -d postgres -q --set db="$POSTGRES_DB"
  fi
  for f in /docker-entrypoint-initdb.d/*; do
    [[ -e "$f" ]] || continue
    case "$f" in
      *.sh) echo "running $f"; if [[ -x "$f" ]]; then "$f"; else . "$f"; fi ;;
      *.sql) echo "running $f"; psql -v ON_ERROR_STOP=1 --no-psqlrc -d "$POSTGRES_DB" -f "$f" ;;
      *.sql.gz) echo "running $f"; gunzip -c "$f" | psql -v ON_ERROR_STOP=1 --no-psqlrc -d "$POSTGRES_DB" ;;
      *) echo "ignoring $f" ;;
    esac
  done
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  echo "PostgreSQL init process complete; ready for start up."
fi

exec "$@"
