#!/usr/bin/env bash
# Install Debian packages for a CI prerequisite: bash .ci/apt-install.sh NAME PACKAGE...
# NAME is what the error messages call it. Needs root (or password-less sudo) and apt-get.
set -u
name=$1
shift
sudo=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo="sudo -n"
    else
        echo "error: $name is missing and installing it needs root (apt-get install -y $*)" >&2
        exit 1
    fi
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: $name is missing and apt-get is not available to install it" >&2
    exit 1
fi
echo "== installing $name (Debian packages $*)"
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq || exit 1
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
    || exit 1
