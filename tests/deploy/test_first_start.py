"""A first start as a container or a service sees it: no terminal, a model to download.

The real `python -m server serve`, its output to a file (not a terminal), fetches the bundled
model's file from the loopback hub (tests/hub.py), sent slowly. The log must say when the
download starts (model file, size, source), then bytes, rate, percent and time left at the
`--progress-interval`, then the verification and the load; `/health` must answer 503 with
`status: downloading` and the progress; and the container's health check
(`python -m server.healthcheck`) must pass meanwhile, so a slow first download never turns the
container "unhealthy".
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from server.registry import default_registry_path
from tests.conftest import RunningServer, start_server, stop_server, wait_healthy
from tests.hub import FakeHub

REPO, FILE = "test-org/tiny-gemma-GGUF", "tiny-gemma-Q4_K_M.gguf"


@pytest.fixture
def hub(model_path: Path) -> Iterator[FakeHub]:
    running = FakeHub().start()
    running.add(REPO, FILE, model_path)
    yield running
    running.stop()


def registry_with_hub_model(tmp_path: Path) -> Path:
    """The shipped registry plus `tiny-gemma`: the bundled model's file, on the hub."""
    data = yaml.safe_load(default_registry_path().read_text())
    bundled = next(m for m in data["models"] if m["id"] == "gemma-3-270m")
    source = {"kind": "huggingface", "repo": REPO, "file": FILE}
    data["models"].append({**bundled, "id": "tiny-gemma", "sources": [source]})
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def health(server: RunningServer) -> tuple[int, dict[str, Any]]:
    answer = httpx.get(f"{server.base_url}/health", timeout=30)  # a guard against a hang
    return answer.status_code, answer.json()


def healthcheck(port: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.healthcheck"],
        env={**os.environ, "GEMMA_SERVE_PORT": port},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_download_without_a_terminal_is_logged_and_reported_by_health(
    tmp_path: Path, hub: FakeHub, model_path: Path
) -> None:
    size = model_path.stat().st_size
    hub.bytes_per_second = size // 4  # about 4 s: several progress lines at 0.5 s
    registry = registry_with_hub_model(tmp_path)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    server = start_server(
        tmp_path,
        "--model",
        "tiny-gemma",
        "--registry-file",
        str(registry),
        "--progress-interval",
        "0.5",
        "--ctx",
        "1024",
        env={**environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf-home")},
    )
    port = server.base_url.rsplit(":", 1)[1]
    try:
        # While it downloads: 503, the step and how far it got; the health check passes.
        deadline, seen = time.monotonic() + 60, None
        while time.monotonic() < deadline and server.process.poll() is None:
            try:
                status, body = health(server)
            except httpx.TransportError:
                time.sleep(0.1)
                continue
            if body.get("status") == "downloading" and (body["progress"]["done_bytes"] or 0) > 0:
                seen = status, body
                break
            time.sleep(0.1)
        assert seen is not None, server.log()
        status, body = seen
        progress = body["progress"]
        assert status == 503 and body["error"]["code"] == "model_loading"
        assert progress["phase"] == "downloading" and progress["what"] == FILE
        assert progress["total_bytes"] == size and 0 < progress["done_bytes"] < size
        assert 0 < progress["percent"] < 100 and progress["bytes_per_second"] > 0
        assert "downloading" in body["error"]["message"]
        check = healthcheck(port)
        assert check.returncode == 0 and "not ready yet: downloading" in check.stderr

        wait_healthy(server, timeout=180)
        assert healthcheck(port).returncode == 0
    finally:
        stop_server(server)

    log = server.log()
    mb = r"\d+\.\d\d [kMG]?B"
    # The start: which file, how big, from where.
    assert re.search(
        rf"downloading {re.escape(FILE)} \({mb}\) from {re.escape(hub.url)}/{re.escape(REPO)}",
        log,
    ), log
    # Then at the interval: bytes of the total, percent, rate, time left.
    steps = re.findall(
        rf"downloading {re.escape(FILE)}: ({mb}) of {mb} \((\d+)%\), {mb}/s, .+ left", log
    )
    assert len(steps) >= 2, log
    assert [int(percent) for _, percent in steps] == sorted(int(p) for _, p in steps)
    assert re.search(rf"downloaded {re.escape(FILE)} \({mb}\) in \d+ s", log), log
    # The verification and the load, the same way.
    assert re.search(
        rf"verifying {re.escape(FILE)} \({mb}\) against the sha256 \(models.yaml\)", log
    ), log
    assert re.search(rf"verified {re.escape(FILE)}: sha256 matches in \d+ s", log), log
    assert re.search(r"loading tiny-gemma from .+ \(1024 tokens of context\)", log), log
    assert re.search(r"tiny-gemma is loaded in \d+ s \(context 1024 tokens\); ready", log), log
    # No progress bar escapes into a log that is not a terminal.
    assert "\r" not in log and "it/s" not in log
