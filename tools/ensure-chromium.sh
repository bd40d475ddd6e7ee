#!/usr/bin/env bash
# The app's browser tests drive Debian's headless Chromium (no browser download is possible);
# they fail, never skip, without it. Install it when missing and we may (root + apt-get).
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
else
    echo "make test: chromium is missing; install it (sudo apt-get install chromium) for the browser tests" >&2
fi
