#!/bin/sh
# First start (an empty data directory): a cluster whose only network login is by
# password (scram-sha-256), the role `newsletter` with POSTGRES_PASSWORD, and its database.
# Every start: PostgreSQL in the foreground, listening on the container's network.
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD must be set for the first start}"
  initdb --pgdata="$PGDATA" --username=postgres --encoding=UTF8 --locale=C.UTF-8 \
    --auth-local=peer --auth-host=scram-sha-256 >/dev/null
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  # Single-user mode: nothing listens while the role is made; the password stays off
  # the command line and out of the log.
  printf "CREATE ROLE newsletter LOGIN PASSWORD '%s';\nCREATE DATABASE newsletter OWNER newsletter;\n" \
    "$(printf '%s' "$POSTGRES_PASSWORD" | sed "s/'/''/g")" \
    | postgres --single -D "$PGDATA" -c log_min_messages=warning postgres >/dev/null
  echo "entrypoint: cluster, role and database newsletter created"
fi
if [ "${1:-}" = "postgres" ]; then
  shift
  exec postgres -D "$PGDATA" -c listen_addresses='*' -c unix_socket_directories=/tmp "$@"
fi
exec "$@"
