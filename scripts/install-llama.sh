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
# OS release and its glibc, the Python ABI, the CPU instruction sets the code uses, and for a
# CUDA build the CUDA release (a wheel built on another base image, or against another CUDA
# runtime, would load the wrong libraries; one built with -march=native on another CPU, a
# restored or network home directory, would die with SIGILL).
#
# The instruction sets are also written to the venv's record ("cpu needs ..."): the server reads
# them at start and refuses, in one line, a CPU that lacks one (server/build_record.py), instead
# of dying with SIGILL. A native build (llama.cpp's default) needs what the build CPU has; a
# GGML_NATIVE=OFF build (the Docker images) needs llama.cpp's x86 baseline: SSE4.2, AVX, AVX2,
# BMI2, FMA, F16C, minus those turned off in CMAKE_ARGS.
#
# Parallel compile jobs: CMAKE_BUILD_PARALLEL_LEVEL if set, else one per core but no more than
# the memory holds (a CUDA compile job takes up to ~4 GiB, a CPU one ~1 GiB: many cores and
# 32 GB would otherwise run out of memory). The compiler's progress is shown every 30 s.
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

# The x86 instruction sets the compiled code may use (cpuinfo's names). GEMMA_SERVE_CPUINFO: another
# cpuinfo file (the tests' fake CPUs).
cpu_needs() {
    case "$(uname -m)" in x86_64 | i?86) ;; *) return 0 ;; esac
    local flags wanted="" flag
    if [[ " $cmake_args " =~ [[:space:]]-DGGML_NATIVE=(OFF|off|Off|0|NO|no|FALSE|false)[[:space:]] ]]; then
        for flag in sse4_2 avx avx2 bmi2 fma f16c; do
            if ! [[ " $cmake_args " =~ -DGGML_${flag^^}=(OFF|off|Off|0|NO|no|FALSE|false)[[:space:]] ]] &&
                ! { [ "$flag" = sse4_2 ] && [[ " $cmake_args " =~ -DGGML_SSE42=(OFF|off|0)[[:space:]] ]]; }; then
                wanted="$wanted $flag"
            fi
        done
        echo "${wanted# }"
        return 0
    fi
    flags=$(sed -n 's/^flags[[:space:]]*:[[:space:]]*//p' "${GEMMA_SERVE_CPUINFO:-/proc/cpuinfo}" 2>/dev/null | head -n1)
    # What -march=native turns on, less AMX int8 (turned off, see detect-build.sh).
    tr ' ' '\n' <<<"$flags" | grep -Ex 'sse3|pni|ssse3|sse4_1|sse4_2|sse4a|avx|avx2|avx512.*|avx_vnni.*|fma|fma4|f16c|bmi1|bmi2|abm|lzcnt|popcnt|movbe|adx|aes|pclmulqdq|vpclmulqdq|vaes|gfni|sha_ni|amx_tile|amx_bf16|xop' |
        sort -u | paste -sd' ' -
}
needs=$(cpu_needs)
key_text=$(printf '%s\n' "llama-cpp-python $version" "CMAKE_ARGS $cmake_args" "machine $(uname -m)" \
    "os $os_release" "libc $libc" "python $abi" "cuda ${cuda_version:-none}" "cpu needs ${needs:-nothing known}")
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

# Compile jobs: one per core, no more than the memory holds (GiB per job: CUDA 4, CPU 1).
compile_jobs() {
    local cores per_job=1 memory_gib
    cores=$(nproc)
    if [ -n "$nvcc" ]; then per_job=4; fi
    memory_gib=$(($(getconf _PHYS_PAGES) * $(getconf PAGE_SIZE) / 1073741824))
    local fit=$(((memory_gib - 2) / per_job))
    if [ "$fit" -lt 1 ]; then fit=1; fi
    if [ "$fit" -lt "$cores" ]; then echo "$fit"; else echo "$cores"; fi
}

# pip's build output, shown as a line of progress every 30 s ("[123/456]" from ninja or CMake's
# "[ 27%]"), in full if the build fails.
show_progress() {
    local full=$1 started=$SECONDS last=$SECONDS line step="" pattern='\[ *([0-9]+/[0-9]+|[0-9]+%)\]'
    while IFS= read -r line; do
        printf '%s\n' "$line" >>"$full"
        if [[ $line =~ $pattern ]]; then
            step=${BASH_REMATCH[1]}
        fi
        if [ -n "$step" ] && [ $((SECONDS - last)) -ge "${GEMMA_SERVE_BUILD_PROGRESS:-30}" ]; then
            last=$SECONDS
            echo "llama.cpp build: compiling, step $step, $(((SECONDS - started) / 60)) min $(((SECONDS - started) % 60)) s so far"
        fi
    done
}

if ! ls "$wheel_dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "Building llama-cpp-python $version from source into $wheel_dir."
    parallel=${CMAKE_BUILD_PARALLEL_LEVEL:-$(compile_jobs)}
    if [ "$build" = cuda ]; then
        echo "A CUDA build takes longer than a CPU one (tens of minutes on a few cores), once per machine."
    else
        echo "This takes 6 to 7 minutes on 2 cores (measured on a fresh clone), longer on a busy machine; once per machine."
    fi
    echo "llama.cpp build: $parallel compile jobs ($(nproc) cores; CMAKE_BUILD_PARALLEL_LEVEL sets it)"
    if [ -n "$nvcc" ]; then
        # The toolkit may be off PATH (NVIDIA's packages; sudo resets PATH): show CMake the one
        # that was detected, for a detected CUDA build and for CMAKE_ARGS="-DGGML_CUDA=on" alike.
        PATH=$(dirname "$nvcc"):$PATH
        export CUDACXX=$nvcc PATH
    fi
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    build_started=$SECONDS
    if ! CMAKE_ARGS=$cmake_args CMAKE_BUILD_PARALLEL_LEVEL=$parallel \
        "$python" -m pip wheel --verbose --no-cache-dir --no-deps --no-binary llama-cpp-python \
        -w "$tmp" "llama-cpp-python==$version" 2>&1 | show_progress "$tmp/build.log"; then
        tail -n 60 "$tmp/build.log" >&2
        echo "llama.cpp build: the build failed (the last 60 lines of its output are above)" >&2
        exit 1
    fi
    mkdir -p "$wheel_dir"
    mv "$tmp"/llama_cpp_python-*.whl "$wheel_dir"/
    echo "llama.cpp build: built in $(((SECONDS - build_started) / 60)) min $(((SECONDS - build_started) % 60)) s"
fi
# --force-reinstall: a same-version build with other flags may already be installed.
"$python" -m pip install --quiet --force-reinstall --no-deps "$wheel_dir"/llama_cpp_python-*.whl
printf '%s\n' "$key_text" >"$record"
