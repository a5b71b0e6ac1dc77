#!/bin/sh
# Installs what tests/e2e/test_postgres.py needs, idempotently: Debian's PostgreSQL server binaries
# (apt-get install postgresql), unless /usr/lib/postgresql/*/bin/initdb exists. The tests start
# their own server (tests/support/pg_server.py: initdb + pg_ctl in a temporary directory on 127.0.0.1);
# the package's own cluster service is not used.
#
# Usage: sh tests/support/pg_setup.sh
#
# Never fails the test run: when PostgreSQL cannot be installed it prints a warning and exits 0;
# the Postgres test then skips and says why.
set -u

warn() { echo "pg_setup: warning: $*" >&2; }

if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    warn "no PostgreSQL and no apt-get: install PostgreSQL yourself; the Postgres test will be skipped"
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    sudo=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    sudo="sudo -n"
else
    warn "not root and no password-less sudo: cannot apt-get install postgresql; the Postgres test will be skipped"
    exit 0
fi
echo "pg_setup: installing postgresql (apt-get)" >&2
if ! { $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q \
    && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql; } >/tmp/pg_setup_apt.log 2>&1; then
    warn "apt-get failed (see /tmp/pg_setup_apt.log); the Postgres test will be skipped"
fi
exit 0
