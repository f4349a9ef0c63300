#!/usr/bin/env bash
# Make sure PostgreSQL server binaries (initdb, pg_ctl, postgres) are present for
# tests/test_distributed.py, installing the Debian package `postgresql` if they are missing.
# The test itself starts (and deletes) a throwaway cluster on 127.0.0.1; nothing here starts one.
#
# Use either way:   source .ci/postgres.sh     or     bash .ci/postgres.sh
# Needs root (or password-less sudo) and apt-get only when the binaries are missing.

_ift_have_postgres() {
    local d
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        return 0
    fi
    for d in /usr/lib/postgresql/*/bin; do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then
            return 0
        fi
    done
    return 1
}

_ift_ensure_postgres() {
    if _ift_have_postgres; then
        echo "== PostgreSQL server binaries present"
        return 0
    fi
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo="sudo -n"
        else
            echo "error: PostgreSQL is missing and installing it needs root (apt-get install -y postgresql)" >&2
            return 1
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: PostgreSQL is missing and apt-get is not available to install it" >&2
        return 1
    fi
    echo "== installing PostgreSQL (Debian package postgresql)"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq || return 1
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql \
        || return 1
    if ! _ift_have_postgres; then
        echo "error: installed postgresql but found no initdb/pg_ctl in /usr/lib/postgresql/*/bin" >&2
        return 1
    fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    # executed
    _ift_ensure_postgres
    exit $?
else
    # sourced: keep the caller's shell alive on failure but report it as the status of `source`
    _ift_ensure_postgres
fi
