"""The GPU probe: with a fake NVML module reporting real cards' figures (the success path, on any
machine), through NVML's real failure on a machine without an NVIDIA driver, and the
`gemma-serve plan` command for hardware that is not present."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from server.hardware import (
    Device,
    GpuMemory,
    GpuProbe,
    as_cuda_sees_them,
    cuda_visible_devices,
    hide_from_cuda,
    simulated,
)
from server.setting_values import parse_size
from tests.nvml import GTX_1080, RTX_3090, RTX_4060_LAPTOP, FakeNvml

MiB = 1 << 20
NO_DRIVER_HERE = not os.path.exists("/proc/driver/nvidia")


def test_an_rtx_3090_as_nvml_reports_it() -> None:
    nvml = FakeNvml([RTX_3090])
    machine = GpuProbe(nvml).hardware()
    assert machine.devices == [
        Device("NVIDIA GeForce RTX 3090", 24576 * MiB, 24231 * MiB, 86, "GPU-5a1f3c5e-3090")
    ]
    assert (machine.driver, machine.cuda, machine.note) == ("550.54.14", "12.4", None)
    assert nvml.inits == nvml.shutdowns == 1


def test_two_gpus_in_nvml_order() -> None:
    machine = GpuProbe(FakeNvml([RTX_3090, RTX_4060_LAPTOP], cuda=12080)).hardware()
    assert [(d.name, d.total, d.compute_capability) for d in machine.devices] == [
        ("NVIDIA GeForce RTX 3090", 24576 * MiB, 86),
        ("NVIDIA GeForce RTX 4060 Laptop GPU", 8188 * MiB, 89),
    ]
    assert machine.cuda == "12.8"


@pytest.mark.parametrize(
    ("nvml", "note"),
    [
        (FakeNvml(init_error="NVML Shared Library Not Found"), "no NVIDIA driver found (NVML"),
        (FakeNvml([RTX_3090], read_error="Unknown Error"), "NVML failed while reading the GPUs"),
        (FakeNvml([]), "the NVIDIA driver reports no GPU"),
    ],
)
def test_nvml_failures_mean_no_gpu_and_a_note(nvml: FakeNvml, note: str) -> None:
    machine = GpuProbe(nvml).hardware()
    assert machine.devices == []
    assert machine.note and machine.note.startswith(note)


def test_memory_in_use_keeps_nvml_open_between_scrapes() -> None:
    nvml = FakeNvml([RTX_3090, RTX_4060_LAPTOP])
    probe = GpuProbe(nvml)
    for _ in range(3):
        assert probe.memory_in_use() == [
            GpuMemory(0, "NVIDIA GeForce RTX 3090", 345 * MiB, 24576 * MiB),
            GpuMemory(1, "NVIDIA GeForce RTX 4060 Laptop GPU", 325 * MiB, 8188 * MiB),
        ]
    assert (nvml.inits, nvml.shutdowns) == (1, 0)  # not an nvmlInit per scrape
    probe.close()
    assert nvml.shutdowns == 1


def test_memory_in_use_without_a_driver_is_empty() -> None:
    assert GpuProbe(FakeNvml(init_error="Driver Not Loaded")).memory_in_use() == []
    assert GpuProbe(FakeNvml([RTX_3090], read_error="GPU is lost")).memory_in_use() == []


def test_cards_below_the_architectures_are_hidden_from_cuda(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    devices = GpuProbe(FakeNvml([GTX_1080, RTX_3090])).hardware().devices
    assert cuda_visible_devices(devices, devices[:1]) == "GPU-5a1f3c5e-3090"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    hide_from_cuda(devices, (70, 75, 80, 86))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "GPU-5a1f3c5e-3090"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # the user's choice stands
    hide_from_cuda(devices, (70,))
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    hide_from_cuda(devices, (61, 86))  # every card has kernels: nothing hidden
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


@pytest.mark.skipif(not NO_DRIVER_HERE, reason="this machine has an NVIDIA driver")
def test_no_driver_means_cpu_mode_not_a_crash() -> None:
    machine = GpuProbe().hardware()  # pynvml's own NVMLError_LibraryNotFound, caught
    assert machine.devices == []
    assert machine.note and "no NVIDIA driver" in machine.note


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24GiB", 24 << 30),
        ("24", 24 << 30),
        ("8000MiB", 8000 << 20),
        ("16 GB", 16 * 10**9),
        ("1.5GiB", 3 << 29),
    ],
)
def test_sizes(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_bad_size_is_refused() -> None:
    with pytest.raises(ValueError, match="not a memory size"):
        parse_size("lots")


def test_simulated_gpus_are_all_free() -> None:
    machine = simulated(["24GiB", "12GiB"])
    assert [(d.total, d.free) for d in machine.devices] == [
        (24 << 30, 24 << 30),
        (12 << 30, 12 << 30),
    ]


def plan_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", "plan", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.process
def test_plan_for_a_24_gib_gpu_picks_the_27b() -> None:
    result = plan_cli("--gpu-memory", "24GiB")
    assert result.returncode == 0, result.stderr
    assert (
        "pick: gemma-3-27b-it-qat, 13312 tokens of context, all layers on the GPU, "
        "4 requests at once" in result.stdout
    )
    assert "why: gemma-3-27b-it-qat is the largest model that fits" in result.stdout
    assert "vision: gemma-3-27b-it-qat sees images; its projector" in result.stdout
    for model in ("gemma-3-270m", "gemma-3-1b-it-qat", "gemma-3-4b-it-qat", "gemma-3-12b-it-qat"):
        assert model in result.stdout


@pytest.mark.process
def test_plan_for_an_8_gib_gpu_as_json() -> None:
    result = plan_cli("--gpu-memory", "8GiB", "--json")
    data = json.loads(result.stdout)
    assert data["pick"]["model"] == "gemma-3-4b-it-qat"
    assert data["pick"]["ctx"] == 31744  # the vision projector's 0.9 GiB is in the plan
    assert data["pick"]["vision_bytes"] == 851_251_104 + 121 * (1 << 20)
    fits = {row["model"]: row["fits"] for row in data["candidates"]}
    assert fits["gemma-3-12b-it-qat"] is False and fits["gemma-3-4b-it-qat"] is True


@pytest.mark.process
@pytest.mark.skipif(not NO_DRIVER_HERE, reason="this machine has an NVIDIA driver")
def test_plan_without_a_gpu_picks_the_bundled_model() -> None:
    result = plan_cli()
    assert "GPUs: none (no NVIDIA driver found" in result.stdout
    assert "pick: gemma-3-270m, 8192 tokens of context, on the CPU" in result.stdout


@pytest.mark.process
def test_plan_for_two_gpus_splits_the_model() -> None:
    data = json.loads(plan_cli("--gpu-memory", "24GiB", "--gpu-memory", "24GiB", "--json").stdout)
    # the first GPU also holds the 27B's vision projector (0.92 GiB): a little less of the model
    assert data["pick"]["tensor_split"] == [0.4898, 0.5102]
    text_only = plan_cli("--gpu-memory", "24GiB", "--gpu-memory", "24GiB", "--no-vision", "--json")
    assert json.loads(text_only.stdout)["pick"]["tensor_split"] == [0.5, 0.5]


@pytest.mark.process
def test_plan_with_a_bad_size_is_one_line() -> None:
    result = plan_cli("--gpu-memory", "lots")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "gemma-serve: error: not a memory size: 'lots' (try 24GiB or 8000MiB)"
    ]


@pytest.mark.parametrize(
    ("visible", "names"),
    [
        (None, ["NVIDIA GeForce GTX 1080", "NVIDIA GeForce RTX 3090"]),
        ("1", ["NVIDIA GeForce RTX 3090"]),
        ("1,0", ["NVIDIA GeForce RTX 3090", "NVIDIA GeForce GTX 1080"]),  # CUDA's order is this
        ("GPU-5a1f3c5e", ["NVIDIA GeForce RTX 3090"]),  # a UUID prefix
        ("0,7,1", ["NVIDIA GeForce GTX 1080"]),  # CUDA stops at the first it cannot match
        ("", []),
        ("MIG-4f1c", ["NVIDIA GeForce GTX 1080", "NVIDIA GeForce RTX 3090"]),  # not read here
    ],
)
def test_a_cuda_visible_devices_set_by_the_user_narrows_the_gpus(
    visible: str | None, names: list[str]
) -> None:
    machine = as_cuda_sees_them(GpuProbe(FakeNvml([GTX_1080, RTX_3090])).hardware(), visible)
    assert [device.name for device in machine.devices] == names
    if not names:
        assert machine.note == "CUDA_VISIBLE_DEVICES='' hides every GPU"
