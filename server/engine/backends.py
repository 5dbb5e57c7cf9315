"""What the installed llama.cpp build can offload to, read from llama.cpp itself.

llama-cpp-python exposes `llama_supports_gpu_offload()` and `llama_print_system_info()`; the ggml
backend registry (which backends are compiled in, which devices they found) is in the libggml it
loads, so it is read through ctypes from that same library. Importing this module loads
llama.cpp: the command line sets CUDA_DEVICE_ORDER before it does (see `cli.main`).
"""

from __future__ import annotations

import ctypes
from typing import Any

import llama_cpp
from llama_cpp import _ggml

from server.capability import LlamaBuild, parse_system_info

# enum ggml_backend_dev_type (ggml-backend.h)
_DEVICE_TYPES = {0: "CPU", 1: "GPU", 2: "IGPU", 3: "ACCEL", 4: "META"}


def _declare(lib: Any) -> None:
    lib.ggml_backend_reg_count.restype = ctypes.c_size_t
    lib.ggml_backend_reg_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_reg_get.restype = ctypes.c_void_p
    lib.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_reg_name.restype = ctypes.c_char_p
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_name.restype = ctypes.c_char_p
    lib.ggml_backend_dev_description.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_description.restype = ctypes.c_char_p
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int


def _registry(lib: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(backend names, "name (type): description" of each device) from ggml's registry."""
    _declare(lib)
    backends = tuple(
        lib.ggml_backend_reg_name(lib.ggml_backend_reg_get(i)).decode()
        for i in range(lib.ggml_backend_reg_count())
    )
    devices = []
    for i in range(lib.ggml_backend_dev_count()):
        device = lib.ggml_backend_dev_get(i)
        kind = _DEVICE_TYPES.get(lib.ggml_backend_dev_type(device), "other")
        name = lib.ggml_backend_dev_name(device).decode()
        description = lib.ggml_backend_dev_description(device).decode()
        devices.append(f"{name} ({kind}): {description}")
    return backends, tuple(devices)


def llama_build() -> LlamaBuild:
    """The installed llama.cpp's GPU offload, backends, devices and feature flags."""
    # First: where backends are plugins, this is what loads them.
    gpu_offload = bool(llama_cpp.llama_supports_gpu_offload())
    system_info = llama_cpp.llama_print_system_info().decode(errors="replace").strip()
    try:
        backends, devices = _registry(_ggml.libggml)
    except AttributeError:  # a libggml without the registry functions: what the flags name
        backends, devices = tuple(parse_system_info(system_info)), ()
    return LlamaBuild(
        gpu_offload=gpu_offload,
        backends=backends,
        devices=devices,
        system_info=system_info,
        version=str(llama_cpp.__version__),
    )
