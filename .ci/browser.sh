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
    bash "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh" Chromium chromium chromium-driver || return 1
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
