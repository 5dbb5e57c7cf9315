"""scripts/detect-build.sh, run on a fake machine (tests/deploy/fake_machine.py): no
`nvidia-smi`, one failing (driver not loaded, or upgraded without a reboot), GPUs with and
without a toolkit, toolkits too old or too new for the card or the driver, explicit choices and
given CMAKE_ARGS. Each case asserts the flags chosen and the one-line reason. Nothing is compiled.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from .fake_machine import (
    CPU_FLAGS,
    DETECT,
    INSTALL,
    MISMATCH,
    NO_DRIVER,
    SM_12_8,
    SM_13_0,
    Machine,
    cuda_flags,
    detect,
    executable,
    fake_venv,
)


def test_no_nvidia_smi_builds_for_the_cpu_even_with_a_toolkit(machine: Machine) -> None:
    machine.nvcc()  # like this machine: an nvcc, no GPU
    found = detect(machine)
    assert found.code == 0
    assert found.choice == {"build": "cpu", "cmake_args": CPU_FLAGS}
    assert found.message == "llama.cpp build: CPU: no NVIDIA GPU found (no nvidia-smi on PATH)"


@pytest.mark.parametrize(
    ("smi_error", "fix"),
    [
        (MISMATCH, "the NVIDIA driver was upgraded but the old one is still loaded: reboot"),
        (NO_DRIVER, "the NVIDIA driver is not loaded"),
    ],
    ids=["driver-library-mismatch", "driver-not-loaded"],
)
def test_a_failing_nvidia_smi_stops_and_keeps_the_installed_build(
    machine: Machine, smi_error: str, fix: str
) -> None:
    """A driver upgraded without a reboot: nvidia-smi is there and fails. Nothing is built (the
    working CUDA build stays), the line says why and what fixes it; GPU=cpu still builds."""
    machine.no_driver(smi_error)
    machine.nvcc()
    found = detect(machine)
    assert found.code == 3 and found.choice == {}
    assert found.message.startswith(
        f"llama.cpp build: stopped, nothing built: nvidia-smi fails ({smi_error}): {fix}"
    )
    assert "the installed build is kept" in found.message
    assert "GEMMA_SERVE_BUILD=cpu (make serve GPU=cpu)" in found.message
    assert len(found.message.splitlines()) == 1
    assert detect(machine, GEMMA_SERVE_BUILD="cpu").choice["build"] == "cpu"

    # install-llama.sh stops too, and the venv keeps what it had.
    python, log = fake_venv(machine)
    record = python.parent.parent / ".llama-build"
    record.write_text("a CUDA build\n")
    result = subprocess.run(
        [str(INSTALL), str(python), "0.3.36"],
        env=machine.env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert record.read_text() == "a CUDA build\n" and not log.exists()


def test_driver_too_old_to_report_compute_capability(machine: Machine) -> None:
    error = 'Field "compute_cap" is not a valid field to query.'
    executable(machine.bin / "nvidia-smi", f"echo '{error}'\nexit 2\n")
    machine.nvcc()
    found = detect(machine)
    assert found.choice["build"] == "cpu"
    assert found.message.endswith(f"(nvidia-smi: {error}): upgrade the NVIDIA driver")


def test_warnings_from_nvidia_smi_are_not_gpus(machine: Machine) -> None:
    warning = "WARNING: infoROM is corrupted at gpu 0000:01:00.0"
    machine.gpus(("NVIDIA GeForce RTX 3090", "8.6"), warning=warning)
    machine.nvcc()
    found = detect(machine)
    assert found.choice["cmake_args"] == cuda_flags("86-real")
    assert "for NVIDIA GeForce RTX 3090 (compute 8.6): " in found.message
    assert "WARNING" not in found.message


def test_gpu_without_toolkit_says_what_to_install(machine: Machine) -> None:
    machine.gpus(("NVIDIA GeForce RTX 3090", "8.6"), driver_cuda="12.4")
    found = detect(machine)
    assert found.code == 0
    assert found.choice == {"build": "cpu", "cmake_args": CPU_FLAGS}
    assert found.message == (
        "llama.cpp build: CPU: found NVIDIA GeForce RTX 3090 (compute 8.6) but no CUDA toolkit "
        f"(no nvcc on PATH nor in {machine.cuda_home}/bin); for the GPU install the CUDA toolkit "
        "(NVIDIA's apt package cuda-toolkit-12-8: a CUDA 12 build runs on this driver's CUDA "
        "12.4; add NVIDIA's apt repository first: https://developer.nvidia.com/cuda-downloads) "
        "and run this again"
    )
    assert len(found.message.splitlines()) == 1


@pytest.mark.skipif(
    not Path("/usr/local/cuda/bin/nvcc").exists(), reason="no CUDA toolkit in /usr/local/cuda"
)
def test_sudo_path_finds_the_real_toolkit_in_usr_local_cuda(machine: Machine) -> None:
    """What `sudo` leaves: PATH without /usr/local/cuda/bin, no CUDA_HOME. This machine's real
    toolkit is found where NVIDIA's packages put it (the GPU is faked: there is none here)."""
    release = subprocess.run(
        ["/usr/local/cuda/bin/nvcc", "--version"], capture_output=True, text=True, check=True
    ).stdout
    version = release.split("release ")[1].split(",")[0]
    machine.gpus(("NVIDIA GeForce RTX 3090", "8.6"), driver_cuda=version)
    env = machine.env()
    del env["CUDA_HOME"]
    result = subprocess.run([str(DETECT)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "nvcc=/usr/local/cuda/bin/nvcc" in result.stdout.splitlines()
    assert f"cuda_version={version}" in result.stdout.splitlines()
    assert "CMAKE_CUDA_ARCHITECTURES=86-real" in result.stderr


def test_pascal_card_without_toolkit_is_sent_to_cuda_12(machine: Machine) -> None:
    """The driver runs CUDA 13, whose compiler no longer targets sm_61: name the last that does."""
    machine.gpus(("NVIDIA GeForce GTX 1080 Ti", "6.1"), driver_cuda="13.0")
    found = detect(machine)
    assert found.choice["build"] == "cpu"
    assert "(NVIDIA's apt package cuda-toolkit-12-9: CUDA 13 cannot compile for sm_61; " in (
        found.message
    )


# What NVIDIA's apt repositories carry (Ubuntu 24.04's starts at 12.5; CUDA 12.7 was never
# released, though 565 drivers report "CUDA Version: 12.7"): see docs/planning.md.
KNOWN_TOOLKITS = {"12-5", "12-6", "12-8", "12-9", "13-0"}


@pytest.mark.parametrize(
    ("driver_cuda", "capability", "package"),
    [
        ("12.2", "8.6", "12-8"),
        ("12.4", "8.6", "12-8"),  # a 550 driver: no 12-4 in Ubuntu 24.04's repository
        ("12.7", "8.9", "12-8"),  # a 565 driver: there is no cuda-toolkit-12-7
        ("12.8", "12.0", "12-8"),
        ("13.0", "8.6", "13-0"),
        ("13.1", "6.1", "12-9"),
    ],
)
def test_the_toolkit_named_is_one_nvidias_repository_has(
    machine: Machine, driver_cuda: str, capability: str, package: str
) -> None:
    machine.gpus(("NVIDIA GPU", capability), driver_cuda=driver_cuda)
    found = detect(machine)
    named = re.findall(r"cuda-toolkit-(\d+-\d+)", found.message)
    assert named == [package] and package in KNOWN_TOOLKITS, found.message


def test_gpu_and_toolkit_build_for_that_gpu_only(machine: Machine) -> None:
    machine.gpus(("NVIDIA GeForce RTX 3090", "8.6"))
    nvcc = machine.nvcc()
    found = detect(machine)
    assert found.code == 0
    assert found.choice == {
        "build": "cuda",
        "cmake_args": cuda_flags("86-real"),
        "nvcc": str(nvcc),
        "cuda_version": "12.8",
    }
    assert found.message == (
        f"llama.cpp build: CUDA 12.8 ({nvcc}) for NVIDIA GeForce RTX 3090 (compute 8.6): "
        "CMAKE_CUDA_ARCHITECTURES=86-real"
    )


def test_several_gpus_one_architecture_each(machine: Machine) -> None:
    machine.gpus(
        ("NVIDIA GeForce RTX 4090", "8.9"),
        ("NVIDIA GeForce RTX 3060", "8.6"),
        ("NVIDIA GeForce RTX 3060", "8.6"),
    )
    machine.nvcc()
    found = detect(machine)
    assert found.choice["cmake_args"] == cuda_flags("86-real;89-real")
    assert found.message.endswith(
        "for 2x NVIDIA GeForce RTX 3060 (compute 8.6), NVIDIA GeForce RTX 4090 (compute 8.9): "
        "CMAKE_CUDA_ARCHITECTURES=86-real;89-real"
    )


def test_toolkit_off_path_is_found_in_cuda_home(machine: Machine) -> None:
    """`sudo` resets PATH; NVIDIA's packages install nvcc in /usr/local/cuda/bin, off PATH."""
    machine.gpus(("NVIDIA RTX A6000", "8.6"))
    nvcc = machine.nvcc(on_path=False)
    found = detect(machine)
    assert found.choice["build"] == "cuda" and found.choice["nvcc"] == str(nvcc)


def test_a_card_the_toolkit_cannot_compile_for_is_left_out(machine: Machine) -> None:
    machine.gpus(
        ("NVIDIA GeForce RTX 4090", "8.9"), ("Tesla V100-PCIE-16GB", "7.0"), driver_cuda="13.0"
    )
    machine.nvcc(release="13.0", codes=SM_13_0)
    found = detect(machine)
    assert found.choice["cmake_args"] == cuda_flags("89-real")
    assert "warning: CUDA 13.0 cannot compile for sm_70" in found.message


# A GPU and a toolkit, but no CUDA build possible: (GPU, driver's CUDA, nvcc release and the
# architectures it lists, what the reason says).
IMPOSSIBLE = {
    "toolkit too new for the card": (
        ("NVIDIA GeForce GTX 1080", "6.1"),
        "13.0",
        ("13.0", SM_13_0),
        "cannot compile for sm_61 (it lists sm_75 to sm_121): install a CUDA 12 toolkit "
        "(cuda-toolkit-12-9, the last for sm_50 to sm_72)",
    ),
    "toolkit too old for the card": (
        ("NVIDIA GeForce RTX 5090", "12.0"),
        "12.8",
        ("12.6", SM_12_8.replace(" sm_100 sm_101 sm_120", "")),
        "cannot compile for sm_120 (it lists sm_50 to sm_90): install a newer CUDA toolkit "
        "(cuda-toolkit-12-8 or later for sm_120, RTX 50)",
    ),
    "card older than CUDA 12": (
        ("Tesla K80", "3.7"),
        "12.4",
        ("12.4", SM_12_8.replace(" sm_100 sm_101 sm_120", "")),
        "found Tesla K80 (compute 3.7), older than any CUDA 12 toolkit compiles for "
        "(sm_50 and newer)",
    ),
    "toolkit newer than the driver": (
        ("NVIDIA GeForce RTX 3090", "8.6"),
        "12.4",
        ("13.0", SM_13_0),
        "is newer than this driver runs (CUDA 12.4): upgrade the NVIDIA driver, or install "
        "cuda-toolkit-12-8",
    ),
}


@pytest.mark.parametrize("case", IMPOSSIBLE)
def test_no_cuda_build_possible_falls_back_or_fails_when_asked(machine: Machine, case: str) -> None:
    gpu, driver_cuda, (release, codes), reason = IMPOSSIBLE[case]
    machine.gpus(gpu, driver_cuda=driver_cuda)
    machine.nvcc(release=release, codes=codes)
    found = detect(machine)
    assert found.code == 0 and found.choice == {"build": "cpu", "cmake_args": CPU_FLAGS}
    assert found.message.startswith("llama.cpp build: CPU: ") and found.message.endswith(reason)
    asked = detect(machine, GEMMA_SERVE_BUILD="cuda")
    assert asked.code == 1 and asked.choice == {}
    assert asked.message.startswith("llama.cpp build: GEMMA_SERVE_BUILD=cuda, but ")
    assert asked.message.endswith(reason)


def test_explicit_cpu_wins_over_a_gpu(machine: Machine) -> None:
    machine.gpus(("NVIDIA GeForce RTX 3090", "8.6"))
    machine.nvcc()
    found = detect(machine, GEMMA_SERVE_BUILD="cpu")
    assert found.choice == {"build": "cpu", "cmake_args": CPU_FLAGS}
    assert found.message == "llama.cpp build: CPU (GEMMA_SERVE_BUILD=cpu)"


def test_explicit_cuda_without_toolkit_is_an_error(machine: Machine) -> None:
    machine.gpus(("NVIDIA GeForce RTX 3090", "8.6"))
    found = detect(machine, GEMMA_SERVE_BUILD="cuda")
    assert found.code == 1 and found.choice == {}
    assert found.message.startswith("llama.cpp build: GEMMA_SERVE_BUILD=cuda, but found NVIDIA")
    assert "install the CUDA toolkit" in found.message


def test_explicit_cuda_without_gpu_needs_the_architectures(machine: Machine) -> None:
    nvcc = machine.nvcc()
    found = detect(machine, GEMMA_SERVE_BUILD="cuda")
    assert found.code == 1
    assert "set GEMMA_SERVE_CUDA_ARCHITECTURES" in found.message
    # A build for other machines: the list given, no GPU needed.
    archs = "75-real;89-real"
    found = detect(machine, GEMMA_SERVE_BUILD="cuda", GEMMA_SERVE_CUDA_ARCHITECTURES=archs)
    assert found.code == 0
    assert found.choice["cmake_args"] == cuda_flags("75-real;89-real")
    assert found.choice["nvcc"] == str(nvcc)


def test_given_cmake_args_win(machine: Machine) -> None:
    machine.gpus(("NVIDIA GeForce RTX 3090", "8.6"))
    machine.nvcc()
    found = detect(machine, CMAKE_ARGS="-DGGML_BLAS=ON", GEMMA_SERVE_BUILD="cuda")
    assert found.choice == {"build": "custom", "cmake_args": "-DGGML_BLAS=ON"}
    assert found.message == "llama.cpp build: CMAKE_ARGS given, used as is: -DGGML_BLAS=ON"
    # A CUDA build given by hand still reports the toolkit, for the wheel cache key.
    found = detect(machine, CMAKE_ARGS="-DGGML_CUDA=on")
    assert found.choice["cmake_args"] == "-DGGML_CUDA=on"
    assert found.choice["cuda_version"] == "12.8"


def test_unknown_choice_is_refused(machine: Machine) -> None:
    found = detect(machine, GEMMA_SERVE_BUILD="gpu")
    assert found.code == 2
    assert found.message == (
        "llama.cpp build: GEMMA_SERVE_BUILD=gpu is not one of cpu, cuda, auto (make: GPU=cpu|cuda)"
    )


def test_the_lowest_of_given_architectures_is_their_minimum_not_the_first(
    machine: Machine,
) -> None:
    machine.gpus(("NVIDIA GeForce RTX 4090", "8.9"), driver_cuda="13.0")  # no toolkit
    found = detect(
        machine, GEMMA_SERVE_BUILD="cuda", GEMMA_SERVE_CUDA_ARCHITECTURES="89-real;61-real"
    )
    assert found.code == 1
    assert "apt package cuda-toolkit-12-9: CUDA 13 cannot compile for sm_61" in found.message


def test_a_given_architecture_the_toolkit_cannot_compile_is_refused_in_one_line(
    machine: Machine,
) -> None:
    machine.gpus(("NVIDIA GeForce RTX 4090", "8.9"), driver_cuda="13.0")
    machine.nvcc(release="13.0", codes=SM_13_0)
    archs = "89-real;61-real"
    asked = detect(machine, GEMMA_SERVE_BUILD="cuda", GEMMA_SERVE_CUDA_ARCHITECTURES=archs)
    assert asked.code == 1 and asked.choice == {}
    assert asked.message.endswith(
        "cannot compile for sm_61, named in GEMMA_SERVE_CUDA_ARCHITECTURES (it lists sm_75 to "
        "sm_121): remove it from the list or install a CUDA 12 toolkit (cuda-toolkit-12-9, the "
        "last for sm_50 to sm_72)"
    )
    assert "\n" not in asked.message
    # the toolkit compiles for every one given: built as given
    found = detect(machine, GEMMA_SERVE_BUILD="cuda", GEMMA_SERVE_CUDA_ARCHITECTURES="89-real;75")
    assert found.code == 0 and found.choice["cmake_args"] == cuda_flags("89-real;75")
