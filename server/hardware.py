"""What GPUs this machine has, through NVIDIA's NVML (the library behind nvidia-smi).

`GpuProbe` wraps an NVML module: `pynvml`, imported lazily here and nowhere else, or in tests a
fake with the same functions reporting real cards' figures (the seam Ollama's scheduler has in
its injected GPU lister), so the success path is tested on a machine without a GPU. No driver, no
GPU or any NVML error means CPU mode: one line saying why, never a crash, because the server must
still start on a laptop without an NVIDIA card.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, replace
from typing import Any

from server.setting_values import parse_size


@dataclass(frozen=True)
class Device:
    """One GPU as the hardware probe saw it (or as `--gpu-memory` describes it)."""

    name: str
    total: int
    free: int
    # Compute capability x 10 (86 for 8.6); None where unknown (a simulated card).
    compute_capability: int | None = None
    uuid: str | None = None  # NVML's "GPU-..." id, which CUDA_VISIBLE_DEVICES also takes


def below_architectures(devices: list[Device], archs: tuple[int, ...]) -> list[Device]:
    """The cards older than the lowest CUDA architecture the build has kernels for: llama.cpp
    would abort on them with "no kernel image is available"."""
    if not archs:
        return []
    return [
        device
        for device in devices
        if device.compute_capability is not None and device.compute_capability < min(archs)
    ]


@dataclass(frozen=True)
class Hardware:
    devices: list[Device]
    driver: str | None = None
    cuda: str | None = None  # the newest CUDA version the driver supports, e.g. "12.4"
    note: str | None = None  # why there is no GPU, when there is none
    # A GPU is there but NVML fails (driver upgraded without a reboot, driver not loaded): what
    # to do. Said as a warning, never a quiet start on the CPU.
    failing: str | None = None


@dataclass(frozen=True)
class GpuMemory:
    index: int
    name: str
    used: int  # bytes, by every process (NVML's figure, as nvidia-smi shows)
    total: int


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class GpuProbe:
    """The GPUs as one NVML module reports them. `nvml` is the module (default: pynvml)."""

    def __init__(self, nvml: Any = None) -> None:
        self._nvml = nvml
        self._open = False
        self._lock = threading.Lock()

    def _module(self) -> Any:
        if self._nvml is None:
            import pynvml

            self._nvml = pynvml
        return self._nvml

    def hardware(self) -> Hardware:
        """Every NVIDIA GPU's name, memory and compute capability, with the driver and CUDA
        versions; no devices and a note saying why when NVML cannot tell."""
        try:
            nvml = self._module()
        except ImportError:
            return Hardware([], note="the nvidia-ml-py package is not installed")
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            if "Library Not Found" in str(exc):  # no NVIDIA driver installed: a machine without
                return Hardware([], note=f"no NVIDIA driver found ({exc})")
            return Hardware([], note=f"NVML failed ({exc})", failing=failing_gpu(str(exc)))
        try:
            driver = _text(nvml.nvmlSystemGetDriverVersion())
            cuda_raw = int(nvml.nvmlSystemGetCudaDriverVersion())
            devices = [self._device(nvml, i) for i in range(nvml.nvmlDeviceGetCount())]
        except nvml.NVMLError as exc:
            failed = f"NVML failed while reading the GPUs ({exc})"
            return Hardware([], note=failed, failing=failing_gpu(str(exc)))
        finally:
            with contextlib.suppress(nvml.NVMLError):
                nvml.nvmlShutdown()
        note = None if devices else "the NVIDIA driver reports no GPU"
        return Hardware(devices, driver, f"{cuda_raw // 1000}.{cuda_raw % 1000 // 10}", note)

    @staticmethod
    def _device(nvml: Any, index: int) -> Device:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
        major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
        return Device(
            _text(nvml.nvmlDeviceGetName(handle)),
            int(memory.total),
            int(memory.free),
            compute_capability=int(major) * 10 + int(minor),
            uuid=_text(nvml.nvmlDeviceGetUUID(handle)),
        )

    def memory_in_use(self) -> list[GpuMemory]:
        """Each GPU's memory in use now, for /metrics; empty without NVML or a GPU (never
        raises). Blocking: call it off the event loop. NVML stays initialised between calls
        (until `close`), so a scrape is a few reads, not a driver initialisation."""
        try:
            nvml = self._module()
        except ImportError:
            return []
        with self._lock:
            try:
                if not self._open:
                    nvml.nvmlInit()
                    self._open = True
                found = []
                for index in range(nvml.nvmlDeviceGetCount()):
                    handle = nvml.nvmlDeviceGetHandleByIndex(index)
                    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                    name = _text(nvml.nvmlDeviceGetName(handle))
                    found.append(GpuMemory(index, name, int(memory.used), int(memory.total)))
                return found
            except Exception:  # NVMLError and its library-not-found variants: no figures
                return []

    def close(self) -> None:
        with self._lock:
            if self._open:
                with contextlib.suppress(Exception):
                    self._nvml.nvmlShutdown()
            self._open = False


def failing_gpu(error: str) -> str:
    """What to do about an NVIDIA driver that is installed but fails (NVML's message)."""
    if "mismatch" in error.lower():
        return (
            f"the NVIDIA driver fails ({error}): it was upgraded and the old one is still "
            "loaded; reboot"
        )
    if "Not Loaded" in error:
        return (
            f"the NVIDIA driver is installed but not loaded ({error}): reboot, or sudo modprobe "
            "nvidia (see sudo dmesg | grep -i nvidia)"
        )
    return f"NVIDIA's driver library fails ({error}): check that nvidia-smi works, then restart"


def simulated(sizes: list[str]) -> Hardware:
    """Hardware described on the command line (`--gpu-memory 24GiB`), all of it free."""
    devices = [
        Device(f"GPU {i} (--gpu-memory {s})", parse_size(s), parse_size(s))
        for i, s in enumerate(sizes)
    ]
    return Hardware(devices)


def cuda_visible_devices(devices: list[Device], hidden: list[Device]) -> str:
    """CUDA_VISIBLE_DEVICES naming every device but `hidden`, by UUID where known (NVML's index
    otherwise), in NVML's order."""
    return ",".join(
        device.uuid or str(index) for index, device in enumerate(devices) if device not in hidden
    )


def hide_from_cuda(devices: list[Device], cuda_architectures: tuple[int, ...]) -> None:
    """Hide the cards below the build's lowest CUDA architecture from CUDA, before llama.cpp
    initialises it: with no kernels for such a card, llama.cpp aborts ("no kernel image is
    available") as soon as it runs one there. A CUDA_VISIBLE_DEVICES the user set is kept."""
    old = below_architectures(devices, cuda_architectures)
    if old and "CUDA_VISIBLE_DEVICES" not in os.environ:
        os.environ["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices(devices, old)


def as_cuda_sees_them(machine: Hardware, visible: str | None) -> Hardware:
    """The GPUs CUDA will show llama.cpp when the user set CUDA_VISIBLE_DEVICES (indices in
    NVML's order, which is CUDA's with CUDA_DEVICE_ORDER=PCI_BUS_ID, or UUIDs), in the order it
    lists them: the plan is for those. CUDA stops at the first entry it cannot match; a form not
    read here (MIG ids) leaves the list as NVML reports it."""
    if visible is None:
        return machine
    devices: list[Device] = []
    for token in (part.strip() for part in visible.split(",")):
        if token.isdigit() and int(token) < len(machine.devices):
            devices.append(machine.devices[int(token)])
        elif token.startswith("GPU-") and (
            found := [d for d in machine.devices if d.uuid and d.uuid.startswith(token)]
        ):
            devices.append(found[0])
        elif token.isdigit() or token.startswith("GPU-") or not token:
            break
        else:
            return machine
    if devices == machine.devices:
        return machine
    note = None if devices else f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
    return replace(machine, devices=devices, note=note or machine.note)
