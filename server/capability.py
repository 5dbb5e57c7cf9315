"""What the installed llama.cpp build can offload to, as plain data.

`server/engine/backends.py` reads it from llama.cpp (the only place that imports llama_cpp); the
planner takes it beside the GPUs NVML reports, because NVML sees a card whether or not the build
can use it: a CPU-only llama-cpp-python on an RTX box must plan for the CPU and say how to fix it,
not download the 27B for a card it cannot offload to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The llama-cpp-python release pyproject.toml pins: the engine uses its low-level API.
LLAMA_CPP_PYTHON_PIN = "0.3.36"


def cuda_rebuild(version: str = "") -> str:
    """The command that gives a CPU-only installation a CUDA build: the Makefile's variable, or
    pip's own way for an installation made without the Makefile. pip rebuilds the exact version
    installed (the pin when unknown), not the newest release whose API the engine may not know,
    and `--no-deps` leaves every other package as it is."""
    return (
        'make serve GPU=cuda (or: CMAKE_ARGS="-DGGML_CUDA=on" pip install --force-reinstall '
        f"--no-deps --no-cache-dir llama-cpp-python=={version or LLAMA_CPP_PYTHON_PIN})"
    )


def parse_system_info(text: str) -> dict[str, dict[str, str]]:
    """llama.cpp's `llama_print_system_info()`, "CUDA : ARCHS = 860,890 | USE_GRAPHS = 1 |
    CPU : SSE3 = 1 | ...", as {backend: {feature: value}} in the order printed."""
    backends: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    for item in (part.strip() for part in text.split("|")):
        if not item:
            continue
        head, sep, rest = item.partition(" : ")
        if sep:  # "CPU : SSE3 = 1" starts a backend's features
            current = backends.setdefault(head.strip(), {})
            item = rest
        name, _, value = item.partition("=")
        if current is not None and name.strip():
            current[name.strip()] = value.strip()
    return backends


def parse_architectures(text: str, scale: int = 1) -> tuple[int, ...]:
    """CUDA architectures as compute capability x 10 (86 for 8.6), sorted, from CMake's list
    ("61;70;86-real;90a", as GEMMA_SERVE_CUDA_ARCHITECTURES holds it), or with `scale=10` from
    nvcc's __CUDA_ARCH_LIST__ as llama.cpp reports it ("610,700,860")."""
    found = set()
    for token in re.split(r"[;,\s]+", text.strip()):
        digits = re.match(r"\d+", token)
        if digits:
            found.add(int(digits.group()) // scale)
    return tuple(sorted(found))


def capability_text(value: int) -> str:
    """86 -> '8.6'."""
    return f"{value // 10}.{value % 10}"


@dataclass(frozen=True)
class LlamaBuild:
    """The llama.cpp that will run the model.

    `gpu_offload` is llama.cpp's own `llama_supports_gpu_offload()`: true when a GPU backend is
    compiled in *and* found a device (a CUDA build whose runtime sees no GPU says false).
    """

    gpu_offload: bool
    backends: tuple[str, ...] = ()  # ggml backends compiled in, e.g. ("CUDA", "CPU")
    devices: tuple[str, ...] = ()  # what those backends found, e.g. "CUDA0: NVIDIA GeForce ..."
    system_info: str = ""
    version: str = ""  # llama-cpp-python's version

    @property
    def features(self) -> dict[str, dict[str, str]]:
        return parse_system_info(self.system_info)

    @property
    def cuda_architectures(self) -> tuple[int, ...]:
        """The architectures the CUDA backend was compiled for (empty when not reported)."""
        return parse_architectures(self.features.get("CUDA", {}).get("ARCHS", ""), scale=10)

    def why_no_gpu(self) -> str:
        """Why this build cannot use an NVIDIA GPU (only meaningful when `gpu_offload` is false)."""
        if "CUDA" in self.backends:
            return (
                "this llama.cpp build has CUDA but its runtime finds no usable device (a driver "
                "older than the CUDA version it was built with?)"
            )
        return "this llama.cpp build is CPU-only"


# What `plan --gpu-memory` previews: the build a CUDA installation would have.
ASSUMED_CUDA_BUILD = LlamaBuild(gpu_offload=True, backends=("CUDA", "CPU"))
