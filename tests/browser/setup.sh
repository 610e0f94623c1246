#!/usr/bin/env bash
# Installs what the console's browser tests need: Debian's chromium (when
# missing) and playwright-core from package-lock.json (which downloads no
# browser). tests/browser.rs runs the tests themselves.
set -euo pipefail
cd "$(dirname "$0")"
# chromium, and a CJK font so the Chinese labels and SMS texts render in the
# screenshots (the page itself does not need it).
need=()
command -v "${CHROMIUM_PATH:-chromium}" >/dev/null 2>&1 || need+=(chromium)
[ -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ] || need+=(fonts-wqy-microhei)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
"${CHROMIUM_PATH:-chromium}" --version 2>/dev/null || true
npm ci --no-audit --no-fund
