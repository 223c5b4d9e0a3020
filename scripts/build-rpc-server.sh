#!/usr/bin/env bash
# Build llama.cpp's RPC server (ggml-rpc-server, formerly rpc-server) from the llama.cpp
# sources vendored in the llama-cpp-python source distribution that spec is pinned to, so
# that it speaks the same RPC protocol as the client inside spec's llama-cpp-python.
# Run it on every host that is to hold part of a target (see README, "A target over
# several machines"); it needs cmake, a C++ compiler and pip (to fetch the sdist).
#
# Usage: scripts/build-rpc-server.sh [OUT_DIR]          (default: build/rpc-server)
# Environment:
#   PYTHON           interpreter used to run pip download (default: python3)
#   LLAMA_CPP_SDIST  a local llama_cpp_python-X.Y.Z.tar.gz to use instead of `pip download`
#   JOBS             parallel compile jobs (default: number of cores)
#   CMAKE_ARGS       extra cmake arguments: -DGGML_CUDA=on on a host with an NVIDIA GPU, ...
#
# Idempotent. About 3 minutes on 2 cores (only ggml and the server are compiled).
# The last line of output is the server's path; start it with e.g.
#   ggml-rpc-server -H 0.0.0.0 -p 50052      (no authentication: trusted networks only)
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/build/rpc-server}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
python="${PYTHON:-python3}"
jobs="${JOBS:-$(nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 2)}"

# The pin, not whatever is installed: the server must match the client spec runs with.
version="$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' "$root/pyproject.toml" | head -n1)"
if [ -z "$version" ]; then
    echo "build-rpc-server: cannot read the llama-cpp-python pin from pyproject.toml" >&2
    exit 1
fi

bin="$out/build/bin/ggml-rpc-server"
stamp="$out/VERSION"
if [ -x "$bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$version${CMAKE_ARGS:+ $CMAKE_ARGS}" ]; then
    echo "build-rpc-server: llama.cpp's RPC server from llama-cpp-python $version is already built" >&2
    echo "$bin"
    exit 0
fi

tarball="${LLAMA_CPP_SDIST:-}"
for dl in "$out/dl" "$root/build/reference/dl"; do
    if [ -z "$tarball" ] && [ -f "$dl/llama_cpp_python-$version.tar.gz" ]; then
        tarball="$dl/llama_cpp_python-$version.tar.gz"
    fi
done
if [ -z "$tarball" ]; then
    echo "build-rpc-server: downloading the llama-cpp-python $version source distribution" >&2
    mkdir -p "$out/dl"
    "$python" -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation \
        --dest "$out/dl" "llama-cpp-python==$version" >&2 \
        || "$python" -m pip download --quiet --no-deps --no-binary :all: \
            --dest "$out/dl" "llama-cpp-python==$version" >&2
    tarball="$out/dl/llama_cpp_python-$version.tar.gz"
fi
if [ ! -f "$tarball" ]; then
    echo "build-rpc-server: source distribution not found: $tarball" >&2
    exit 1
fi

src="$out/src"
rm -rf "$src"
mkdir -p "$src"
tar -xzf "$tarball" -C "$src" --strip-components=1
llama="$src/vendor/llama.cpp"
if [ ! -f "$llama/tools/rpc/rpc-server.cpp" ]; then
    echo "build-rpc-server: $tarball has no vendored llama.cpp with tools/rpc/rpc-server.cpp" >&2
    exit 1
fi

echo "build-rpc-server: configuring llama.cpp (llama-cpp-python $version) in $out/build" >&2
# shellcheck disable=SC2086
cmake -S "$llama" -B "$out/build" -DCMAKE_BUILD_TYPE=Release -DGGML_RPC=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF ${CMAKE_ARGS:-} >&2
echo "build-rpc-server: compiling with $jobs jobs" >&2
cmake --build "$out/build" --config Release -j "$jobs" --target ggml-rpc-server >&2
echo "$version${CMAKE_ARGS:+ $CMAKE_ARGS}" > "$stamp"
echo "$bin"
