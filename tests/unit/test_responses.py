"""Responses API: request validation, the mapping onto the engine, and the conversion of
scripted engine events into a response object and into OpenAI's stream event sequence."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from openai.types.responses import Response as SDKResponse
from openai.types.responses import ResponseStreamEvent
from pydantic import TypeAdapter, ValidationError

from server.api.errors import APIError
from server.api.responses import ResponseAnswer, to_generation_request
from server.api.responses_protocol import ResponseObject, ResponseRequest
from server.engine.contract import (
    ChatMessage,
    Event,
    Finished,
    JsonFormat,
    SamplingParams,
    TextDelta,
    Usage,
)
from tests.unit.answers import scripted, streamed, whole

STREAM_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)


def request(**fields: Any) -> ResponseRequest:
    return ResponseRequest.model_validate({"model": "gemma-3-270m", "input": "Hi", **fields})


def frame(**fields: Any) -> ResponseAnswer:
    return ResponseAnswer("resp_1", "msg_1", 100, request(**fields))


def to_response(generation: AsyncGenerator[Event, None], answer: ResponseAnswer) -> ResponseObject:
    return whole(answer, [generation])


def stream(generation: AsyncGenerator[Event, None], **fields: Any) -> list[dict[str, Any]]:
    events = streamed(frame(**fields), [generation])
    assert all(isinstance(sse, dict) for sse in events)
    return [
        {"event": sse["event"], **json.loads(sse["data"])}
        for sse in events
        if isinstance(sse, dict)
    ]


# --- requests -----------------------------------------------------------------------------


def test_a_string_input_is_one_user_message_with_gemma_defaults() -> None:
    generation = to_generation_request(request())
    assert generation.messages == (ChatMessage("user", "Hi"),)
    assert generation.sampling == SamplingParams()
    assert generation.max_tokens is None
    assert generation.json_format is None
    assert generation.prompt is None


def test_fields_map_onto_the_engine() -> None:
    generation = to_generation_request(
        request(
            instructions="Be brief.",
            input=[
                {"role": "developer", "content": "Use French."},
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "a"}],
                },
                {
                    "type": "message",
                    "role": "assistant",
                    "id": "msg_0",
                    "status": "completed",
                    "content": [{"type": "output_text", "text": "b", "annotations": []}],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "c"},
                        {"type": "input_text", "text": "d"},
                    ],
                },
            ],
            max_output_tokens=20,
            temperature=0.2,
            top_p=0.7,
            seed=5,
            store=True,
            metadata={"k": "v"},
            user="u",
            parallel_tool_calls=False,
            tool_choice="none",
            reasoning={"effort": None},
            truncation="disabled",
            include=[],
        )
    )
    assert generation.messages == (
        ChatMessage("system", "Be brief."),
        ChatMessage("developer", "Use French."),
        ChatMessage("user", "a"),
        ChatMessage("assistant", "b"),
        ChatMessage("user", "c\nd"),
    )
    assert generation.max_tokens == 20
    assert generation.sampling == SamplingParams(temperature=0.2, top_p=0.7, seed=5)


def test_text_format_maps_to_a_json_constraint() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    as_schema = request(text={"format": {"type": "json_schema", "name": "x", "schema": schema}})
    assert to_generation_request(as_schema).json_format == JsonFormat(schema=schema)
    as_object = request(text={"format": {"type": "json_object"}})
    assert to_generation_request(as_object).json_format == JsonFormat()
    assert to_generation_request(request(text={"format": {"type": "text"}})).json_format is None


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"previous_response_id": "resp_1"}, "previous_response_id", "unsupported_parameter"),
        ({"conversation": "conv_1"}, "conversation", "unsupported_parameter"),
        ({"background": True}, "background", "unsupported_parameter"),
        ({"tools": [{"type": "function", "name": "f"}]}, "tools", "unsupported_parameter"),
        ({"tool_choice": "required"}, "tool_choice", "unsupported_parameter"),
        ({"reasoning": {"effort": "high"}}, "reasoning.effort", "unsupported_parameter"),
        ({"truncation": "auto"}, "truncation", "unsupported_parameter"),
        ({"include": ["message.output_text.logprobs"]}, "include", "unsupported_parameter"),
        ({"top_logprobs": 2}, "top_logprobs", "unsupported_parameter"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt", "unsupported_parameter"),
        ({"text": {"verbosity": "low"}}, "text.verbosity", "unsupported_parameter"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema", None),
        ({"input": []}, "input", "invalid_value"),
        ({"input": "\ud800"}, "input", "invalid_value"),
        ({"instructions": "\udfff"}, "instructions", "invalid_value"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role", "invalid_value"),
        ({"input": [{"content": "x"}]}, "input[0].role", "invalid_value"),
        ({"input": [{"role": "user"}]}, "input[0].content", "missing_required_parameter"),
        (
            {"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]},
            "input[0].type",
            "unsupported_parameter",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}]},
            "input[0].content[0]",
            "invalid_image",  # not a data: URL
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
            "input[0].content[0]",
            "unsupported_content",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "input_text"}]}]},
            "input[0].content[0]",
            "invalid_value",
        ),
        (
            {"input": [{"role": "user", "content": [{"type": "mystery", "text": "x"}]}]},
            "input[0].content[0]",
            "invalid_value",
        ),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name(
    fields: dict[str, Any], param: str, code: str | None
) -> None:
    with pytest.raises(APIError) as caught:
        to_generation_request(request(**fields))
    assert caught.value.status == 400
    assert caught.value.param == param
    if code:
        assert caught.value.code == code


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"temperature": 2.1}, "temperature"),
        ({"top_p": -0.1}, "top_p"),
        ({"input": 5}, "input"),
        ({"text": {"format": {"type": "xml"}}}, "text"),
        ({"metadata": {"k": 1}}, "metadata"),
    ],
)
def test_out_of_range_values_fail_validation(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        request(**fields)
    assert caught.value.errors()[0]["loc"][0] == field


def test_unknown_fields_are_ignored() -> None:
    assert to_generation_request(request(service_tier="auto", vendor={"x": 1})).messages


# --- responses ----------------------------------------------------------------------------


def test_a_whole_response_parses_with_the_sdk_and_has_output_text() -> None:
    generation = scripted(TextDelta("Hel"), TextDelta("lo"), Finished("stop", Usage(7, 2)))
    response = to_response(generation, frame(metadata={"k": "v"}, store=True))
    parsed = SDKResponse.model_validate(response.model_dump(mode="json"))
    assert parsed.output_text == "Hello"
    assert parsed.status == "completed"
    assert parsed.incomplete_details is None
    assert parsed.output[0].status == "completed"  # type: ignore[union-attr]
    assert parsed.usage is not None
    assert (parsed.usage.input_tokens, parsed.usage.output_tokens) == (7, 2)
    assert parsed.usage.total_tokens == 9
    assert parsed.metadata == {"k": "v"}
    assert response.store is False
    assert parsed.temperature == 1.0 and parsed.top_p == 0.95  # what was used


def test_a_response_cut_by_max_output_tokens_is_incomplete() -> None:
    generation = scripted(TextDelta("a"), Finished("length", Usage(3, 1)))
    response = to_response(generation, frame(max_output_tokens=1))
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"
    assert response.max_output_tokens == 1


def test_the_stream_follows_openais_event_sequence() -> None:
    events = stream(scripted(TextDelta("Hel"), TextDelta("lo"), Finished("stop", Usage(7, 2))))
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert all(e["event"] == e["type"] for e in events)
    for event in events:  # each one valid for the official SDK's (strict) types
        STREAM_EVENT.validate_python({k: v for k, v in event.items() if k != "event"})
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["usage"] is None
    assert events[2]["item"] == {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "status": "in_progress",
        "content": [],
    }
    assert [e["delta"] for e in events[4:6]] == ["Hel", "lo"]
    assert all(
        (e["item_id"], e["output_index"], e["content_index"]) == ("msg_1", 0, 0)
        for e in events[3:8]
    )
    assert events[6]["text"] == "Hello"
    assert events[7]["part"]["text"] == "Hello"
    assert events[8]["item"]["status"] == "completed"
    final = SDKResponse.model_validate(events[-1]["response"])
    assert final.output_text == "Hello"
    assert final.usage is not None and final.usage.output_tokens == 2


def test_a_cut_stream_ends_with_response_incomplete() -> None:
    events = stream(scripted(TextDelta("a"), Finished("length", Usage(3, 1))))
    assert events[-1]["type"] == "response.incomplete"
    for event in events:
        STREAM_EVENT.validate_python({k: v for k, v in event.items() if k != "event"})
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-2]["item"]["status"] == "incomplete"


def test_an_error_after_the_start_is_an_error_event_then_response_failed() -> None:
    async def failing() -> AsyncGenerator[Event, None]:
        yield TextDelta("a")
        raise RuntimeError("decode failed")

    events = stream(failing())
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    for event in events:
        STREAM_EVENT.validate_python({k: v for k, v in event.items() if k != "event"})
    assert events[-2]["code"] == "server_error"
    failed = events[-1]["response"]
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "server_error"
    assert failed["output"][0]["content"][0]["text"] == "a"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
