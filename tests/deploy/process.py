"""Run a deployment's own command line, as its container or service manager would, and check it.

Used for the Docker image's ENTRYPOINT + CMD + ENV and the systemd unit's ExecStart +
Environment: the process must become healthy, keep its model in the directory the deployment
gives it, serve a completion, and stop cleanly on the deployment's stop signal within its grace.
"""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.conftest import MODEL_ID, RunningServer, stop_server, wait_healthy


def serve_and_stop(
    command: list[str],
    env: dict[str, str],
    port: int,
    state_dir: Path,
    log_path: Path,
    stop_signal: signal.Signals,
    grace_s: float,
    while_up: Callable[[], None] = lambda: None,
) -> None:
    process = subprocess.Popen(
        command, env=env, stdout=log_path.open("wb"), stderr=subprocess.STDOUT
    )
    server = RunningServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        wait_healthy(server)
        while_up()
        reply = httpx.post(
            f"{server.base_url}/v1/chat/completions",
            json={
                "model": MODEL_ID,
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 4,
            },
            timeout=120,
        )
        assert reply.status_code == 200, reply.text
        # The model went to the deployment's state directory (the volume, StateDirectory).
        assert any(state_dir.rglob("*.gguf")), server.log()
        # The server drains and exits 0: a clean stop for Docker and systemd alike.
        process.send_signal(stop_signal)
        assert process.wait(timeout=grace_s) == 0, server.log()
    finally:
        if process.poll() is None:
            stop_server(server)
