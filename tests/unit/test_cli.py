"""The command line: flags and GEMMA_SERVE_* variables through one settings class, and start-up
errors as one line (these run the real `python -m server`, which fails before loading a model)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from server.capability import ASSUMED_CUDA_BUILD
from server.cli import flash_attn_refusal, parse_settings
from server.hardware import Device
from server.planner import Plan, PlanOptions, plan
from server.registry import load_registry
from tests.conftest import free_port


def test_flags_override_environment_which_overrides_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert parse_settings([]).port == 8000
    assert parse_settings([]).host == "127.0.0.1"
    monkeypatch.setenv("GEMMA_SERVE_PORT", "9001")
    monkeypatch.setenv("GEMMA_SERVE_CTX", "2048")
    settings = parse_settings(["serve", "--port", "9002", "--model", "gemma-3-270m"])
    assert (settings.port, settings.ctx, settings.model) == (9002, 2048, "gemma-3-270m")


def test_serve_is_the_default_command() -> None:
    assert parse_settings(["--host", "0.0.0.0", "--ctx", "1024"]).host == "0.0.0.0"
    assert parse_settings(["--ctx", "1024"]).ctx == 1024


def test_every_setting_is_a_flag_with_its_description_as_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        parse_settings(["serve", "--help"])
    help_text = capsys.readouterr().out
    for flag in ("--host", "--port", "--model", "--ctx", "--threads", "--chat-template"):
        assert flag in help_text
    assert "GEMMA_SERVE_CTX" in help_text
    assert "Context length in tokens" in help_text


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def serve_cli(
    cache: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`gemma-serve serve` on a free port with its own cache folder, expected to stop early."""
    return run_cli(*args, "--port", str(free_port()), "--cache-dir", str(cache), env=env)


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gemma-serve: error:"), result.stderr
    assert text in lines[0]


@pytest.mark.process
def test_busy_port_is_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("--port", str(port), "--log-level", "error")
    assert_one_line_error(result, 1, f"port {port} on 127.0.0.1 is already in use")


@pytest.mark.process
def test_invalid_environment_value_is_one_line() -> None:
    result = run_cli(env={"GEMMA_SERVE_PORT": "eighty"})
    assert_one_line_error(result, 2, "invalid --port (GEMMA_SERVE_PORT)")


@pytest.mark.process
def test_unknown_model_is_one_line() -> None:
    assert_one_line_error(run_cli("--model", "gpt-4"), 2, "unknown model 'gpt-4'")


@pytest.mark.process
def test_broken_registry_is_one_line(tmp_path: Path) -> None:
    registry = tmp_path / "models.yaml"
    registry.write_text("models:\n  - id: gemma-3-270m\n    name: x\n")
    result = run_cli("--registry-file", str(registry))
    assert_one_line_error(result, 2, "entry 'gemma-3-270m': field")


@pytest.mark.process
def test_a_model_that_cannot_be_fetched_stops_the_server_with_one_line(tmp_path: Path) -> None:
    # Asked for by name, offline and not cached: no fallback; the server exits, it does not hang.
    result = serve_cli(
        tmp_path,
        *("--model", "gemma-3-1b-it-qat"),
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("gemma-serve: error: cannot serve gemma-3-1b-it-qat: cannot get")
    assert "not in the cache" in last


NO_GPU_HERE = not os.path.exists("/proc/driver/nvidia")


@pytest.mark.process
@pytest.mark.skipif(not NO_GPU_HERE, reason="this machine has an NVIDIA driver")
@pytest.mark.parametrize(
    ("args", "env"), [(("--require-gpu",), {}), ((), {"GEMMA_SERVE_REQUIRE_GPU": "true"})]
)
def test_require_gpu_without_a_gpu_exits_with_one_line(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str]
) -> None:
    result = serve_cli(tmp_path, *args, "--log-level", "error", env=env)
    assert_one_line_error(result, 1, "--require-gpu is set: no NVIDIA GPU found (no NVIDIA driver")
    assert "set GEMMA_SERVE_REQUIRE_GPU=0 to serve on the CPU" in result.stderr
    assert not list(tmp_path.iterdir())  # nothing fetched, nothing loaded


def test_boolean_settings_are_flags_with_an_optional_value() -> None:
    assert parse_settings(["--require-gpu"]).require_gpu is True
    assert parse_settings(["--require-gpu", "false", "--port", "1"]).require_gpu is False
    assert parse_settings(["serve", "--log-prompts", "true"]).log_prompts is True


def test_cuda_architectures_take_cmakes_list() -> None:
    settings = parse_settings(["--cuda-architectures", "61;70;75;80;86-real;89;90a;120"])
    assert settings.cuda_architectures == (61, 70, 75, 80, 86, 89, 90, 120)


ORDER = """
import os, sys
from server.cli import main
assert "llama_cpp" not in sys.modules  # importing the CLI does not start CUDA
main(["plan", "--gpu-memory", "8GiB", "--json"])
print(os.environ.get("CUDA_DEVICE_ORDER"), "llama_cpp" in sys.modules, file=sys.stderr)
"""


@pytest.mark.process
@pytest.mark.parametrize(
    ("preset", "expected"), [(None, "PCI_BUS_ID"), ("FASTEST_FIRST", "FASTEST_FIRST")]
)
def test_cuda_device_order_is_set_before_llama_cpp_is_imported(
    preset: str | None, expected: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CUDA_DEVICE_ORDER"}
    if preset:
        env["CUDA_DEVICE_ORDER"] = preset
    result = subprocess.run(
        [sys.executable, "-c", ORDER], capture_output=True, text=True, timeout=60, env=env
    )
    assert result.returncode == 0, result.stderr
    # The preview (--gpu-memory) does not load llama.cpp at all: it stays fast.
    assert result.stderr.split() == [expected, "False"]


GPU_PLAN = plan(
    [Device("GPU 0", 24 << 30, 24 << 30)], load_registry(), PlanOptions(), ASSUMED_CUDA_BUILD
)
CPU_PLAN = plan([], load_registry(), PlanOptions(), ASSUMED_CUDA_BUILD)


@pytest.mark.parametrize(
    ("args", "chosen", "refused"),
    [
        ((), CPU_PLAN, None),
        ((), GPU_PLAN, None),
        (("--kv-cache-type", "q8_0"), CPU_PLAN, None),
        (("--no-flash-attn",), CPU_PLAN, None),  # the CPU's exact mode
        (("--flash-attn", "false"), GPU_PLAN, "is for serving on the CPU"),
        (("--no-flash-attn", "--kv-cache-type", "q8_0"), CPU_PLAN, "needs --kv-cache-type f16"),
    ],
)
def test_flash_attention_is_turned_off_only_where_it_can_be(
    args: tuple[str, ...], chosen: Plan, refused: str | None
) -> None:
    assert CPU_PLAN.on_gpu is False and GPU_PLAN.on_gpu is True
    refusal = flash_attn_refusal(parse_settings(list(args)), chosen)
    if refused is None:
        assert refusal is None
    else:
        assert refusal is not None and refused in refusal


@pytest.mark.process
def test_no_flash_attn_with_a_quantised_cache_exits_with_one_line(tmp_path: Path) -> None:
    result = serve_cli(
        tmp_path, "--no-flash-attn", *("--kv-cache-type", "q8_0"), "--log-level", "error"
    )
    assert_one_line_error(result, 2, "--no-flash-attn needs --kv-cache-type f16")
    assert not list(tmp_path.iterdir())  # nothing fetched, nothing loaded


def test_no_flash_attn_is_a_setting_of_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_settings([]).flash_attn is True
    assert parse_settings(["--no-flash-attn"]).flash_attn is False
    monkeypatch.setenv("GEMMA_SERVE_FLASH_ATTN", "false")
    assert parse_settings([]).flash_attn is False
