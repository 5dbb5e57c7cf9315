"""Installed models on demand, end to end (issue 20): the bundled 270M brought a second time
under another id through a user registry file, served by the real engine behind a real server.

A request for the second model is answered while the first streams; with `--keep-alive 10s` the
second unloads after idling (its state in /v1/models, the process's resident memory lower) and
the next request loads it again; a broken entry of the user registry file is refused with one
line while the rest serves; SIGTERM while a model loads ends the server cleanly.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import MODEL_ID, RunningServer, serving, start_server, stop_server, wait_healthy

SECOND = "second-270m"


def user_registry(tmp_path: Path, model_path: Path) -> Path:
    file = tmp_path / "models.yaml"
    file.write_text(
        "models:\n"
        f"  - id: {SECOND}\n"
        f"    path: {model_path}\n"
        "  - id: missing-model\n"
        "    path: nowhere/missing.gguf\n",
        encoding="utf-8",
    )
    return file


def rss(server: RunningServer) -> int:
    """The server process's resident memory, bytes (VmRSS)."""
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def states(http: httpx.Client) -> dict[str, dict[str, object]]:
    return {card["id"]: card for card in http.get("/v1/models").json()["data"]}


def wait_state(http: httpx.Client, model: str, state: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while states(http)[model]["state"] != state:
        assert time.monotonic() < deadline, f"{model} never became {state}"
        time.sleep(0.2)


def serve_two_models(tmp_path: Path, model_path: Path, keep_alive: str) -> Iterator[RunningServer]:
    """A server with the bundled model and `user_registry`'s second, until the caller is done."""
    with serving(
        tmp_path,
        "--ctx", "1024", "--parallel", "2", "--keep-alive", keep_alive,
        "--models-file", str(user_registry(tmp_path, model_path)),
    ) as running:  # fmt: skip
        yield running


@pytest.fixture
def two_models(tmp_path: Path, model_path: Path) -> Iterator[RunningServer]:
    yield from serve_two_models(tmp_path, model_path, "10s")


def ask(http: httpx.Client, model: str, max_tokens: int = 8) -> httpx.Response:
    return http.post(
        "/v1/completions",
        json={"model": model, "prompt": "The capital of France is", "max_tokens": max_tokens},
    )


def test_a_second_model_is_served_beside_the_first_unloads_when_idle_and_reloads(
    two_models: RunningServer,
) -> None:
    with httpx.Client(base_url=two_models.base_url, timeout=120) as http:
        cards = states(http)
        assert list(cards) == [MODEL_ID, SECOND]  # the model picked at start first
        assert cards[SECOND]["state"] == "unloaded"
        assert "missing-model" in two_models.log() and "does not exist" in two_models.log()

        # The first model streams while the second is loaded and answers.
        streamed: list[str] = []

        def stream_first() -> None:
            with httpx.Client(base_url=two_models.base_url, timeout=120) as other:
                body = {"model": MODEL_ID, "prompt": "Once upon a time", "max_tokens": 64}
                with other.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                    streamed.extend(r.iter_lines())

        first = threading.Thread(target=stream_first)
        first.start()
        answer = ask(http, SECOND)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == SECOND and answer.json()["choices"][0]["text"]
        # Read at once: the keep-alive counts from this answer, whatever the first stream does.
        loaded = states(http)[SECOND]
        assert loaded["state"] == "loaded" and loaded["context_length"] == 1024
        assert isinstance(loaded["memory"], int) and loaded["memory"] > 0
        assert SECOND + ":latest" in [m["name"] for m in http.get("/api/ps").json()["models"]]
        both = rss(two_models)
        first.join(120)
        assert "data: [DONE]" in streamed

        wait_state(http, SECOND, "unloaded")  # idle for --keep-alive 10s
        assert rss(two_models) < both
        assert f"{SECOND} unloaded (idle for 10 s)" in two_models.log()

        again = ask(http, SECOND)
        assert again.status_code == 200, again.text
        assert two_models.log().count(f"{SECOND} loaded in") == 2
        metrics = http.get("/metrics").text
        assert f'gemma_serve_model_unloads_total{{model="{SECOND}"}}' in metrics


def test_sigterm_while_a_model_loads_ends_cleanly(tmp_path: Path, model_path: Path) -> None:
    running = start_server(
        tmp_path, "--ctx", "1024", "--parallel", "2",
        "--models-file", str(user_registry(tmp_path, model_path)),
    )  # fmt: skip
    try:
        wait_healthy(running)
        answers: list[int] = []

        def request_second() -> None:
            try:
                with httpx.Client(base_url=running.base_url, timeout=60) as http:
                    answers.append(ask(http, SECOND).status_code)
            except httpx.TransportError:
                answers.append(0)  # the server went before answering

        asking = threading.Thread(target=request_second)
        asking.start()
        with httpx.Client(base_url=running.base_url, timeout=10) as http:
            deadline = time.monotonic() + 30
            while states(http)[SECOND]["state"] == "unloaded" and time.monotonic() < deadline:
                time.sleep(0.005)
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=60) == 0, running.log()
        asking.join(60)
        assert answers and answers[0] in (0, 200, 503), answers
        assert "Traceback" not in running.log()
    finally:
        stop_server(running)
