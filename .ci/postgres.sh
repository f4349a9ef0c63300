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
    bash "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh" PostgreSQL postgresql || return 1
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
