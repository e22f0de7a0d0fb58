#!/bin/sh
# The official postgres image's start as far as Crucible uses it: on first start an empty PGDATA
# is initialised with POSTGRES_USER as its superuser (password POSTGRES_PASSWORD) and the
# database POSTGRES_DB; then Postgres listens on every address, password required.
set -eu
: "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -z "${POSTGRES_PASSWORD:-}" ]; then
    echo "POSTGRES_PASSWORD is empty: set it (the chart reads it from postgres.passwordSecret)" >&2
    exit 1
  fi
  password=$(mktemp)
  printf '%s' "$POSTGRES_PASSWORD" > "$password"
  initdb --username="$POSTGRES_USER" --pwfile="$password" --auth-host=scram-sha-256 \
    --auth-local=trust --encoding=UTF8 -D "$PGDATA"
  rm -f "$password"
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  if [ "$POSTGRES_DB" != postgres ]; then
    echo "CREATE DATABASE \"$POSTGRES_DB\";" | postgres --single -D "$PGDATA" postgres >/dev/null
  fi
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp
