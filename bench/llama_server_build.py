"""llama.cpp's own `llama-server`, built once from the llama.cpp that llama-cpp-python vendors.

Optional (`bench.py --llama-server`): it shows what continuous batching in C++ reaches on the same
machine, with the very llama.cpp sources gemma-serve runs on. The sdist of the pinned
llama-cpp-python (`pip download --no-binary :all: --no-deps`) carries them under
`vendor/llama.cpp`; only the `llama-server` target is built (static libraries, no web UI, no
network fetches), niced, with the same `-mno-amx-int8` flags as scripts/install-llama.sh, and the
binary is cached under ~/.cache/gemma-serve/bench/ keyed by version and flags.

    .venv/bin/python bench/llama_server_build.py        # build (or find) it and print its path
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

log = logging.getLogger("bench")

CMAKE_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_NATIVE=ON",
    # As scripts/install-llama.sh: ggml's AMX int8 kernels crash on Sapphire Rapids in this version.
    "-DCMAKE_C_FLAGS=-mno-amx-int8",
    "-DCMAKE_CXX_FLAGS=-mno-amx-int8",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
]


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "gemma-serve" / "bench"


def binary_path(version: str) -> Path:
    key = hashlib.sha256(
        "\n".join([version, platform.machine(), *CMAKE_FLAGS]).encode()
    ).hexdigest()[:16]
    return cache_dir() / f"llama-server-{version}-{key}" / "llama-server"


def _niced() -> None:
    os.nice(10)


def ensure_binary(version: str | None = None) -> Path:
    """The cached llama-server for this llama-cpp-python version, built first if missing."""
    version = version or metadata.version("llama-cpp-python")
    target = binary_path(version)
    if target.exists():
        return target
    log.info("building llama-server from llama-cpp-python %s's sources (once; minutes)", version)
    with tempfile.TemporaryDirectory(prefix="llama-server-build-") as tmp:
        work = Path(tmp)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-binary",
                ":all:",
                "--no-deps",
                "-d",
                str(work),
                f"llama-cpp-python=={version}",
            ],
            check=True,
        )
        sdist = next(work.glob("llama_cpp_python-*.tar.gz"))
        with tarfile.open(sdist) as archive:
            if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12: refuse unsafe members
                archive.extractall(work, filter="data")
            else:
                archive.extractall(work)  # our own pinned download
        source = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
        build = work / "build"
        jobs = str(os.cpu_count() or 1)
        subprocess.run(
            ["cmake", "-S", str(source), "-B", str(build), *CMAKE_FLAGS],
            check=True,
            preexec_fn=_niced,
        )
        subprocess.run(
            ["cmake", "--build", str(build), "--target", "llama-server", "-j", jobs],
            check=True,
            preexec_fn=_niced,
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(build / "bin" / "llama-server", target)
    log.info("llama-server cached at %s", target)
    return target


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    print(ensure_binary())
