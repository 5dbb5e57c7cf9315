"""The command line: flags and GEMMA_SERVE_* variables through one settings class, and start-up
errors as one line (these run the real `python -m server`, which fails before loading a model)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from server.cli import parse_settings
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


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gemma-serve: error:"), result.stderr
    assert text in lines[0]


def test_busy_port_is_one_line() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run_cli("--port", str(port), "--log-level", "error")
    assert_one_line_error(result, 1, f"port {port} on 127.0.0.1 is already in use")


def test_invalid_environment_value_is_one_line() -> None:
    result = run_cli(env={"GEMMA_SERVE_PORT": "eighty"})
    assert_one_line_error(result, 2, "invalid --port (GEMMA_SERVE_PORT)")


def test_unknown_model_is_one_line() -> None:
    assert_one_line_error(run_cli("--model", "gpt-4"), 2, "unknown model 'gpt-4'")


def test_broken_registry_is_one_line(tmp_path: Path) -> None:
    registry = tmp_path / "models.yaml"
    registry.write_text("models:\n  - id: gemma-3-270m\n    name: x\n")
    result = run_cli("--registry-file", str(registry))
    assert_one_line_error(result, 2, "entry 'gemma-3-270m': field")


def test_a_model_that_cannot_be_fetched_stops_the_server_with_one_line(tmp_path: Path) -> None:
    # Asked for by name, offline and not cached: no fallback; the server exits, it does not hang.
    result = run_cli(
        "--model",
        "gemma-3-1b-it-qat",
        "--port",
        str(free_port()),
        "--cache-dir",
        str(tmp_path),
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
    )
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("gemma-serve: error: cannot serve gemma-3-1b-it-qat: cannot get")
    assert "not in the cache" in last
