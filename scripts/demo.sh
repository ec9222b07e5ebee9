#!/usr/bin/env bash
# Set up (idempotent), then run the whole pipeline on the embedded default: bundled sample data, offline
# teacher, tiny model. Extra arguments go to `refinevla run` (e.g. --workdir DIR, --finetune.max-steps 200).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/refinevla run "$@"
