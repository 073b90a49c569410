#!/bin/sh
# A private PostgreSQL 15 cluster with pg_stat_statements, for the bench's statement profile.
#
#   eval "$(bench/pgcluster.sh start DIR)"   # initdb + start on a free port; exports GENQ_DATABASE_URL
#   python -m bench --only pipeline          # each genq measurement records its top statements
#   bench/pgcluster.sh stop DIR              # stop it and remove DIR
#
# PG_BIN: the server's binaries (default /usr/lib/postgresql/15/bin). The cluster trusts local
# connections and keeps the server's defaults (fsync and synchronous commit on). As root, the
# server runs as PG_USER (default postgres), which must be able to reach DIR.
set -eu
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
cmd=${1:-}
dir=${2:-}
[ -n "$cmd" ] && [ -n "$dir" ] || { echo "usage: $0 start|stop DIR" >&2; exit 2; }
as_server() {
    if [ "$(id -u)" = 0 ]; then runuser -u "${PG_USER:-postgres}" -- "$@"; else "$@"; fi
}
case "$cmd" in
start)
    [ -e "$dir" ] && { echo "$dir exists" >&2; exit 1; }
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    [ "$(id -u)" = 0 ] && chown "${PG_USER:-postgres}" "$dir"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    as_server "$PG_BIN/initdb" -D "$dir/data" -U postgres -A trust >/dev/null
    as_server "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/log" -w -o "-h 127.0.0.1 -p $port -k $dir \
        -c max_connections=300 -c shared_preload_libraries=pg_stat_statements \
        -c pg_stat_statements.track=all" start >&2
    "$PG_BIN/psql" -h 127.0.0.1 -p "$port" -U postgres -qc 'CREATE DATABASE genq' >&2
    echo "export GENQ_DATABASE_URL=postgresql://postgres@127.0.0.1:$port/genq"
    ;;
stop)
    as_server "$PG_BIN/pg_ctl" -D "$dir/data" -w -m fast stop >&2
    rm -rf "$dir"
    ;;
*)
    echo "usage: $0 start|stop DIR" >&2; exit 2
    ;;
esac
