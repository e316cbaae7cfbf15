#!/usr/bin/env bash
# Idempotent: Debian's Chromium for the browser tests of the review UI (tests/test_review_ui.py).
# Playwright (a dev dependency, from PyPI) drives /usr/bin/chromium; its own browser download is never
# used. Needs root or sudo the first time; does nothing when Chromium is already there.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
as_root=()
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null; then
        as_root=(sudo)
    else
        echo "setup_browser.sh: /usr/bin/chromium is missing; install Debian's chromium package as root" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -q
"${as_root[@]}" apt-get install -y -q chromium chromium-driver
/usr/bin/chromium --version
