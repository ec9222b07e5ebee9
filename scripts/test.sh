#!/usr/bin/env bash
# Set up (idempotent), then run the test suite. `.ci/run` calls exactly this. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# The report test opens the page in headless Chromium (Debian's package); on a fresh root machine install it
# quietly. If that fails the test skips and says why.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "installing chromium (apt-get) for the report test..." >&2
  { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1; }; } ||
    echo "chromium could not be installed; the report's browser test will be skipped" >&2
fi
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
