#!/usr/bin/env bash
# Build llama.cpp's reference speculative decoder (llama-speculative-simple) and its plain
# decoder (llama-completion) from the llama.cpp sources vendored in the llama-cpp-python
# source distribution that spec is pinned to, so that `spec bench --reference` compares
# against the very same llama.cpp revision that spec itself runs on.
#
# Usage: scripts/build-reference.sh [OUT_DIR]          (default: build/reference)
# Environment:
#   PYTHON           interpreter whose llama-cpp-python version is used (default: python3)
#   LLAMA_CPP_SDIST  a local llama_cpp_python-X.Y.Z.tar.gz to use instead of `pip download`
#   JOBS             parallel compile jobs (default: number of cores)
#   CMAKE_ARGS       extra cmake arguments (e.g. -DGGML_CUDA=on)
#   WITH_SERVER=1    also build llama-server (to compare `spec serve` with it); printed third
#
# Idempotent: a second run with the same version finds the binaries and only prints their paths.
# Takes about 10 minutes on 2 cores. The last two lines of output are the binary paths.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
out="${1:-$root/build/reference}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
python="${PYTHON:-python3}"
jobs="${JOBS:-$(nproc 2>/dev/null || sysctl -n hw.ncpu 2>/dev/null || echo 2)}"

version="$("$python" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))' 2>/dev/null || true)"
if [ -z "$version" ]; then
    # Not installed in that interpreter: fall back to the pin in pyproject.toml.
    version="$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' "$root/pyproject.toml" | head -n1)"
fi
if [ -z "$version" ]; then
    echo "build-reference: cannot tell which llama-cpp-python version to build from" >&2
    exit 1
fi

bin="$out/build/bin"
stamp="$out/VERSION"
targets="llama-speculative-simple llama-completion"
server=OFF
if [ "${WITH_SERVER:-0}" = 1 ]; then
    targets="$targets llama-server"
    server=ON
fi
built=1
for t in $targets; do
    [ -x "$bin/$t" ] || built=0
done
if [ "$built" = 1 ] && [ "$(cat "$stamp" 2>/dev/null)" = "$version" ]; then
    echo "build-reference: llama.cpp from llama-cpp-python $version is already built" >&2
    for t in $targets; do echo "$bin/$t"; done
    exit 0
fi

src="$out/src"
tarball="${LLAMA_CPP_SDIST:-}"
if [ -z "$tarball" ]; then
    tarball="$(ls "$out"/dl/llama_cpp_python-"$version".tar.gz 2>/dev/null || true)"
fi
if [ -z "$tarball" ]; then
    echo "build-reference: downloading the llama-cpp-python $version source distribution" >&2
    mkdir -p "$out/dl"
    # --no-build-isolation keeps pip from installing the sdist's build backend just to read
    # its metadata; we only want the archive.
    "$python" -m pip download --quiet --no-deps --no-binary :all: --no-build-isolation \
        --dest "$out/dl" "llama-cpp-python==$version" >&2 \
        || "$python" -m pip download --quiet --no-deps --no-binary :all: \
            --dest "$out/dl" "llama-cpp-python==$version" >&2
    tarball="$out/dl/llama_cpp_python-$version.tar.gz"
fi
if [ ! -f "$tarball" ]; then
    echo "build-reference: source distribution not found: $tarball" >&2
    exit 1
fi

rm -rf "$src"
mkdir -p "$src"
tar -xzf "$tarball" -C "$src" --strip-components=1
llama="$src/vendor/llama.cpp"
if [ ! -f "$llama/examples/speculative-simple/speculative-simple.cpp" ]; then
    echo "build-reference: $tarball has no vendored llama.cpp with examples/speculative-simple" >&2
    exit 1
fi

echo "build-reference: configuring llama.cpp (llama-cpp-python $version) in $out/build" >&2
# LLAMA_CURL/LLAMA_OPENSSL off: the reference reads local GGUF files only and needs no network code.
# shellcheck disable=SC2086
cmake -S "$llama" -B "$out/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=$server -DBUILD_SHARED_LIBS=OFF ${CMAKE_ARGS:-} >&2
echo "build-reference: compiling with $jobs jobs (about 10 minutes on 2 cores)" >&2
cmake --build "$out/build" --config Release -j "$jobs" --target $targets >&2
echo "$version" > "$stamp"
for t in $targets; do echo "$bin/$t"; done
