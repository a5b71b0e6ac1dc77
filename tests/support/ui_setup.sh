#!/bin/sh
# Installs what tests/e2e/test_ui_browser.py needs, idempotently:
#   - Debian's Chromium (apt-get install chromium chromium-driver), unless /usr/bin/chromium exists;
#   - Playwright for Python in the active (or given) virtualenv, unless importable.
# The browser is Debian's: never `playwright install` (no browser download).
#
# Usage: sh tests/support/ui_setup.sh [PYTHON]
#   PYTHON: the virtualenv's interpreter; default: $VIRTUAL_ENV/bin/python, else the repo's
#   .venv/bin/python, else python3.
#
# Never fails the test run: when something cannot be installed it prints a warning and exits 0;
# the browser test then skips and says why.
set -u

warn() { echo "ui_setup: warning: $*" >&2; }

here=$(cd "$(dirname "$0")/../.." && pwd)
python=${1:-}
if [ -z "$python" ]; then
    if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
        python="$VIRTUAL_ENV/bin/python"
    elif [ -x "$here/.venv/bin/python" ]; then
        python="$here/.venv/bin/python"
    else
        python=python3
    fi
fi

# --- Chromium ------------------------------------------------------------------------------------
if [ -x /usr/bin/chromium ]; then
    :
elif ! command -v apt-get >/dev/null 2>&1; then
    warn "no /usr/bin/chromium and no apt-get: install Chromium yourself; the UI browser test will be skipped"
else
    if [ "$(id -u)" = 0 ]; then
        sudo=""
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo="sudo -n"
    else
        sudo=none
    fi
    if [ "$sudo" = none ]; then
        warn "not root and no password-less sudo: cannot apt-get install chromium; the UI browser test will be skipped"
    else
        echo "ui_setup: installing chromium chromium-driver (apt-get)" >&2
        if ! { $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q \
            && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
                chromium chromium-driver; } >/tmp/ui_setup_apt.log 2>&1; then
            warn "apt-get failed (see /tmp/ui_setup_apt.log); the UI browser test will be skipped"
        fi
    fi
fi

# --- Playwright for Python -------------------------------------------------------------------------
if "$python" -c "import playwright.sync_api" >/dev/null 2>&1; then
    :
elif ! "$python" -m pip --version >/dev/null 2>&1; then
    warn "$python has no pip: cannot install playwright; the UI browser test will be skipped"
else
    echo "ui_setup: installing playwright into $("$python" -c 'import sys; print(sys.prefix)')" >&2
    if ! "$python" -m pip install --quiet "playwright>=1.44" >&2; then
        warn "pip install playwright failed; the UI browser test will be skipped"
    fi
fi
exit 0
