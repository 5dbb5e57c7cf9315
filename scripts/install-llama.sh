#!/usr/bin/env bash
# Build llama-cpp-python from source once per (version, CMAKE_ARGS) and install it into a venv.
#
# Why not plain `pip install`: pip caches the wheel it builds under the package version alone, so
# changing CMAKE_ARGS (CPU -> CUDA, or the flags below) silently reinstalls the old build. We keep
# our own wheel cache keyed by the flags instead.
#
# CPU builds add -mno-amx-int8: ggml's AMX int8 kernels (enabled by -march=native on Xeon Sapphire
# Rapids and newer) segfault in llama-cpp-python 0.3.36 on such CPUs; AVX-512 and AVX2 paths are
# kept. For an NVIDIA GPU set CMAKE_ARGS="-DGGML_CUDA=on" (see docs/planning.md).
#
# usage: scripts/install-llama.sh VENV_PYTHON LLAMA_VERSION
set -euo pipefail
python=$1
version=$2
cmake_args=${CMAKE_ARGS:-"-DCMAKE_C_FLAGS=-mno-amx-int8 -DCMAKE_CXX_FLAGS=-mno-amx-int8"}
cache_root=${GEMMA_SERVE_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gemma-serve/wheels}
key=$(printf '%s\n%s\n%s\n' "$version" "$cmake_args" "$(uname -m)" | sha256sum | cut -c1-16)
wheel_dir=$cache_root/llama-cpp-python-$version-$key

if ! ls "$wheel_dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "Building llama-cpp-python $version from source (CMAKE_ARGS: $cmake_args)."
    echo "This takes about 4-8 minutes on 2 cores, once per machine."
    tmp=$(mktemp -d)
    CMAKE_ARGS=$cmake_args CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
        "$python" -m pip wheel --no-cache-dir --no-deps --no-binary llama-cpp-python \
        -w "$tmp" "llama-cpp-python==$version"
    mkdir -p "$wheel_dir"
    mv "$tmp"/llama_cpp_python-*.whl "$wheel_dir"/
    rm -rf "$tmp"
fi
# --force-reinstall: a same-version build with other flags may already be installed.
"$python" -m pip install --quiet --force-reinstall --no-deps "$wheel_dir"/llama_cpp_python-*.whl
