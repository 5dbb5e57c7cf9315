"""Tool calling end to end on the real bundled model, through the official SDK: required and
named calls come back as OpenAI `tool_calls` whose arguments validate against the tool's schema,
`parallel_tool_calls` shapes the list (exactly one call when false), streamed calls are
reassembled by the SDK's stream helper, a history with tool calls and results is accepted,
`auto` without a call answers in text, and bad tool fields are 400 naming the field.

The tools' arguments use enums where they can: the base model keeps writing digits or text into
free-form fields, and an enum keeps a call short enough for a small `max_tokens`.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import pytest

from tests.conftest import MODEL_ID

WEATHER_ARGS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "London", "Tokyo"]},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": WEATHER_ARGS,
        "strict": True,
    },
}
# Not strict, with keywords the grammar cannot enforce: accepted, not a 400.
FORECAST_ARGS = {
    "type": "object",
    "properties": {"days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["days"],
}
FORECAST = {
    "type": "function",
    "function": {"name": "get_forecast", "parameters": FORECAST_ARGS},
}
SCHEMAS = {"get_weather": WEATHER_ARGS, "get_forecast": FORECAST_ARGS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
BASE: dict[str, Any] = {"model": MODEL_ID, "messages": ASK, "temperature": 0, "seed": 1}


def slow(client):  # type: ignore[no-untyped-def]
    """The client with room for a grammar-constrained call on a busy 2-core machine."""
    return client.with_options(timeout=600)


def test_a_named_function_is_the_one_called(openai_client) -> None:  # type: ignore[no-untyped-def]
    response = slow(openai_client).chat.completions.create(
        **BASE,
        tools=[FORECAST, WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        parallel_tool_calls=False,
        max_tokens=64,
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_ARGS)


def check(call) -> None:  # type: ignore[no-untyped-def]
    arguments = json.loads(call.function.arguments)
    if call.function.name == "get_forecast":
        # `minimum`/`maximum` are not enforced by the grammar (docs/api.md): check the rest.
        assert isinstance(arguments["days"], int)
    else:
        jsonschema.validate(arguments, SCHEMAS[call.function.name])


def test_required_parallel_calls_are_a_list_of_valid_calls(openai_client) -> None:  # type: ignore[no-untyped-def]
    # A non-strict tool with keywords the grammar cannot enforce is accepted, not a 400.
    response = slow(openai_client).chat.completions.create(
        **{**BASE, "messages": [{"role": "user", "content": "Weather in Paris and Tokyo?"}]},
        tools=[WEATHER, FORECAST],
        tool_choice="required",
        max_tokens=64,
    )
    choice = response.choices[0]
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls
    # Cut by max_tokens, the last call may be incomplete (as with OpenAI); the others are whole.
    whole = calls if choice.finish_reason == "tool_calls" else calls[:-1]
    assert choice.finish_reason in ("tool_calls", "length")
    for call in whole:
        assert call.type == "function"
        assert call.id.startswith("call_")
        check(call)
    assert len({call.id for call in calls}) == len(calls)


def test_streamed_calls_are_reassembled_by_the_sdks_stream_helper(openai_client) -> None:  # type: ignore[no-untyped-def]
    with slow(openai_client).chat.completions.stream(
        **BASE,
        tools=[WEATHER],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=64,
    ) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_completion()
    choice = final.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(call.function.parsed_arguments, WEATHER_ARGS)  # parsed by the SDK
    assert events.count("tool_calls.function.arguments.delta") > 1  # arguments came in pieces
    assert "tool_calls.function.arguments.done" in events


def test_a_history_with_tool_calls_and_results_is_answered(openai_client) -> None:  # type: ignore[no-untyped-def]
    history = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_abc",
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "arguments": '{"city": "Paris", "unit": "celsius"}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_abc", "content": '{"temperature": 18}'},
    ]
    response = openai_client.chat.completions.create(
        **{**BASE, "messages": history}, tools=[WEATHER], max_tokens=8
    )
    choice = response.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert response.usage.prompt_tokens > 100  # the offer and the rendered turns are in it


def test_auto_without_a_call_answers_in_text(openai_client) -> None:  # type: ignore[no-untyped-def]
    kwargs = {**BASE, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}
    plain = openai_client.chat.completions.create(**kwargs, tools=[WEATHER], tool_choice="auto")
    choice = plain.choices[0]
    assert choice.message.tool_calls is None
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    streamed = openai_client.chat.completions.create(**kwargs, tools=[WEATHER], stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == choice.message.content  # same seed, same answer, streamed


def test_tool_choice_none_is_plain_chat(openai_client) -> None:  # type: ignore[no-untyped-def]
    kwargs = {**BASE, "max_tokens": 4}
    without = openai_client.chat.completions.create(**kwargs)
    offered_none = openai_client.chat.completions.create(
        **kwargs, tools=[WEATHER], tool_choice="none"
    )
    assert offered_none.usage.prompt_tokens == without.usage.prompt_tokens
    assert offered_none.choices[0].message.content == without.choices[0].message.content


STRICT_WITH_MINIMUM = {
    "type": "function",
    "function": {**FORECAST["function"], "strict": True},
}
CALLED = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    ],
}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "g"}}},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
        ({"tools": [STRICT_WITH_MINIMUM]}, "tools[0].function.parameters"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        (
            {"messages": [*ASK, CALLED, {"role": "tool", "content": "1"}]},
            "messages[2].tool_call_id",
        ),
        (
            {"messages": [*ASK, {"role": "tool", "tool_call_id": "call_1", "content": "1"}]},
            "messages[1].tool_call_id",
        ),
    ],
)
def test_bad_tool_requests_are_400_naming_the_field(
    http: httpx.Client, body: dict[str, Any], param: str
) -> None:
    response = http.post("/v1/chat/completions", json={**BASE, "max_tokens": 4, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
