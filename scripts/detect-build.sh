#!/usr/bin/env bash
# Choose how llama-cpp-python is built on this machine: for its NVIDIA GPUs with CUDA, or for the
# CPU. Used by scripts/install-llama.sh (so by `make serve`, `make test`, the Docker builders and
# the systemd install); tests/deploy/test_build_detection.py runs it with fake nvidia-smi and nvcc.
#
# In order, the first that applies decides:
#   1. CMAKE_ARGS set: used as given (anything llama.cpp's CMake accepts).
#   2. GEMMA_SERVE_BUILD=cpu: the CPU. GEMMA_SERVE_BUILD=cuda: CUDA, and anything that stops a
#      CUDA build below (no toolkit, no GPU to build for) is an error instead of a CPU build.
#   3. Otherwise (GEMMA_SERVE_BUILD unset or "auto"): CUDA when nvidia-smi lists a GPU and a CUDA
#      toolkit that can compile for it is installed, else the CPU, saying why in one line.
#
# A CUDA build compiles for the GPUs present only (their compute capabilities, deduplicated, as
# `86-real`: machine code, no PTX), or for GEMMA_SERVE_CUDA_ARCHITECTURES when set (e.g.
# "86-real;89-real", the same variable the CUDA image sets). An explicit list rather than CMake's
# "native": it is printed here, it is part of the wheel cache key, and a machine with no GPU
# visible at build time (a container build) would otherwise get garbage. Machine code only also
# means a toolkit newer than the driver (same major version) still runs: CUDA's minor-version
# compatibility covers SASS, not PTX, which the older driver could not JIT-compile.
#
# nvcc is looked for on PATH, then in $CUDA_HOME/bin (or $CUDA_PATH/bin; by default
# /usr/local/cuda/bin), where NVIDIA's packages install it without adding it to PATH, and where
# `sudo`, which resets PATH, would otherwise lose it.
#
# Output on stdout, one KEY=value per line, for install-llama.sh:
#   build=cpu|cuda|custom   cmake_args=...   nvcc=PATH (CUDA only)   cuda_version=12.8 (CUDA only)
# and on stderr the reason, one line starting "llama.cpp build: ". Exit 0, or 1 when
# GEMMA_SERVE_BUILD=cuda cannot be honoured, 2 for a GEMMA_SERVE_BUILD that is not cpu/cuda/auto,
# 3 when nvidia-smi is installed but fails (a driver upgraded without a reboot: "Driver/library
# version mismatch"; a driver not loaded): a GPU is there and broken for now, so nothing is built
# and install-llama.sh keeps the installed build, instead of replacing a working CUDA build with
# a CPU one. GEMMA_SERVE_BUILD=cpu (make: GPU=cpu) builds for the CPU regardless.
set -euo pipefail

say() { echo "llama.cpp build: $*" >&2; }

# CPU code: -march=native (GGML_NATIVE, llama.cpp's default) minus AMX int8. ggml's AMX int8
# kernels (enabled by -march=native on Xeon Sapphire Rapids and newer) segfault in
# llama-cpp-python 0.3.36 on such CPUs; AVX-512 and AVX2 paths are kept. x86 only: the flag is an
# error for other compilers' targets.
cpu_flags=""
case "$(uname -m)" in
    x86_64 | i?86) cpu_flags="-DCMAKE_C_FLAGS=-mno-amx-int8 -DCMAKE_CXX_FLAGS=-mno-amx-int8" ;;
esac

find_nvcc() {
    local candidate
    if candidate=$(command -v nvcc 2>/dev/null); then
        echo "$candidate"
        return 0
    fi
    candidate=${CUDA_HOME:-${CUDA_PATH:-/usr/local/cuda}}/bin/nvcc
    if [ -x "$candidate" ]; then
        echo "$candidate"
        return 0
    fi
    return 1
}

# "Cuda compilation tools, release 12.8, V12.8.93" -> 12.8
# (`|| true`: a failing nvcc is reported by the empty answer, not by pipefail ending the script.)
nvcc_release() { { "$1" --version 2>/dev/null || true; } | sed -n 's/.*release \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n1; }

emit() { # build cmake_args [nvcc cuda_version]
    echo "build=$1"
    echo "cmake_args=$2"
    if [ -n "${3:-}" ]; then
        echo "nvcc=$3"
        echo "cuda_version=${4:-}"
    fi
}

choice=${GEMMA_SERVE_BUILD:-auto}
case "$choice" in
    cpu | cuda | auto) ;;
    *)
        say "GEMMA_SERVE_BUILD=$choice is not one of cpu, cuda, auto (make: GPU=cpu|cuda)"
        exit 2
        ;;
esac

# --- 1. CMAKE_ARGS given --------------------------------------------------------------------------
if [ -n "${CMAKE_ARGS:-}" ]; then
    if [[ "$CMAKE_ARGS" =~ -DGGML_CUDA=(on|ON|On|1|yes|YES|true|TRUE) ]] && nvcc=$(find_nvcc); then
        say "CMAKE_ARGS given, used as is: $CMAKE_ARGS"
        emit custom "$CMAKE_ARGS" "$nvcc" "$(nvcc_release "$nvcc")"
    else
        say "CMAKE_ARGS given, used as is: $CMAKE_ARGS"
        emit custom "$CMAKE_ARGS"
    fi
    exit 0
fi

# --- 2./3. choose ---------------------------------------------------------------------------------
# A CUDA build is impossible: an error when asked for, the CPU (and the reason) otherwise.
no_cuda() {
    if [ "$choice" = cuda ]; then
        say "GEMMA_SERVE_BUILD=cuda, but $1"
        exit 1
    fi
    say "CPU: $1"
    emit cpu "$cpu_flags"
    exit 0
}

if [ "$choice" = cpu ]; then
    say "CPU (GEMMA_SERVE_BUILD=cpu)"
    emit cpu "$cpu_flags"
    exit 0
fi

# The GPUs: "NVIDIA GeForce RTX 3090, 8.6" per line. compute_cap is queryable since driver 510.
gpus=""
driver_cuda=""
smi_error=""
if command -v nvidia-smi >/dev/null 2>&1; then
    if gpus=$(nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader 2>&1); then
        # The header's "CUDA Version: 12.4": the newest CUDA this driver runs.
        driver_cuda=$({ nvidia-smi 2>/dev/null || true; } | sed -n 's/.*CUDA Version: *\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n1)
    else
        smi_error=$(echo "$gpus" | head -n1)
        gpus=""
    fi
fi

# nvidia-smi present but failing: stop, saying why and what fixes it ("not a valid field" is a
# working driver too old for the query: that one is said below).
case "$smi_error" in
    "" | *"not a valid field"*) ;;
    *)
        case "$smi_error" in
            *[Mm]ismatch*) fix="the NVIDIA driver was upgraded but the old one is still loaded: reboot" ;;
            *"couldn't communicate"* | *"Driver Not Loaded"* | *"driver not loaded"*)
                fix="the NVIDIA driver is not loaded (a kernel update without its module, Secure Boot refusing it; see sudo dmesg | grep -i nvidia): reboot, or sudo modprobe nvidia" ;;
            *) fix="fix the driver until nvidia-smi works" ;;
        esac
        say "stopped, nothing built: nvidia-smi fails ($smi_error): $fix; the installed build is kept. To build for the CPU instead: GEMMA_SERVE_BUILD=cpu (make serve GPU=cpu)"
        exit 3
        ;;
esac

if [ -n "${GEMMA_SERVE_CUDA_ARCHITECTURES:-}" ]; then
    # An explicit list (a build for other machines): no GPU needed here, only the toolkit.
    archs=$GEMMA_SERVE_CUDA_ARCHITECTURES
    if [ "$choice" != cuda ] && [ -z "$gpus" ]; then
        no_cuda "no NVIDIA GPU found (${smi_error:-no nvidia-smi}); GEMMA_SERVE_CUDA_ARCHITECTURES applies to CUDA builds (GEMMA_SERVE_BUILD=cuda)"
    fi
    found="the GPUs named in GEMMA_SERVE_CUDA_ARCHITECTURES"
else
    if [ -z "$gpus" ]; then
        case "$smi_error" in
            *"not a valid field"*) no_cuda "the NVIDIA driver is too old to report the GPUs' compute capability (nvidia-smi: $smi_error): upgrade the NVIDIA driver" ;;
        esac
        if [ "$choice" = cuda ]; then
            no_cuda "no NVIDIA GPU found to build for (no nvidia-smi on PATH): set GEMMA_SERVE_CUDA_ARCHITECTURES, e.g. 86-real for an RTX 30 card"
        fi
        no_cuda "no NVIDIA GPU found (no nvidia-smi on PATH)"
    fi
    # Only the GPU lines (nvidia-smi may add warnings, e.g. about an infoROM).
    gpus=$(echo "$gpus" | grep -E ', *[0-9]+\.[0-9]+ *$' || true)
    if [ -z "$gpus" ]; then
        no_cuda "nvidia-smi did not report the GPUs' compute capability (driver older than 510?): upgrade the NVIDIA driver"
    fi
    archs=$(echo "$gpus" | sed -n 's/.*, *\([0-9][0-9]*\)\.\([0-9][0-9]*\) *$/\1\2-real/p' | sort -n -u | paste -sd';' -)
    found=$(echo "$gpus" | sed 's/^ *//; s/, *\([0-9.]*\) *$/ (compute \1)/' | sort | uniq -c |
        sed 's/^ *1 //; s/^ *\([0-9]*\) \(.*\)/\1x \2/' | paste -sd',' - | sed 's/,/, /g')
fi

# The lowest architecture to build, as a number: 61 for "89-real;61-real" (a list given in
# GEMMA_SERVE_CUDA_ARCHITECTURES may be in any order; "native" and the like have no number).
lowest=""
for arch in ${archs//;/ }; do
    number=${arch%%[!0-9]*}
    if [ -n "$number" ] && { [ -z "$lowest" ] || [ "$number" -lt "$lowest" ]; }; then
        lowest=$number
    fi
done
if [ -n "$lowest" ] && [ "$lowest" -lt 50 ] && [ "${archs//;/}" = "$archs" ]; then
    no_cuda "found $found, older than any CUDA 12 toolkit compiles for (sm_50 and newer)"
fi
# The toolkit to install: one NVIDIA's apt repositories carry (Ubuntu 24.04's starts at 12.5, and
# there never was a CUDA 12.7, though 565 drivers report "CUDA Version: 12.7"). This build is
# machine code only, and CUDA's minor-version compatibility runs a CUDA 12.x build on any CUDA 12
# driver (525 or newer), so 12.8 (which also compiles for RTX 50 cards) suits every 12.x driver;
# 12.9 is the last release that compiles for Pascal and Volta (CUDA 13 dropped sm_50 to sm_72).
toolkit_for() { # driver_cuda lowest_arch -> "package[: why]"
    local major=${1%%.*}
    if [ -z "$1" ]; then
        echo "cuda-toolkit-12-8"
    elif [ "$major" -ge 13 ] && [ "${2:-75}" -lt 75 ]; then
        echo "cuda-toolkit-12-9: CUDA 13 cannot compile for sm_$2"
    elif [ "$major" -ge 13 ]; then
        echo "cuda-toolkit-13-0, for the driver's CUDA $1"
    elif [ "$major" -eq 12 ]; then
        echo "cuda-toolkit-12-8: a CUDA 12 build runs on this driver's CUDA $1"
    else
        echo "cuda-toolkit-12-8, after upgrading the NVIDIA driver to 525 or newer (it runs CUDA $1)"
    fi
}

if ! nvcc=$(find_nvcc); then
    package=$(toolkit_for "$driver_cuda" "$lowest")
    no_cuda "found $found but no CUDA toolkit (no nvcc on PATH nor in ${CUDA_HOME:-${CUDA_PATH:-/usr/local/cuda}}/bin); for the GPU install the CUDA toolkit (NVIDIA's apt package $package; add NVIDIA's apt repository first: https://developer.nvidia.com/cuda-downloads) and run this again"
fi
cuda_version=$(nvcc_release "$nvcc")
if [ -z "$cuda_version" ]; then
    no_cuda "$nvcc --version does not name a CUDA release"
fi

# A toolkit of a newer major version than the driver builds code the driver cannot run.
if [ -n "$driver_cuda" ] && [ "${cuda_version%%.*}" -gt "${driver_cuda%%.*}" ]; then
    no_cuda "CUDA toolkit $cuda_version ($nvcc) is newer than this driver runs (CUDA $driver_cuda): upgrade the NVIDIA driver, or install $(toolkit_for "$driver_cuda" "$lowest" | cut -d: -f1 | cut -d, -f1)"
fi

# Architectures this nvcc cannot compile for (CUDA 13 dropped Pascal and Volta, 12.8 added
# Blackwell). `--list-gpu-code` (CUDA 11+) prints sm_75 sm_80 ... A GPU found here that it cannot
# compile for is left out; one named in GEMMA_SERVE_CUDA_ARCHITECTURES is an error said here, not
# deep in CMake.
if supported=$("$nvcc" --list-gpu-code 2>/dev/null | tr -s ' ' '\n'); then
    kept=""
    dropped=""
    for arch in ${archs//;/ }; do
        code=${arch%-real}
        code=${code%-virtual}
        if ! [[ "$code" =~ ^[0-9]+[a-z]?$ ]] || echo "$supported" | grep -qx "sm_$code"; then
            kept="$kept${kept:+;}$arch"
        else
            dropped="$dropped${dropped:+, }sm_$code"
        fi
    done
    listed="it lists $(echo "$supported" | head -n1) to $(echo "$supported" | tail -n1)"
    hint="a newer CUDA toolkit (cuda-toolkit-12-8 or later for sm_120, RTX 50)"
    if [ "${lowest:-75}" -lt 75 ]; then
        hint="a CUDA 12 toolkit (cuda-toolkit-12-9, the last for sm_50 to sm_72)"
    fi
    if [ -n "$dropped" ] && [ -n "${GEMMA_SERVE_CUDA_ARCHITECTURES:-}" ]; then
        no_cuda "CUDA $cuda_version ($nvcc) cannot compile for $dropped, named in GEMMA_SERVE_CUDA_ARCHITECTURES ($listed): remove it from the list or install $hint"
    fi
    if [ -z "$kept" ]; then
        no_cuda "found $found, but CUDA $cuda_version ($nvcc) cannot compile for $dropped ($listed): install $hint"
    fi
    if [ -n "$dropped" ]; then
        say "warning: CUDA $cuda_version cannot compile for $dropped; those GPUs are left out of the build"
    fi
    archs=$kept
fi

say "CUDA $cuda_version ($nvcc) for $found: CMAKE_CUDA_ARCHITECTURES=$archs"
emit cuda "-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$archs${cpu_flags:+ $cpu_flags}" "$nvcc" "$cuda_version"
