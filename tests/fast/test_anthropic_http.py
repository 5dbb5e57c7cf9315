"""Anthropic's Messages API (`/v1/messages`) over a scripted engine: the official `anthropic` SDK
(create, stream, tools, count_tokens), the SSE event order, stop reasons and cache-read usage,
and every error in Anthropic's shape naming the field; the key as `x-api-key`.

The same calls against the real model are in tests/e2e/test_anthropic.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from server.engine.contract import (
    Finished,
    GenerationRequest,
    Refused,
    RequestRejected,
    TextDelta,
    Usage,
)
from tests.fast.conftest import HI, FastServer, serve
from tests.fast.scripted import MODEL_ID, Script, ScriptedEngine
from tests.images import encode, picture

pytestmark = pytest.mark.fast

WEATHER = {
    "name": "weather",
    "description": "The weather in a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
CALL_TEXT = '{"tool_calls": [{"name": "weather", "arguments": {"city": "Paris"}}]}'
MESSAGE = {"model": MODEL_ID, "max_tokens": 16, "messages": HI}


def sdk(server: FastServer, api_key: str = "none") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key=api_key, max_retries=0)


def anthropic_error(response: httpx.Response, status: int, kind: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == kind
    return str(body["error"]["message"])


def events_of(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) pairs of an SSE stream; the name must match the data's type."""
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
            assert data["type"] == name
            events.append((name, data))
    return events


def only_request(server: FastServer) -> GenerationRequest:
    [request] = server.engine.history
    return request


def test_create_with_the_sdk(fast_server: FastServer) -> None:
    fast_server.engine.enqueue(
        Script([TextDelta("Hel"), TextDelta("lo"), Finished("stop", Usage(7, 2, 4))])
    )
    message = sdk(fast_server).messages.create(
        model=MODEL_ID,
        max_tokens=16,
        system="Be brief.",
        messages=HI,
        extra_body={"temperature": 0.5, "top_k": 5},  # this SDK no longer has them; the API does
    )
    assert message.id.startswith("msg_") and message.role == "assistant"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "Hello"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    usage = message.usage
    assert (usage.input_tokens, usage.cache_read_input_tokens, usage.output_tokens) == (3, 4, 2)
    request = only_request(fast_server)
    assert [(m.role, m.content) for m in request.messages] == [
        ("system", "Be brief."),
        ("user", "Hi"),
    ]
    assert request.max_tokens == 16
    assert (request.sampling.temperature, request.sampling.top_k) == (0.5, 5)


@pytest.mark.parametrize(
    ("finished", "reason"),
    [
        (Finished("length", Usage(3, 16)), "max_tokens"),
        (Finished("stop", Usage(3, 2), stop_sequence="END"), "stop_sequence"),
    ],
)
def test_stop_reasons(fast_server: FastServer, finished: Finished, reason: str) -> None:
    fast_server.engine.enqueue(Script([TextDelta("Hi"), finished]))
    message = sdk(fast_server).messages.create(**MESSAGE, stop_sequences=["END"])  # type: ignore[arg-type]
    assert message.stop_reason == reason
    assert message.stop_sequence == finished.stop_sequence
    assert only_request(fast_server).stop == ("END",)


def test_the_stream_follows_anthropics_event_order(fast_server: FastServer) -> None:
    fast_server.engine.enqueue(
        Script([TextDelta("Hel"), TextDelta("lo"), Finished("stop", Usage(3, 2, 1))])
    )
    with (
        fast_server.client() as http,
        http.stream("POST", "/v1/messages", json={**MESSAGE, "stream": True}) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        events = events_of(response)
    assert [name for name, _ in events] == [
        "message_start",
        "content_block_start",
        "ping",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["usage"]["input_tokens"] == 3
    assert events[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert [data["delta"] for _, data in events[3:5]] == [
        {"type": "text_delta", "text": "Hel"},
        {"type": "text_delta", "text": "lo"},
    ]
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 2 and delta["usage"]["cache_read_input_tokens"] == 1


def test_stream_with_the_sdk(fast_server: FastServer) -> None:
    with sdk(fast_server).messages.stream(**MESSAGE) as stream:  # type: ignore[arg-type]
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello" and final.content[0].text == "Hello"  # type: ignore[union-attr]
    assert final.stop_reason == "end_turn"


def test_a_tool_call_with_the_sdk(fast_server: FastServer) -> None:
    fast_server.engine.enqueue(Script([TextDelta(CALL_TEXT), Finished("stop", Usage(3, 9))]))
    message = sdk(fast_server).messages.create(**MESSAGE, tools=[WEATHER])  # type: ignore[arg-type]
    assert message.stop_reason == "tool_use"
    [call] = message.content
    assert call.type == "tool_use" and call.name == "weather" and call.input == {"city": "Paris"}
    system = only_request(fast_server).messages[0]
    assert system.role == "system" and '"name": "weather"' in system.content
    assert only_request(fast_server).json_format is None  # auto: text or a call


def test_a_forced_tool_call_streams_its_input(fast_server: FastServer) -> None:
    pieces = ['{"tool_calls": [{"name": "weather", "arguments": {"city"', ': "Paris"}}]}']
    fast_server.engine.enqueue(Script([*map(TextDelta, pieces), Finished("stop", Usage(3, 9))]))
    body = {**MESSAGE, "tools": [WEATHER], "tool_choice": {"type": "tool", "name": "weather"}}
    with (
        fast_server.client() as http,
        http.stream("POST", "/v1/messages", json={**body, "stream": True}) as response,
    ):
        events = events_of(response)
    starts = [data for name, data in events if name == "content_block_start"]
    assert [start["content_block"]["type"] for start in starts] == ["tool_use"]
    assert starts[0]["content_block"]["name"] == "weather"
    partial = "".join(
        data["delta"]["partial_json"]
        for name, data in events
        if name == "content_block_delta" and data["delta"]["type"] == "input_json_delta"
    )
    assert json.loads(partial) == {"city": "Paris"}
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"
    schema = only_request(fast_server).json_format
    assert schema is not None and schema.schema is not None  # the call is enforced


def test_the_sdk_accumulates_a_streamed_tool_call(fast_server: FastServer) -> None:
    fast_server.engine.enqueue(Script([TextDelta(CALL_TEXT), Finished("stop", Usage(3, 9))]))
    body = {**MESSAGE, "tools": [WEATHER], "tool_choice": {"type": "any"}}
    with sdk(fast_server).messages.stream(**body) as stream:  # type: ignore[arg-type]
        final = stream.get_final_message()
    [call] = final.content
    assert call.type == "tool_use" and call.input == {"city": "Paris"}


def test_a_forced_call_cut_by_max_tokens_is_shown_as_text(fast_server: FastServer) -> None:
    cut = '{"tool_calls": [{"name": "weather", "arguments": {"city": "Par'
    fast_server.engine.enqueue(Script([TextDelta(cut), Finished("length", Usage(3, 16))]))
    body = {**MESSAGE, "tools": [WEATHER], "tool_choice": {"type": "any"}}
    message = sdk(fast_server).messages.create(**body)  # type: ignore[arg-type]
    assert message.stop_reason == "max_tokens"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == '{"city": "Par'  # type: ignore[union-attr]


def test_tool_use_and_tool_result_reach_the_prompt(fast_server: FastServer) -> None:
    image = {
        "type": "image",
        "source": {
            "type": "base64",
            "media_type": "image/png",
            "data": __import__("base64").b64encode(encode(picture(2))).decode(),
        },
    }
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "weather",
                    "input": {"city": "Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [{"type": "text", "text": "Sunny"}, image],
                    "cache_control": {"type": "ephemeral"},
                }
            ],
        },
    ]
    sdk(fast_server).messages.create(
        model=MODEL_ID, max_tokens=8, messages=messages, tools=[WEATHER]
    )  # type: ignore[arg-type]
    request = only_request(fast_server)
    texts = [m.content for m in request.messages]
    assert "Let me look." in texts[2] and '"city": "Paris"' in texts[2]
    assert texts[3].startswith("Tool result for weather (call toolu_1):\nSunny")
    assert request.images[0].param == "messages[2].content[0].content[1]"


def test_output_config_format_is_the_json_constraint(fast_server: FastServer) -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}}
    output_config = {"format": {"type": "json_schema", "schema": schema}, "effort": "high"}
    sdk(fast_server).messages.create(**MESSAGE, output_config=output_config)  # type: ignore[arg-type]
    json_format = only_request(fast_server).json_format
    assert json_format is not None and json_format.schema == schema


def test_count_tokens_prepares_without_generating(fast_server: FastServer) -> None:
    fast_server.engine.enqueue(Script(prompt_tokens=42))
    counted = sdk(fast_server).messages.count_tokens(model=MODEL_ID, messages=HI, tools=[WEATHER])  # type: ignore[arg-type]
    assert counted.input_tokens == 42
    assert fast_server.engine.peak == 0  # nothing ran


# --- errors, in Anthropic's shape -------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"max_tokens": None}, "max_tokens"),
        ({"thinking": {"type": "enabled", "budget_tokens": 1024}}, "thinking"),
        ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "tools[0].type"),
        (
            {"messages": [{"role": "user", "content": [{"type": "document", "source": {}}]}]},
            "messages[0].content[0]",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "x", "citations": [{"x": 1}]}],
                    }
                ]
            },
            "messages[0].content[0].citations",
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9"}]}
                ]
            },
            "messages[0].content[0].tool_use_id",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/png",
                                    "data": "bm90IGFuIGltYWdl",
                                },
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0]",
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image",
                                "source": {"type": "url", "url": "http://10.0.0.1/x.png"},
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0]",
        ),
        ({"messages": [*HI, {"role": "assistant", "content": "Sure"}]}, "messages[1]"),
        ({"tool_choice": {"type": "tool", "name": "nope"}, "tools": [WEATHER]}, "tool_choice"),
        ({"tools": [{**WEATHER, "input_schema": {"type": "array"}}]}, "tools[0].input_schema"),
        ({"temperature": 1.5}, "temperature"),
    ],
)
def test_a_bad_field_is_400_naming_it(
    fast_server: FastServer, body: dict[str, Any], named: str
) -> None:
    request = {**MESSAGE, **body}
    with fast_server.client() as http:
        response = http.post(
            "/v1/messages", json={k: v for k, v in request.items() if v is not None}
        )
    assert named in anthropic_error(response, 400, "invalid_request_error")
    assert fast_server.engine.history == []


def test_the_sdk_raises_its_own_errors(fast_server: FastServer) -> None:
    with pytest.raises(anthropic.NotFoundError) as missing:
        sdk(fast_server).messages.create(model="claude-sonnet-4-5", max_tokens=8, messages=HI)  # type: ignore[arg-type]
    assert "claude-sonnet-4-5" in str(missing.value)
    with pytest.raises(anthropic.BadRequestError):
        sdk(fast_server).messages.create(model=MODEL_ID, max_tokens=8, messages=[])


def test_an_engine_refusal_is_anthropic_shaped(fast_server: FastServer) -> None:
    def refuse(request: GenerationRequest) -> None:
        raise RequestRejected("The prompt is too long.", Refused.CONTEXT_LENGTH)

    fast_server.engine.on_prepare = refuse
    with fast_server.client() as http:
        response = http.post("/v1/messages", json=MESSAGE)
    assert (
        anthropic_error(response, 400, "invalid_request_error")
        == "messages: The prompt is too long."
    )


def test_an_error_mid_stream_is_an_error_event(fast_server: FastServer) -> None:
    fast_server.engine.enqueue(Script([TextDelta("Hel"), RuntimeError("decode failed")]))
    with (
        fast_server.client() as http,
        http.stream("POST", "/v1/messages", json={**MESSAGE, "stream": True}) as response,
    ):
        events = events_of(response)
    name, data = events[-1]
    assert name == "error" and data["error"]["type"] == "api_error"
    assert "message_stop" not in [name for name, _ in events]


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastServer]:
    yield from serve(tmp_path_factory.mktemp("keyed"), ScriptedEngine(), api_keys=["sekret"])


def test_the_key_as_x_api_key_and_refusals_in_each_dialects_shape(keyed_server: FastServer) -> None:
    keyed_server.engine.reset()
    message = sdk(keyed_server, api_key="sekret").messages.create(**MESSAGE)  # type: ignore[arg-type]
    assert message.content[0].text == "Hello"  # type: ignore[union-attr]
    with pytest.raises(anthropic.AuthenticationError):
        sdk(keyed_server, api_key="wrong").messages.create(**MESSAGE)  # type: ignore[arg-type]
    with keyed_server.client() as http:
        anthropic_error(http.post("/v1/messages", json=MESSAGE), 401, "authentication_error")
        assert set(http.get("/api/tags").json()) == {"error"}
        assert http.get("/api/tags", headers={"x-api-key": "sekret"}).status_code == 200
        assert http.get("/v1/models", headers={"x-api-key": "sekret"}).status_code == 200
        assert set(http.get("/v1/models").json()["error"]) == {"message", "type", "param", "code"}


def test_a_foreign_host_is_refused_in_anthropics_shape(fast_server: FastServer) -> None:
    with fast_server.client() as http:
        response = http.post("/v1/messages", json=MESSAGE, headers={"host": "evil.example"})
    assert response.status_code == 421 and response.json()["type"] == "error"


def test_a_body_too_large_is_refused_in_ollamas_shape(tmp_path: Path) -> None:
    for server in serve(tmp_path, ScriptedEngine(), max_body_size=1024):
        with server.client() as http:
            response = http.post(
                "/api/chat",
                json={"model": MODEL_ID, "messages": [{"role": "user", "content": "x" * 4096}]},
            )
        assert response.status_code == 413 and set(response.json()) == {"error"}
