#!/usr/bin/env bash
# Create .venv with Python 3.11 and install refinevla with its test extras. Idempotent: a second run
# reuses the environment unless pyproject.toml or the constraints changed.
#   REFINEVLA_CONSTRAINTS  constraints file (default constraints-cpu.txt: the CPU torch 2.13.0 wheel).
#                          Set it to "" on GPU workers to get the CUDA build of torch.
#   PYTHON                 interpreter to build the venv from (default: python3.11, else python3 if it is 3.11)
set -euo pipefail
cd "$(dirname "$0")/.."

constraints=${REFINEVLA_CONSTRAINTS-constraints-cpu.txt}
key=$(cat pyproject.toml ${constraints:+"$constraints"} | sha256sum | cut -c1-16)
stamp=".venv/.installed-$key"
if [ -f "$stamp" ]; then
  echo "setup: reusing .venv (up to date)"
  exit 0
fi

py=${PYTHON:-}
if [ -z "$py" ]; then
  if command -v python3.11 >/dev/null; then py=python3.11; else py=python3; fi
fi
if ! "$py" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "setup: refinevla needs Python 3.11 (found $("$py" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$py" -m venv .venv
echo "setup: installing dependencies into .venv (a few minutes the first time; log: .venv/install.log)"
if ! .venv/bin/python -m pip install ${constraints:+-c "$constraints"} -e '.[test]' >.venv/install.log 2>&1; then
  grep -v "^WARNING: Location" .venv/install.log | tail -40 >&2
  echo "setup: pip install failed (full log: .venv/install.log)" >&2
  exit 1
fi
rm -f .venv/.installed-*
touch "$stamp"
echo "setup: done"
