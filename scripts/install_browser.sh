#!/usr/bin/env bash
# Headless Chromium + its WebDriver for the web-page test (tests/service/test_web_page.py), from Debian.
# Idempotent; needs root (or passwordless sudo) and the Debian archive. CI calls it before the slow tests.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
as_root=()
[ "$(id -u)" = 0 ] || as_root=(sudo -n)
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -q
"${as_root[@]}" apt-get install -y -q --no-install-recommends chromium chromium-driver
