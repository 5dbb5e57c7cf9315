"""Request validation (the wire types) and the mapping of each field onto the engine."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from server.api.chat import to_chat_plan
from server.api.chat_protocol import ChatCompletionRequest
from server.api.errors import APIError
from server.engine.contract import ChatMessage, GenerationRequest, JsonFormat, SamplingParams


def request(**fields: Any) -> ChatCompletionRequest:
    body = {"model": "gemma-3-270m", "messages": [{"role": "user", "content": "Hi"}], **fields}
    return ChatCompletionRequest.model_validate(body)


def to_generation_request(body: ChatCompletionRequest) -> GenerationRequest:
    """The engine request of the first choice."""
    return to_chat_plan(body, max_choices=4).generations.requests[0]


def to_generation_requests(
    body: ChatCompletionRequest, max_choices: int
) -> list[GenerationRequest]:
    return list(to_chat_plan(body, max_choices).generations.requests)


def test_defaults_are_gemma_3s_recommended_sampling() -> None:
    generation = to_generation_request(request())
    assert generation.sampling == SamplingParams(temperature=1.0, top_p=0.95, top_k=64, min_p=0.0)
    assert generation.max_tokens is None
    assert generation.stop == ()


def test_fields_map_onto_the_engine() -> None:
    generation = to_generation_request(
        request(
            temperature=0,
            top_p=0.5,
            top_k=10,
            min_p=0.1,
            seed=7,
            stop="END",
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            max_tokens=12,
        )
    )
    assert generation.sampling == SamplingParams(
        temperature=0,
        top_p=0.5,
        top_k=10,
        min_p=0.1,
        seed=7,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
    )
    assert generation.stop == ("END",)
    assert generation.max_tokens == 12


def test_max_completion_tokens_wins_over_the_deprecated_max_tokens() -> None:
    assert to_generation_request(request(max_tokens=5, max_completion_tokens=9)).max_tokens == 9


def test_text_parts_are_joined_and_roles_kept() -> None:
    generation = to_generation_request(
        request(
            messages=[
                {"role": "developer", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
                },
                {"role": "assistant", "content": None},
            ]
        )
    )
    assert generation.messages == (
        ChatMessage("developer", "Be brief."),
        ChatMessage("user", "a\nb"),
        ChatMessage("assistant", ""),
    )


def test_a_long_stop_string_is_fine_but_five_are_too_many() -> None:
    assert to_generation_request(request(stop="a long stop string")).stop == ("a long stop string",)
    assert len(to_generation_request(request(stop=["1", "2", "3", "4"])).stop) == 4


def test_unknown_top_level_fields_are_ignored() -> None:
    assert to_generation_request(request(vendor_extra={"x": 1})).max_tokens is None


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"messages": []}, "messages"),
        ({"messages": "Hi"}, "messages"),
        ({"messages": [{"role": 3, "content": "Hi"}]}, "messages"),
        ({"messages": [{"content": "Hi"}]}, "messages"),
        ({"model": ""}, "model"),
    ],
)
def test_out_of_range_values_are_refused(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(ValidationError) as error:
        request(**fields)
    assert error.value.errors()[0]["loc"][0] == param


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema.schema"),
        ({"tool_choice": "required"}, "tool_choice"),  # no tools to choose from
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {
                                "type": "image_url",
                                "image_url": {"url": "data:image/png;base64,AA=="},
                            }
                        ],
                    }
                ]
            },
            "messages[0].content[0]",
        ),
        (
            {"messages": [{"role": "tool", "content": "42", "tool_call_id": "c1"}]},
            "messages[0].tool_call_id",  # answers no earlier call
        ),
        ({"messages": [{"role": "user", "content": None}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "\ud800"}]}, "messages[0].content"),
    ],
)
def test_fields_not_supported_yet_are_refused_by_name(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(APIError) as error:
        to_generation_request(request(**fields))
    assert (error.value.status, error.value.param) == (400, param)


def test_harmless_values_of_unsupported_fields_are_accepted() -> None:
    generation = to_generation_request(
        request(
            n=1,
            logprobs=False,
            response_format={"type": "text"},
            tool_choice="none",
            logit_bias={},
            user="someone",
        )
    )
    assert generation.messages == (ChatMessage("user", "Hi"),)


def test_response_format_maps_to_a_json_constraint() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert to_generation_request(request(response_format={"type": "text"})).json_format is None
    assert (
        to_generation_request(request(response_format={"type": "json_object"})).json_format
        == JsonFormat()
    )
    constrained = to_generation_request(
        request(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "thing", "schema": schema, "strict": True},
            }
        )
    )
    assert constrained.json_format == JsonFormat(schema=schema)


def test_an_unknown_response_format_type_is_refused() -> None:
    with pytest.raises(ValidationError) as error:
        request(response_format={"type": "xml"})
    assert error.value.errors()[0]["loc"][:2] == ("response_format", "type")


@pytest.mark.parametrize(
    ("schema", "found"),
    [
        ({"type": "object", "properties": {"minimum": {"type": "string"}}}, None),  # a field name
        ({"type": "integer", "minimum": 1}, "'minimum' at #"),
        (
            {"type": "array", "items": {"type": "number", "multipleOf": 2}},
            "'multipleOf' at #/items",
        ),
        ({"anyOf": [{"type": "string"}, {"not": {"type": "null"}}]}, "'not' at #/anyOf/1"),
        ({"$defs": {"a": {"type": "array", "uniqueItems": True}}}, "'uniqueItems' at #/$defs/a"),
        ({"type": "object", "properties": {"a": {"type": "string", "maxLength": 3}}}, None),
    ],
)
def test_unenforced_schema_keywords_are_found(schema: dict[str, Any], found: str | None) -> None:
    from server.engine.json_schema import unenforced_keyword

    assert unenforced_keyword(schema) == found


def test_n_makes_one_engine_request_per_choice_with_consecutive_seeds() -> None:
    generations = to_generation_requests(request(n=3, seed=10), max_choices=4)
    assert [g.sampling.seed for g in generations] == [10, 11, 12]
    assert len({g.messages for g in generations}) == 1
    unseeded = to_generation_requests(request(n=2), max_choices=4)
    assert [g.sampling.seed for g in unseeded] == [None, None]
    assert len(to_generation_requests(request(), max_choices=4)) == 1


def test_n_over_the_cap_is_refused() -> None:
    with pytest.raises(APIError) as error:
        to_generation_requests(request(n=5), max_choices=4)
    assert (error.value.status, error.value.param) == (400, "n")
