"""The HTTP systems under test: how each one is started, when it is ready, how it is stopped.

Each server runs as a child process on a free loopback port with the same model file, the same
thread count (for prompt processing too) and the same context length; its output goes to a log
file under the run's output folder. The bench talks to all of them only over HTTP, so it does not
depend on any server's internals.

Choices for the peer (`python -m llama_cpp.server`, llama-cpp-python's own server), documented in
bench/README.md:
- `--chat_format gemma`: the bundled GGUF has no chat template, so by default the peer would fall
  back to Llama 2's format; llama-cpp-python's `gemma` format renders the same prompt tokens as
  gemma-serve's Gemma 3 template (`<bos><start_of_turn>user\\n...<end_of_turn>\\n<start_of_turn>
  model\\n`).
- `--interrupt_requests False`: by default a new request cuts the stream in flight, which would
  turn the concurrent rounds into a measure of cut-off streams; with it off, requests queue behind
  the peer's lock and every stream completes.
Everything else is the peer's default.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

MODEL_ID = "gemma-3-270m"
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ServerSpec:
    """How to start one HTTP system and how to tell that it has loaded its model."""

    key: str  # short name used in flags and JSON
    label: str  # column title in the table
    argv: list[str]
    ready_path: str  # answers 200 only once the model is loaded
    env: dict[str, str] | None = None
    cwd: Path = REPO_ROOT  # `python -m server` imports the checkout it starts in


@dataclass
class RunningServer:
    spec: ServerSpec
    base_url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def gemma_serve_spec(
    port: int, threads: int, ctx: int, extra: list[str], checkout: Path | None = None
) -> ServerSpec:
    """gemma-serve from this checkout, or with `checkout` from another one (a baseline: the
    same venv, so the same llama-cpp-python, and that checkout's `server` package)."""
    argv = [
        sys.executable,
        "-m",
        "server",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model",
        MODEL_ID,
        "--threads",
        str(threads),
        "--ctx",
        str(ctx),
        *extra,
    ]
    if checkout is None:
        return ServerSpec("gemma-serve", "gemma-serve", argv, "/health")
    return ServerSpec("baseline", f"gemma-serve at {checkout.name}", argv, "/health", cwd=checkout)


def peer_spec(port: int, threads: int, ctx: int, model_path: str, extra: list[str]) -> ServerSpec:
    argv = [
        sys.executable,
        "-m",
        "llama_cpp.server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--model",
        model_path,
        "--model_alias",
        MODEL_ID,
        "--n_threads",
        str(threads),
        "--n_threads_batch",
        str(threads),
        "--n_ctx",
        str(ctx),
        "--chat_format",
        "gemma",
        "--interrupt_requests",
        "False",
        *extra,
    ]
    # The peer answers /v1/models only after its model is loaded (it loads before uvicorn starts).
    return ServerSpec("peer", "llama-cpp-python server (peer)", argv, "/v1/models")


def llama_server_spec(
    binary: Path, port: int, threads: int, ctx: int, model_path: str, parallel: int
) -> ServerSpec:
    """llama.cpp's own C++ server; `-c` is the total context, shared by its `-np` slots."""
    argv = [
        str(binary),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "-m",
        model_path,
        "--alias",
        MODEL_ID,
        "-t",
        str(threads),
        "-tb",
        str(threads),
        "-c",
        str(ctx * parallel),
        "-np",
        str(parallel),
        # The bundled GGUF has no template; llama.cpp's built-in `gemma` one renders the same
        # prompt as the others. With jinja on (its default) "gemma" would be taken as the template
        # text itself.
        "--no-jinja",
        "--chat-template",
        "gemma",
    ]
    return ServerSpec("llama-server", f"llama-server -np {parallel}", argv, "/health")


def start(spec: ServerSpec, base_url: str, log_dir: Path) -> RunningServer:
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{spec.key}.log"
    process = subprocess.Popen(
        spec.argv,
        cwd=spec.cwd,
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(spec.env or {})},
    )
    return RunningServer(spec, base_url, process, log_path)


def wait_ready(server: RunningServer, timeout_s: float) -> float:
    """Poll the readiness path until it answers 200; returns the seconds it took."""
    started = time.monotonic()
    deadline = started + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"{server.spec.label} exited with {server.process.returncode}:\n{server.log_tail()}"
            )
        try:
            response = httpx.get(f"{server.base_url}{server.spec.ready_path}", timeout=2)
            if response.status_code == 200:
                return time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise RuntimeError(
        f"{server.spec.label} not ready after {timeout_s:.0f}s:\n{server.log_tail()}"
    )


def stop(server: RunningServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
