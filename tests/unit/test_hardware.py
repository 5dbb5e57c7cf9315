"""The GPU probe through NVML's real failure on a machine without an NVIDIA driver, and the
`gemma-serve plan` command for hardware that is not present."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from server.hardware import probe, simulated
from server.settings import parse_size

pytestmark = pytest.mark.skipif(
    os.path.exists("/proc/driver/nvidia"), reason="this machine has an NVIDIA driver"
)


def test_no_driver_means_cpu_mode_not_a_crash() -> None:
    machine = probe()  # pynvml's own NVMLError_LibraryNotFound, caught
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


def test_plan_for_a_24_gib_gpu_picks_the_27b() -> None:
    result = plan_cli("--gpu-memory", "24GiB")
    assert result.returncode == 0, result.stderr
    assert (
        "pick: gemma-3-27b-it-qat, 16384 tokens of context, all layers on the GPU, "
        "4 requests at once" in result.stdout
    )
    assert "why: gemma-3-27b-it-qat is the largest model that fits" in result.stdout
    for model in ("gemma-3-270m", "gemma-3-1b-it-qat", "gemma-3-4b-it-qat", "gemma-3-12b-it-qat"):
        assert model in result.stdout


def test_plan_for_an_8_gib_gpu_as_json() -> None:
    result = plan_cli("--gpu-memory", "8GiB", "--json")
    data = json.loads(result.stdout)
    assert data["pick"]["model"] == "gemma-3-4b-it-qat"
    assert data["pick"]["ctx"] == 32768
    fits = {row["model"]: row["fits"] for row in data["candidates"]}
    assert fits["gemma-3-12b-it-qat"] is False and fits["gemma-3-4b-it-qat"] is True


def test_plan_without_a_gpu_picks_the_bundled_model() -> None:
    result = plan_cli()
    assert "GPUs: none (no NVIDIA driver found" in result.stdout
    assert "pick: gemma-3-270m, 8192 tokens of context, on the CPU" in result.stdout


def test_plan_for_two_gpus_splits_the_model() -> None:
    data = json.loads(plan_cli("--gpu-memory", "24GiB", "--gpu-memory", "24GiB", "--json").stdout)
    assert data["pick"]["tensor_split"] == [0.5, 0.5]


def test_plan_with_a_bad_size_is_one_line() -> None:
    result = plan_cli("--gpu-memory", "lots")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "gemma-serve: error: not a memory size: 'lots' (try 24GiB or 8000MiB)"
    ]
