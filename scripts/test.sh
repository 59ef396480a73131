#!/usr/bin/env bash
# Installs everything a fresh machine lacks, then lints (ruff: undefined names, unused imports,
# bug-prone patterns), type-checks atlas/ and flows/ (mypy, settings in pyproject.toml) and runs
# the whole test suite (CPU, offline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# Headless Chromium for the browser test of the app (Debian package); the test skips, saying
# why, where it cannot be installed.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  export DEBIAN_FRONTEND=noninteractive
  { $SUDO apt-get install -y -q chromium chromium-driver \
      || { $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium chromium-driver; }; } \
    >/dev/null 2>&1 || echo "note: Chromium could not be installed; the browser test will be skipped"
fi
.venv/bin/ruff check .
.venv/bin/mypy
export HF_HUB_OFFLINE=1 PREFECT_SERVER_ANALYTICS_ENABLED=false
exec .venv/bin/python -m pytest "$@"
