#!/usr/bin/env bash
# Build llama-cpp-python from source once per build key and install it into a venv.
#
# The flags come from scripts/detect-build.sh: CUDA for the GPUs present when a CUDA toolkit is
# found, else the CPU, said in one line before anything is built. CMAKE_ARGS, or
# GEMMA_SERVE_BUILD=cpu|cuda, overrides the detection (see that script).
#
# Why not plain `pip install`: pip caches the wheel it builds under the package version alone, so
# changing CMAKE_ARGS (CPU -> CUDA) silently reinstalls the old build. We keep our own wheel cache,
# keyed by everything the compiled library depends on: the version, the flags, the machine, the
# OS release and its glibc, the Python ABI, and for a CUDA build the CUDA release (a wheel built
# on another base image, or against another CUDA runtime, would load the wrong libraries).
#
# The venv records the key of what it holds (VENV/.llama-build). A run with the same key installs
# nothing and leaves that file untouched: the Makefile runs this script every time and rebuilds
# what depends on the file only when it changed (a toolkit installed since, GPU=cuda, a new GPU).
#
# usage: scripts/install-llama.sh VENV_PYTHON LLAMA_VERSION
set -euo pipefail
here=$(dirname "$0")
python=$1
version=$2

detection=$("$here/detect-build.sh")
field() { sed -n "s/^$1=//p" <<<"$detection"; }
build=$(field build)
cmake_args=$(field cmake_args)
nvcc=$(field nvcc)
cuda_version=$(field cuda_version)
echo "llama.cpp build: CMAKE_ARGS=$cmake_args"

# shellcheck source=/dev/null
os_release=$(. /etc/os-release 2>/dev/null && echo "${ID:-unknown}-${VERSION_ID:-}") || os_release=unknown
libc=$(getconf GNU_LIBC_VERSION 2>/dev/null) || libc="no glibc"
abi=$("$python" -c 'import sys, sysconfig; print(sysconfig.get_config_var("SOABI") or sys.implementation.cache_tag)')
key_text=$(printf '%s\n' "llama-cpp-python $version" "CMAKE_ARGS $cmake_args" "machine $(uname -m)" \
    "os $os_release" "libc $libc" "python $abi" "cuda ${cuda_version:-none}")
key=$(sha256sum <<<"$key_text" | cut -c1-16)
cache_root=${GEMMA_SERVE_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gemma-serve/wheels}
case "$build" in
    cuda) label=cuda$cuda_version ;;
    *) label=$build${cuda_version:+-cuda$cuda_version} ;;
esac
wheel_dir=$cache_root/llama-cpp-python-$version-$label-$key
record=$(dirname "$(dirname "$python")")/.llama-build

if [ -f "$record" ] && [ "$(cat "$record")" = "$key_text" ]; then
    echo "llama.cpp build: llama-cpp-python $version with these flags is installed already"
    exit 0
fi

if ! ls "$wheel_dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "Building llama-cpp-python $version from source into $wheel_dir."
    if [ "$build" = cuda ]; then
        echo "A CUDA build takes longer than a CPU one (tens of minutes on a few cores), once per machine."
        # The toolkit may be off PATH (NVIDIA's packages; sudo resets PATH): show CMake the one
        # that was detected.
        PATH=$(dirname "$nvcc"):$PATH
        export CUDACXX=$nvcc PATH
    else
        echo "This takes about 4-8 minutes on 2 cores, once per machine."
    fi
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    CMAKE_ARGS=$cmake_args CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)} \
        "$python" -m pip wheel --no-cache-dir --no-deps --no-binary llama-cpp-python \
        -w "$tmp" "llama-cpp-python==$version"
    mkdir -p "$wheel_dir"
    mv "$tmp"/llama_cpp_python-*.whl "$wheel_dir"/
fi
# --force-reinstall: a same-version build with other flags may already be installed.
"$python" -m pip install --quiet --force-reinstall --no-deps "$wheel_dir"/llama_cpp_python-*.whl
printf '%s\n' "$key_text" >"$record"
