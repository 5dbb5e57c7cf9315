"""Installed models over HTTP (issue 20), on scripted engines: listing with state, loading on
demand beside the start model, one load for concurrent requests, a disconnect during a load,
idle unload and Ollama's keep_alive, unknown models and models that cannot fit."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from server.cancellation import Cancelled
from server.engine.contract import EngineBusy, Finished, TextDelta, Usage
from server.engine.embedding_contract import EmbeddingInfo
from server.memory import GiB
from server.models.manager import Installed
from server.registry import load_registry
from tests.fast.conftest import FastServer, error_of, serve, wait_for
from tests.fast.scripted import MODEL_ID, Hold, Script, ScriptedEngine

SECOND = "second-model"
HI = [{"role": "user", "content": "Hi"}]


class SecondLoader:
    """Loads a scripted engine named SECOND; with `gate` set, each load waits for it."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.calls = 0
        self.started = threading.Event()
        self.engines: list[ScriptedEngine] = []

    def __call__(self, stopping: threading.Event, free: int | None) -> ScriptedEngine:
        self.calls += 1
        self.started.set()
        while not self.gate.wait(0.01):
            if stopping.is_set():
                raise Cancelled(SECOND)
        engine = ScriptedEngine()
        engine.info = replace(engine.info, model_id=SECOND)
        self.engines.append(engine)
        return engine


class ScriptedEmbedder:
    """A loaded embedding model: a token per character, the vector counts them; `closed` says
    whether the manager unloaded it."""

    def __init__(self) -> None:
        self.info = EmbeddingInfo(model_id="embedder", n_ctx=64, width=2, vocab_size=256)
        self.closed = False
        self.full = False  # its queue is full: refuse as the real engine does

    def tokenize(self, text: str) -> list[int]:
        return [ord(char) % 256 for char in text]

    async def embed(self, inputs: Sequence[Sequence[int]]) -> list[list[float]]:
        if self.full:
            raise EngineBusy("65 embedding requests are being served or waiting", retry_after=1)
        return [[1.0, 0.0] if len(tokens) % 2 else [0.0, 1.0] for tokens in inputs]

    def close(self) -> None:
        self.closed = True


class EmbedderLoader:
    def __init__(self) -> None:
        self.loaded: list[ScriptedEmbedder] = []

    def __call__(self, stopping: threading.Event, free: int | None) -> ScriptedEmbedder:
        self.loaded.append(ScriptedEmbedder())
        return self.loaded[-1]


@pytest.fixture
def second() -> SecondLoader:
    return SecondLoader()


def about(model_id: str) -> object:
    return load_registry().get("gemma-3-270m").model_copy(update={"id": model_id})


@pytest.fixture
def embedder() -> EmbedderLoader:
    return EmbedderLoader()


@pytest.fixture
def server(tmp_path: Path, second: SecondLoader, embedder: EmbedderLoader) -> Iterator[FastServer]:
    models = [
        Installed(SECOND, second, need=GiB, file_size=1234, about=about(SECOND)),
        Installed("too-large", second, need=10**18, file_size=10**18, about=about("too-large")),
        Installed("embedder", embedder, need=1, kind="embedding"),
    ]
    yield from serve(tmp_path, ScriptedEngine(), models=models, keep_alive="forever")


def chat(http: httpx.Client, model: str, **extra: object) -> httpx.Response:
    return http.post("/v1/chat/completions", json={"model": model, "messages": HI, **extra})


def states(http: httpx.Client) -> dict[str, str]:
    return {card["id"]: card["state"] for card in http.get("/v1/models").json()["data"]}


def test_every_installed_model_is_listed_with_its_state_the_start_model_first(
    server: FastServer,
) -> None:
    with server.client() as http:
        cards = http.get("/v1/models").json()["data"]
        assert [card["id"] for card in cards] == [MODEL_ID, SECOND, "too-large", "embedder"]
        assert [card["state"] for card in cards] == ["loaded", "unloaded", "unloaded", "unloaded"]
        assert cards[1]["file_size"] == 1234 and cards[1]["memory"] == 0
        one = http.get(f"/v1/models/{SECOND}").json()
        assert one["id"] == SECOND and one["state"] == "unloaded"
        assert [m["name"] for m in http.get("/api/tags").json()["models"]] == [
            f"{MODEL_ID}:latest",
            f"{SECOND}:latest",
            "too-large:latest",
        ]


def test_a_request_for_a_second_model_loads_it_while_the_first_keeps_serving(
    server: FastServer, second: SecondLoader
) -> None:
    hold = Hold()
    server.engine.enqueue(Script([TextDelta("a"), hold, Finished("stop", Usage(3, 1))]))
    with server.client() as http, server.client() as other:
        with other.stream(
            "POST", "/v1/chat/completions", json={"model": MODEL_ID, "messages": HI, "stream": True}
        ) as streaming:
            assert streaming.status_code == 200
            answer = chat(http, SECOND)  # answered while the first model's stream runs
            assert answer.status_code == 200, answer.text
            assert answer.json()["model"] == SECOND
            hold.release()
            assert "[DONE]" in streaming.read().decode()
        assert second.calls == 1 and len(second.engines[0].history) == 1
        assert states(http)[SECOND] in ("loaded", "unloading", "unloaded")
        ps = http.get("/api/ps").json()["models"]
        assert MODEL_ID + ":latest" in [m["name"] for m in ps]
        assert http.get("/health").json()["status"] == "ok"


def test_an_idle_model_unloads_after_its_keep_alive_and_reloads(
    server: FastServer, second: SecondLoader
) -> None:
    def ollama_chat(http: httpx.Client, keep_alive: str) -> httpx.Response:
        body = {"model": SECOND, "messages": HI, "stream": False, "keep_alive": keep_alive}
        return http.post("/api/chat", json=body)

    with server.client() as http:
        loaded = http.post("/api/generate", json={"model": SECOND})  # kept: the server's default
        assert loaded.json()["done_reason"] == "load"
        # The short keep-alive comes with the last request before the wait, so that nothing has
        # to happen within it; a long one with the reload keeps the counts below still.
        assert ollama_chat(http, keep_alive="0.3s").status_code == 200
        assert second.calls == 1 and len(second.engines[0].history) == 1
        wait_for(lambda: states(http)[SECOND] == "unloaded", within=60)
        assert second.engines[0].closed
        assert ollama_chat(http, keep_alive="10m").status_code == 200
        assert second.calls == 2
        metrics = http.get("/metrics").text
        assert f'gemma_serve_model_loads_total{{model="{SECOND}"}} 2.0' in metrics
        assert f'gemma_serve_model_unloads_total{{model="{SECOND}"}} 1.0' in metrics
        assert f'gemma_serve_model_requests_total{{model="{SECOND}"}} 3.0' in metrics


def test_ollama_keep_alive_zero_with_nothing_to_generate_unloads_the_model(
    server: FastServer, second: SecondLoader
) -> None:
    with server.client() as http:
        loaded = http.post("/api/generate", json={"model": SECOND, "keep_alive": "10m"})
        assert loaded.json()["done_reason"] == "load"
        assert SECOND + ":latest" in [m["name"] for m in http.get("/api/ps").json()["models"]]
        gone = http.post("/api/generate", json={"model": SECOND, "keep_alive": 0})
        assert gone.json()["done_reason"] == "unload"
        assert states(http)[SECOND] == "unloaded" and second.engines[0].closed


def test_concurrent_requests_during_a_load_start_one_load(
    server: FastServer, second: SecondLoader
) -> None:
    second.gate.clear()
    answers: list[int] = []

    def ask() -> None:
        with server.client() as http:
            answers.append(chat(http, SECOND).status_code)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for thread in threads:
        thread.start()
    assert second.started.wait(60)
    with server.client() as http:
        wait_for(lambda: states(http)[SECOND] == "loading")
        assert chat(http, MODEL_ID).status_code == 200  # the first model serves meanwhile
    second.gate.set()
    for thread in threads:
        thread.join(60)
    assert answers == [200] * 4 and second.calls == 1


def test_a_client_that_leaves_during_a_load_does_not_cancel_it(
    server: FastServer, second: SecondLoader
) -> None:
    second.gate.clear()
    body = {"model": SECOND, "messages": HI}
    server.hang_up_once_held("/v1/chat/completions", body, held=second.started.is_set)
    with server.client() as http:
        assert states(http)[SECOND] == "loading"
        second.gate.set()
        assert chat(http, SECOND).status_code == 200
    assert second.calls == 1


def test_a_model_of_another_kind_is_listed_but_generates_no_text(server: FastServer) -> None:
    with server.client() as http:
        error = error_of(chat(http, "embedder"), 400)
        assert (
            error["param"] == "model"
            and "embedding model" in error["message"]
            and "embedding" in error["message"]
        )
        assert states(http)["embedder"] == "unloaded"  # refused before loading it
        assert "embedder:latest" not in [m["name"] for m in http.get("/api/tags").json()["models"]]


def test_the_embedding_model_loads_on_the_first_request_naming_it_and_unloads_when_idle(
    server: FastServer, embedder: EmbedderLoader
) -> None:
    with server.client() as http:
        assert states(http)["embedder"] == "unloaded" and not embedder.loaded
        answer = http.post("/v1/embeddings", json={"model": "embedder", "input": ["a", "ab"]})
        assert answer.status_code == 200, answer.text
        assert [item["embedding"] for item in answer.json()["data"]] == [[1.0, 0.0], [0.0, 1.0]]
        card = http.get("/v1/models/embedder").json()
        assert card["state"] == "loaded" and card["memory"] == 1
        ollama = http.post("/api/embed", json={"model": "embedder", "input": "abc"})
        assert ollama.json()["embeddings"] == [[1.0, 0.0]]
        assert len(embedder.loaded) == 1  # the second request used the loaded model
        # Its lease is released after each request: with Ollama's keep_alive 0 it unloads once
        # the request is answered, and the next request loads it again.
        unload = {"model": "embedder", "input": "a", "keep_alive": 0}
        assert http.post("/api/embed", json=unload).status_code == 200
        wait_for(lambda: states(http)["embedder"] == "unloaded")
        assert embedder.loaded[0].closed
        again = http.post("/v1/embeddings", json={"model": "embedder", "input": "a"})
        assert again.status_code == 200 and len(embedder.loaded) == 2


def test_an_embedding_model_with_a_full_queue_answers_503_with_retry_after_in_each_dialect(
    server: FastServer, embedder: EmbedderLoader
) -> None:
    with server.client() as http:
        assert http.post("/v1/embeddings", json={"model": "embedder", "input": "a"}).is_success
        embedder.loaded[0].full = True
        openai = http.post("/v1/embeddings", json={"model": "embedder", "input": "a"})
        assert openai.status_code == 503 and openai.headers["retry-after"] == "1"
        assert "embedding requests" in openai.json()["error"]["message"]
        ollama = http.post("/api/embed", json={"model": "embedder", "input": "a"})
        assert ollama.status_code == 503 and "embedding requests" in ollama.json()["error"]
        embedder.loaded[0].full = False
        assert http.post("/api/embed", json={"model": "embedder", "input": "a"}).is_success


def test_a_chat_model_on_the_embeddings_endpoint_is_a_400_naming_the_embedding_models(
    server: FastServer,
) -> None:
    with server.client() as http:
        answer = http.post("/v1/embeddings", json={"model": SECOND, "input": "a"})
        error = error_of(answer, 400)
        assert error["code"] == "model_not_embedding" and "embedder" in error["message"]
        assert states(http)[SECOND] == "unloaded"  # refused before loading it
        missing = error_of(http.post("/v1/embeddings", json={"model": "nope", "input": "a"}), 404)
        assert missing["param"] == "model" and "embedder" in missing["message"]


def test_an_unknown_model_is_404_naming_how_to_install_it(server: FastServer) -> None:
    with server.client() as http:
        error = error_of(chat(http, "gemma-3-27b-it-qat"), 404)
        assert error["code"] == "model_not_found" and error["param"] == "model"
        assert "gemma-serve pull gemma-3-27b-it-qat" in error["message"]
        assert http.get("/v1/models/nope").status_code == 404
        assert "not installed" in http.post("/api/chat", json={"model": "nope"}).json()["error"]


def test_a_model_that_cannot_fit_is_400_with_figures(server: FastServer) -> None:
    with server.client() as http:
        error = error_of(chat(http, "too-large"), 400)
        assert error["param"] == "model" and error["code"] == "model_too_large"
        assert "too-large needs" in error["message"] and "GiB" in error["message"]
        assert chat(http, MODEL_ID).status_code == 200  # nothing else is lost
