"""Ollama's and Anthropic's endpoints over a scripted engine, for what the serving path promises
every dialect: a client that hangs up (streamed or not) stops its generation, and a generation
the engine ends without finishing is a 503 in the dialect's shape, or its stream's error."""

from __future__ import annotations

import json
from typing import Any

import pytest

from server.engine.contract import Finished, TextDelta, Usage
from tests.fast.conftest import HI, FastServer, wait_for
from tests.fast.scripted import MODEL_ID, Hold, Script

pytestmark = pytest.mark.fast

OLLAMA_CHAT = ("/api/chat", {"model": MODEL_ID, "messages": HI})
OLLAMA_GENERATE = ("/api/generate", {"model": MODEL_ID, "prompt": "Hi"})
MESSAGES = ("/v1/messages", {"model": MODEL_ID, "max_tokens": 8, "messages": HI})
ENDPOINTS = [OLLAMA_CHAT, OLLAMA_GENERATE, MESSAGES]


def whole(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "stream": False}


def streamed(body: dict[str, Any]) -> dict[str, Any]:
    return {**body, "stream": True}


@pytest.mark.parametrize(("path", "body"), ENDPOINTS)
def test_hanging_up_on_a_stream_stops_its_generation(
    fast_server: FastServer, path: str, body: dict[str, Any]
) -> None:
    fast_server.engine.enqueue(Script([TextDelta("a"), Hold(), Finished("stop", Usage(1, 1))]))
    with (
        fast_server.client() as client,
        client.stream("POST", path, json=streamed(body)) as response,
    ):
        lines = response.iter_lines()  # NOTE: kept: a collected iterator closes the stream
        next(lines)
        wait_for(lambda: fast_server.engine.running == 1)
        del lines
    wait_for(lambda: fast_server.engine.cancelled == 1)
    assert fast_server.engine.running == 0


@pytest.mark.parametrize(("path", "body"), ENDPOINTS)
def test_hanging_up_on_a_whole_answer_stops_its_generation(
    fast_server: FastServer, path: str, body: dict[str, Any]
) -> None:
    fast_server.engine.enqueue(Script([TextDelta("a"), Hold(), Finished("stop", Usage(1, 1))]))
    fast_server.hang_up_once_held(path, whole(body), held=lambda: fast_server.engine.running == 1)
    wait_for(lambda: fast_server.engine.cancelled == 1)
    assert fast_server.engine.running == 0


@pytest.mark.parametrize(("path", "body"), ENDPOINTS)
def test_a_generation_ended_without_finishing_is_a_503_or_a_stream_error(
    fast_server: FastServer, path: str, body: dict[str, Any]
) -> None:
    fast_server.engine.enqueue(Script([TextDelta("Hel")]), Script([TextDelta("Hel")]))
    with fast_server.client() as client:
        response = client.post(path, json=whole(body))
        assert response.status_code == 503 and response.headers["retry-after"]
        error = response.json()
        streamed_text = client.post(path, json=streamed(body)).text
    if path.startswith("/api/"):
        assert set(error) == {"error"}
        last = json.loads(streamed_text.splitlines()[-1])
        assert "shutting down" in last["error"]
    else:
        assert error["type"] == "error" and error["error"]["type"] == "overloaded_error"
        assert "event: error" in streamed_text and "overloaded_error" in streamed_text
