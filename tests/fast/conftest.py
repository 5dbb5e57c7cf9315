"""The fast layer's server: the real app (`create_app`) over a `ScriptedEngine`, served by the
same uvicorn server class as `gemma-serve serve` (with its SIGTERM drain), on a thread of the
test process. No model is loaded: a test starts in milliseconds."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from server.api.shutdown import Drain
from server.app import create_app
from server.capability import LlamaBuild
from server.cli import DrainingServer
from server.models.manager import Installed
from server.planner import Plan, PlanOptions, plan
from server.registry import load_registry
from server.settings import Settings
from tests.conftest import free_port
from tests.fast.scripted import MODEL_ID, ScriptedEngine

HI = [{"role": "user", "content": "Hi"}]
CHAT = ("/v1/chat/completions", {"model": MODEL_ID, "messages": HI})
COMPLETIONS = ("/v1/completions", {"model": MODEL_ID, "prompt": "Hi"})
RESPONSES = ("/v1/responses", {"model": MODEL_ID, "input": "Hi"})
ENDPOINTS = [CHAT, COMPLETIONS, RESPONSES]


@dataclass
class FastServer:
    base_url: str
    engine: ScriptedEngine
    uvicorn: DrainingServer
    drain: Drain

    def client(self, timeout: float = 10) -> httpx.Client:
        # verify=False: plain HTTP, and it spares loading the CA bundle for every client.
        return httpx.Client(base_url=self.base_url, timeout=timeout, verify=False)

    def hang_up_once_held(self, path: str, body: dict[str, Any], held: Callable[[], bool]) -> None:
        """POST `body` as a client that hangs up before its answer: on a connection of its own,
        closed as soon as `held()` proves the server holds the request (its generation runs, its
        model loads), so the hang-up never races the server's start."""
        url = httpx.URL(self.base_url)
        payload = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        )
        with socket.create_connection((url.host, url.port or 80), timeout=60) as connection:
            connection.sendall(head.encode() + payload)
            wait_for(held, within=60)


def cpu_plan() -> Plan:
    return plan([], load_registry(), PlanOptions(ctx=1024), LlamaBuild(gpu_offload=False))


def serve(
    tmp_path: Path,
    engine: ScriptedEngine,
    *,
    models: Sequence[Installed] = (),
    **settings: object,
) -> Iterator[FastServer]:
    """`models`: more installed models beside the scripted start model. `settings` override the
    defaults here, among them a 1 s `shutdown_grace`."""
    settings = {"shutdown_grace": 1, **settings}
    config = Settings(ctx=1024, cache_dir=tmp_path, **settings)  # type: ignore[arg-type]
    app = create_app(config, cpu_plan(), load_engine=lambda: engine, models=models)
    port = free_port()
    server = DrainingServer(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"),
        app.state.drain,
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while True:
        try:
            if httpx.get(f"{base_url}/health", timeout=1, verify=False).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the fast server did not start"
        time.sleep(0.01)
    try:
        yield FastServer(base_url, engine, server, app.state.drain)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastServer]:
    yield from serve(tmp_path_factory.mktemp("fast"), ScriptedEngine())


@pytest.fixture
def fast_server(shared_server: FastServer) -> FastServer:
    """The module's server, its engine's script and records fresh for this test."""
    shared_server.engine.reset()
    return shared_server


def error_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def data_lines(response: httpx.Response) -> list[str]:
    return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def wait_for(condition: Callable[[], bool], within: float = 60) -> None:
    """Until `condition` holds; `within` guards against a hang, it is no bound on speed."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.01)
