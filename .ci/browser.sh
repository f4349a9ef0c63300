#!/usr/bin/env bash
# Make sure a headless-capable Chromium is at /usr/bin/chromium for tests/test_dashboard_browser.py,
# installing the Debian packages `chromium` and `chromium-driver` if it is missing. The test
# drives it with Playwright through its executable path: no browser is ever downloaded.
#
# Use either way:   source .ci/browser.sh     or     bash .ci/browser.sh
# Needs root (or password-less sudo) and apt-get only when the browser is missing.

_ift_have_chromium() {
    [ -x /usr/bin/chromium ]
}

_ift_ensure_chromium() {
    if _ift_have_chromium; then
        echo "== Chromium present ($(/usr/bin/chromium --version 2>/dev/null || echo /usr/bin/chromium))"
        return 0
    fi
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo="sudo -n"
        else
            echo "error: Chromium is missing and installing it needs root (apt-get install -y chromium chromium-driver)" >&2
            return 1
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: Chromium is missing and apt-get is not available to install it" >&2
        return 1
    fi
    echo "== installing Chromium (Debian packages chromium, chromium-driver)"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq || return 1
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver || return 1
    if ! _ift_have_chromium; then
        echo "error: installed chromium but found no /usr/bin/chromium" >&2
        return 1
    fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    # executed
    _ift_ensure_chromium
    exit $?
else
    # sourced: keep the caller's shell alive on failure but report it as the status of `source`
    _ift_ensure_chromium
fi
