"""A fake machine for the build scripts' tests: fake `nvidia-smi`, `nvcc` and venv `python`
executables in a temporary directory put first on PATH, and the scripts run against them.

`nvidia-smi` answers the query scripts/detect-build.sh makes (GPU names and compute
capabilities, the driver's CUDA version) or fails as it does without a driver; `nvcc` answers
`--version` and `--list-gpu-code`; the venv's `python` records what pip is asked to build and
install instead of compiling anything.
"""

from __future__ import annotations

import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

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
# llama.cpp's x86 baseline for GGML_NATIVE=OFF, as /proc/cpuinfo names the flags.
BASELINE = "sse4_2 avx avx2 fma f16c bmi2"
# nvidia-smi after a driver upgrade without a reboot (the old kernel module still loaded).
MISMATCH = "Failed to initialize NVML: Driver/library version mismatch"
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

    def no_driver(self, message: str = NO_DRIVER) -> None:
        """nvidia-smi installed and failing, with `message` (default: no driver loaded)."""
        executable(self.bin / "nvidia-smi", f'echo "{message}"\nexit 9\n')

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

    def cpu(
        self, cores: int, memory_gib: int, flags: str = "sse4_2 avx avx2 fma f16c bmi2"
    ) -> None:
        """`nproc`, the physical memory `getconf` reports, and /proc/cpuinfo's flags
        (GEMMA_SERVE_CPUINFO, see env())."""
        executable(self.bin / "nproc", f"echo {cores}\n")
        pages = memory_gib * (1 << 30) // 4096
        executable(
            self.bin / "getconf",
            f"""case "$1" in
_PHYS_PAGES) echo {pages} ;;
PAGE_SIZE) echo 4096 ;;
*) exec /usr/bin/getconf "$@" ;;
esac
""",
        )
        self.cpuinfo.write_text(f"processor\t: 0\nflags\t\t: fpu {flags}\n")

    @property
    def cpuinfo(self) -> Path:
        return self.root / "cpuinfo"

    def env(self, **extra: str) -> dict[str, str]:
        # /usr/bin:/bin for the shell tools; not /usr/local/bin (this machine has an nvcc there).
        return {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "CUDA_HOME": str(self.cuda_home),
            "HOME": str(self.root / "home"),
            **({"GEMMA_SERVE_CPUINFO": str(self.cpuinfo)} if self.cpuinfo.exists() else {}),
            "GEMMA_SERVE_BUILD_PROGRESS": "0",
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


def cuda_flags(archs: str) -> str:
    return f"-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES={archs} {CPU_FLAGS}".strip()


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
    # What a verbose build prints: ninja's steps among other lines.
    for step in 1 2 3 4; do
        echo "  [$step/4] Building C object ggml-$step.c.o"; echo "  cmake: note"; sleep 0.3
    done
    touch "$2/llama_cpp_python-0.3.36-cp312-cp312-linux_x86_64.whl"
    echo "wheel CMAKE_ARGS=$CMAKE_ARGS CUDACXX=${{CUDACXX:-}}" >>"$log"
    echo "jobs $CMAKE_BUILD_PARALLEL_LEVEL PATH=$PATH" >>"$log" ;;
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
