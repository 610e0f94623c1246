#!/usr/bin/env bash
# Installs the test SMTP server (aiosmtpd) into tests/smtpd/.venv.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
