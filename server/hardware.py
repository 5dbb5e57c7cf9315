"""What GPUs this machine has, through NVIDIA's NVML (the library behind nvidia-smi).

pynvml is imported here and nowhere else. No driver, no GPU or any NVML error means CPU mode:
one log line saying why, never a crash, because the server must still start on a laptop without
an NVIDIA card.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from server.planner import Device
from server.settings import parse_size

log = logging.getLogger("gemma_serve.hardware")


@dataclass(frozen=True)
class Hardware:
    devices: list[Device]
    driver: str | None = None
    cuda: str | None = None
    note: str | None = None  # why there is no GPU, when there is none


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def probe() -> Hardware:
    """Every NVIDIA GPU's name, total and free memory, with the driver and CUDA versions."""
    try:
        import pynvml
    except ImportError:
        return Hardware([], note="the nvidia-ml-py package is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return Hardware([], note=f"no NVIDIA driver found ({exc})")
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda_raw = int(pynvml.nvmlSystemGetCudaDriverVersion())
        devices = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            devices.append(
                Device(_text(pynvml.nvmlDeviceGetName(handle)), int(memory.total), int(memory.free))
            )
    except pynvml.NVMLError as exc:
        return Hardware([], note=f"NVML failed while reading the GPUs ({exc})")
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()
    note = None if devices else "the NVIDIA driver reports no GPU"
    return Hardware(devices, driver, f"{cuda_raw // 1000}.{cuda_raw % 1000 // 10}", note)


def simulated(sizes: list[str]) -> Hardware:
    """Hardware described on the command line (`--gpu-memory 24GiB`), all of it free."""
    devices = [
        Device(f"GPU {i} (--gpu-memory {s})", parse_size(s), parse_size(s))
        for i, s in enumerate(sizes)
    ]
    return Hardware(devices)


@dataclass(frozen=True)
class GpuMemory:
    index: int
    name: str
    used: int  # bytes, by every process (NVML's figure, as nvidia-smi shows)
    total: int


def memory_in_use() -> list[GpuMemory]:
    """Each GPU's memory in use now, for /metrics; empty without NVML or a GPU (never raises)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except (ImportError, Exception):  # pynvml.NVMLError and its library-not-found variants
        return []
    try:
        found = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = _text(pynvml.nvmlDeviceGetName(handle))
            found.append(GpuMemory(index, name, int(memory.used), int(memory.total)))
        return found
    except pynvml.NVMLError:
        return []
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()
