"""The HTTP layer over a scripted engine, in seconds: errors and the fields they name, the 503
paths, requests too big to ever fit, and a request's sequences run together.

What needs the model (the text, the grammar, the real batch) stays in tests/e2e; streams,
disconnects and the drain are in test_http_streams.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.engine.contract import (
    EngineBusy,
    Finished,
    GenerationRequest,
    Refused,
    RequestRejected,
    TextDelta,
    Usage,
)
from server.settings import Settings
from tests.fast.conftest import (
    CHAT,
    COMPLETIONS,
    ENDPOINTS,
    HI,
    RESPONSES,
    FastServer,
    cpu_plan,
    error_of,
    serve,
)
from tests.fast.scripted import MODEL_ID, Hold, Script, ScriptedEngine
from tests.images import picture_url

pytestmark = pytest.mark.fast

WEATHER = {"type": "function", "function": {"name": "weather"}}


# --- errors and the fields they name ---------------------------------------------------------


@pytest.mark.parametrize(("path", "body"), ENDPOINTS)
def test_an_unknown_model_is_404_on_every_endpoint(
    fast_server: FastServer, path: str, body: dict[str, Any]
) -> None:
    with fast_server.client() as client:
        error = error_of(client.post(path, json={**body, "model": "gpt-4o"}), 404)
    assert (error["param"], error["code"]) == ("model", "model_not_found")
    assert fast_server.engine.history == []


@pytest.fixture(scope="module")
def vision_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastServer]:
    """A server whose engine says it takes pictures (else the API refuses them before it)."""
    yield from serve(tmp_path_factory.mktemp("vision"), ScriptedEngine(vision=True))


def reject(
    cause: Refused, *, on_call: int = 1, index: int | None = None
) -> Callable[[GenerationRequest], None]:
    calls = 0

    def prepare(request: GenerationRequest) -> None:
        nonlocal calls
        calls += 1
        if calls == on_call:
            raise RequestRejected("refused", cause, index=index)

    return prepare


TWO_IMAGES = [
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "Compare"},
            {"type": "image_url", "image_url": {"url": picture_url(1)}},
            {"type": "image_url", "image_url": {"url": picture_url(2)}},
        ],
    }
]
IMAGE_INPUT = [{"role": "user", "content": [{"type": "input_image", "image_url": picture_url(1)}]}]
TOOL_REQUIRED = {**CHAT[1], "tools": [WEATHER], "tool_choice": "required"}
JSON_CHAT = {**CHAT[1], "response_format": {"type": "json_object"}}
JSON_RESPONSES = {**RESPONSES[1], "text": {"format": {"type": "json_object"}}}
BIAS = {"logit_bias": {"5": 10}}


@pytest.mark.parametrize(
    ("path", "body", "cause", "on_call", "index", "param", "code"),
    [
        (*CHAT, Refused.CONTEXT_LENGTH, 1, None, "messages", "context_length_exceeded"),
        (*CHAT, Refused.CONVERSATION, 1, None, "messages", "invalid_conversation"),
        (CHAT[0], JSON_CHAT, Refused.OUTPUT_FORMAT, 1, None, "response_format", "invalid_value"),
        (CHAT[0], TOOL_REQUIRED, Refused.OUTPUT_FORMAT, 1, None, "tools", "invalid_value"),
        (CHAT[0], {**CHAT[1], **BIAS}, Refused.LOGIT_BIAS, 1, 0, "logit_bias", "invalid_value"),
        (CHAT[0], {**CHAT[1], "messages": TWO_IMAGES}, Refused.IMAGE, 1, 1,
         "messages[0].content[2]", "invalid_image"),
        (CHAT[0], {**CHAT[1], "messages": TWO_IMAGES}, Refused.NO_IMAGE_INPUT, 1, 0,
         "messages[0].content[1]", "image_input_not_supported"),
        (*COMPLETIONS, Refused.CONTEXT_LENGTH, 1, None, "prompt", "context_length_exceeded"),
        ("/v1/completions", {**COMPLETIONS[1], "prompt": ["a", "b"], "n": 2},
         Refused.CONTEXT_LENGTH, 3, None, "prompt[1]", "context_length_exceeded"),
        (COMPLETIONS[0], {**COMPLETIONS[1], **BIAS}, Refused.LOGIT_BIAS, 1, 0, "logit_bias",
         "invalid_value"),
        (*RESPONSES, Refused.CONTEXT_LENGTH, 1, None, "input", "context_length_exceeded"),
        (*RESPONSES, Refused.CONVERSATION, 1, None, "input", "invalid_conversation"),
        (RESPONSES[0], JSON_RESPONSES, Refused.OUTPUT_FORMAT, 1, None, "text.format",
         "invalid_value"),
        (RESPONSES[0], {**RESPONSES[1], "input": IMAGE_INPUT}, Refused.IMAGE, 1, 0,
         "input[0].content[0]", "invalid_image"),
    ],
)  # fmt: skip
def test_an_engine_refusal_names_the_endpoints_own_field(
    vision_server: FastServer,
    path: str,
    body: dict[str, Any],
    cause: Refused,
    on_call: int,
    index: int | None,
    param: str,
    code: str,
) -> None:
    vision_server.engine.reset()
    vision_server.engine.on_prepare = reject(cause, on_call=on_call, index=index)
    with vision_server.client() as client:
        error = error_of(client.post(path, json=body), 400)
    assert (error["message"], error["param"], error["code"]) == ("refused", param, code)
    assert vision_server.engine.running == 0


@pytest.mark.parametrize(("path", "body"), ENDPOINTS)
def test_stream_options_without_stream_is_400(
    fast_server: FastServer, path: str, body: dict[str, Any]
) -> None:
    with fast_server.client() as client:
        response = client.post(path, json={**body, "stream_options": {"include_usage": True}})
    assert error_of(response, 400)["param"] == "stream_options"


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
        ({"modalities": ["text", "audio"]}, "modalities"),
        ({"web_search_options": {}}, "web_search_options"),
        ({"moderation": {"model": "omni-moderation-latest"}}, "moderation"),
        ({"reasoning_effort": "high"}, "reasoning_effort"),
        ({"verbosity": "low"}, "verbosity"),
        ({"messages": [{"role": "assistant", "audio": {"id": "a1"}}, *HI]}, "messages[0].audio"),
        ({"n": 5}, "n"),
        ({"logit_bias": {"1": 101}}, "logit_bias"),
        ({"stop": ["\ud800"]}, "stop[0]"),
        ({"messages": [{"role": "user", "content": "\ud800"}]}, "messages[0].content"),
    ],
)
def test_what_the_server_cannot_do_is_refused_by_name(
    fast_server: FastServer, fields: dict[str, Any], param: str
) -> None:
    with fast_server.client() as client:
        response = client.post(
            "/v1/chat/completions",
            content=json.dumps({**CHAT[1], **fields}),
            headers={"content-type": "application/json"},
        )
    assert error_of(response, 400)["param"] == param
    assert fast_server.engine.history == []


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools"),
        ({"reasoning": {"effort": "high"}}, "reasoning.effort"),
        ({"context_management": [{"type": "compaction"}]}, "context_management"),
        ({"moderation": {}}, "moderation"),
        ({"background": True}, "background"),
        ({"previous_response_id": "resp_1"}, "previous_response_id"),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]},
         "input[0].content[0]"),
    ],
)  # fmt: skip
def test_what_responses_cannot_do_is_refused_by_name(
    fast_server: FastServer, fields: dict[str, Any], param: str
) -> None:
    with fast_server.client() as client:
        response = client.post(RESPONSES[0], json={**RESPONSES[1], **fields})
    assert error_of(response, 400)["param"] == param
    assert fast_server.engine.history == []


def test_bookkeeping_fields_are_accepted_and_change_nothing(fast_server: FastServer) -> None:
    ignored = {
        "user": "u1",
        "metadata": {"k": "v"},
        "store": True,
        "prediction": {"type": "content", "content": "Hello"},
        "service_tier": "auto",
        "safety_identifier": "s1",
        "prompt_cache_key": "k",
        "prompt_cache_retention": "24h",
        "modalities": ["text"],
        "stream_options": None,
    }
    with fast_server.client() as client:
        plain = client.post(CHAT[0], json=CHAT[1])
        extra = client.post(CHAT[0], json={**CHAT[1], **ignored})
    assert plain.status_code == extra.status_code == 200
    first, second = fast_server.engine.history
    assert first == second


def test_a_named_participant_is_named_in_the_prompt(fast_server: FastServer) -> None:
    messages = [{"role": "user", "name": "Ada", "content": "Hi"}]
    with fast_server.client() as client:
        assert client.post(CHAT[0], json={**CHAT[1], "messages": messages}).status_code == 200
    assert fast_server.engine.history[0].messages[-1].content == "Ada: Hi"


# --- the 503 paths and requests too big to ever fit ------------------------------------------


@pytest.mark.parametrize(("path", "body"), ENDPOINTS)
def test_a_busy_engine_is_503_with_retry_after(
    fast_server: FastServer, path: str, body: dict[str, Any]
) -> None:
    def busy(request: GenerationRequest) -> None:
        raise EngineBusy("all 8 places are taken", retry_after=1)

    fast_server.engine.on_prepare = busy
    with fast_server.client() as client:
        response = client.post(path, json=body)
    assert error_of(response, 503)["code"] == "server_busy"
    assert response.headers["retry-after"] == "1"


def test_the_api_is_503_while_the_model_loads(tmp_path: Path) -> None:
    loaded = threading.Event()

    def slow() -> ScriptedEngine:
        loaded.wait(120)  # set once the test has seen every 503; a hang guard
        return ScriptedEngine()

    app = create_app(Settings(ctx=1024, cache_dir=tmp_path), cpu_plan(), load_engine=slow)
    with TestClient(app, base_url="http://localhost") as client:
        for path, body in ENDPOINTS:
            response = client.post(path, json=body)
            assert error_of(response, 503)["code"] == "model_loading"
            assert response.headers["retry-after"]
        loaded.set()


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": ["a"] * 3, "n": 4}, "n"),  # 12 sequences
        ({"prompt": ["a"] * 9}, "prompt"),  # 9 sequences
        ({"prompt": ["a"] * 9, "n": 2}, "prompt"),  # 9 prompts are too many even with n=1
    ],
)
def test_a_request_bigger_than_the_server_is_400_not_503(
    fast_server: FastServer, body: dict[str, Any], param: str
) -> None:
    with fast_server.client() as client:
        response = client.post("/v1/completions", json={"model": MODEL_ID, **body})
    error = error_of(response, 400)
    assert error["param"] == param
    assert "8" in error["message"]  # what the server can hold
    assert fast_server.engine.history == []


def test_a_requests_prompts_and_choices_run_together(fast_server: FastServer) -> None:
    body = {"model": MODEL_ID, "prompt": ["a", "b"], "n": 2}
    hold = Hold()
    fast_server.engine.enqueue(
        *(Script([hold, TextDelta("x"), Finished("stop", Usage(1, 1))]) for _ in range(4))
    )

    def release_once_all_run() -> None:
        # Released only once the four run at once (or, if they never do, after the guard).
        deadline = time.monotonic() + 60
        while fast_server.engine.running < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        hold.release()

    threading.Thread(target=release_once_all_run, daemon=True).start()
    with fast_server.client(timeout=120) as client:
        completion = client.post("/v1/completions", json=body).json()
    assert fast_server.engine.peak == 4
    assert [choice["index"] for choice in completion["choices"]] == [0, 1, 2, 3]
