#!/usr/bin/env bash
# Start (or reuse) a throwaway PostgreSQL cluster for the fastgate-store test suite.
#
#   source scripts/pg-test-server.sh        # exports FASTGATE_TEST_DATABASE_URL
#   bash scripts/pg-test-server.sh          # prints `export FASTGATE_TEST_DATABASE_URL=...`
#   bash scripts/pg-test-server.sh stop     # stops the cluster
#
# Installs Debian's `postgresql` package when no server binaries are found (needs root), runs the
# cluster as the `postgres` user on 127.0.0.1 (trust auth, loopback only), and creates the database
# `fastgate_test`. Idempotent: a cluster already running on the port is reused.
# Environment: FG_PG_PORT (default 55432), FG_PG_DIR (default /tmp/fastgate-pg-$FG_PG_PORT).

fg_pg_main() {
    local port="${FG_PG_PORT:-55432}"
    local dir="${FG_PG_DIR:-/tmp/fastgate-pg-${port}}"
    local db="fastgate_test"
    local bindir

    fg_pg_bindir() {
        local d
        for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
            if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then echo "$d"; return 0; fi
        done
        return 1
    }

    if ! bindir="$(fg_pg_bindir)"; then
        echo "pg-test-server: installing postgresql from Debian packages" >&2
        if [ "$(id -u)" -ne 0 ]; then echo "pg-test-server: need root to install postgresql" >&2; return 1; fi
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2 || return 1
        apt-get install -y -qq postgresql >&2 || return 1
        bindir="$(fg_pg_bindir)" || { echo "pg-test-server: no PostgreSQL binaries after install" >&2; return 1; }
    fi

    # Run as postgres when we are root (initdb refuses root).
    local runas=()
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
        runas=(runuser -u postgres --)
    fi

    if [ "${1:-}" = "stop" ]; then
        if [ -f "$dir/data/PG_VERSION" ]; then "${runas[@]}" "$bindir/pg_ctl" -D "$dir/data" -m fast stop >&2 || true; fi
        return 0
    fi

    mkdir -p "$dir"
    if [ "$(id -u)" -eq 0 ]; then chown postgres "$dir"; fi

    if "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port"; then
        : # already running (ours from an earlier call, or compatible)
    else
        if [ ! -f "$dir/data/PG_VERSION" ]; then
            "${runas[@]}" "$bindir/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 \
                || { cat "$dir/initdb.log" >&2; return 1; }
        fi
        # A stale pid file from a killed cluster would block the start.
        if [ -f "$dir/data/postmaster.pid" ] && ! "${runas[@]}" "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
            rm -f "$dir/data/postmaster.pid"
        fi
        "${runas[@]}" "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
            -o "-h 127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
            start >&2 || { tail -n 30 "$dir/server.log" >&2; return 1; }
    fi

    local i
    for i in $(seq 1 60); do
        "$bindir/pg_isready" -q -h 127.0.0.1 -p "$port" && break
        sleep 0.5
    done
    if ! "$bindir/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
        "$bindir/psql" -h 127.0.0.1 -p "$port" -U postgres -d postgres -qc "CREATE DATABASE $db" >&2 || return 1
    fi

    export FASTGATE_TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:${port}/${db}"
    echo "export FASTGATE_TEST_DATABASE_URL=${FASTGATE_TEST_DATABASE_URL}"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    fg_pg_main "$@"
else
    fg_pg_main "$@"
fi
