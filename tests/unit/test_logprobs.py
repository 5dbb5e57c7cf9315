"""`logit_bias`, `logprobs` and `top_logprobs` on chat completions: request checks, the mapping
onto the engine, and the engine's token logprobs in whole and streamed answers (scripted events).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from typing import Any

import pytest
from pydantic import ValidationError

from server.api.chat import to_chat_plan
from server.api.chat_answer import ChatAnswer
from server.api.chat_protocol import ChatCompletionRequest
from server.api.errors import APIError
from server.engine.contract import (
    Event,
    Finished,
    GenerationRequest,
    TextDelta,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from tests.unit.answers import streamed, whole


def request(**fields: Any) -> ChatCompletionRequest:
    body = {"model": "gemma-3-270m", "messages": [{"role": "user", "content": "Hi"}], **fields}
    return ChatCompletionRequest.model_validate(body)


def to_generation_request(body: ChatCompletionRequest) -> GenerationRequest:
    """The engine request of the first choice."""
    return to_chat_plan(body, max_choices=4).generations.requests[0]


def test_logit_bias_maps_to_token_id_pairs() -> None:
    generation = to_generation_request(request(logit_bias={"42": 5, "7": -100, "262143": 100}))
    assert generation.sampling.logit_bias == ((7, -100.0), (42, 5.0), (262143, 100.0))
    assert to_generation_request(request()).sampling.logit_bias == ()


@pytest.mark.parametrize(
    "bias",
    [
        {"hello": 1},
        {"-1": 1},
        {"1.5": 1},
        {"": 1},
        {"\u0663": 1},  # an Arabic-Indic digit: int() takes it, a token id is ASCII
        {"9" * 5000: 1},
        {"42": 100.5},
        {"42": -101},
        {"42": float("nan")},
    ],
)
def test_bad_logit_bias_is_400_naming_it(bias: dict[str, float]) -> None:
    with pytest.raises(APIError) as error:
        to_generation_request(request(logit_bias=bias))
    assert (error.value.status, error.value.param) == (400, "logit_bias")


def test_logit_bias_values_must_be_numbers() -> None:
    with pytest.raises(ValidationError) as error:
        request(logit_bias={"42": "a lot"})
    assert error.value.errors()[0]["loc"][0] == "logit_bias"


@pytest.mark.parametrize(
    ("fields", "asked"),
    [
        ({}, None),
        ({"logprobs": False}, None),
        ({"logprobs": True}, 0),
        ({"logprobs": True, "top_logprobs": 0}, 0),
        ({"logprobs": True, "top_logprobs": 20}, 20),
    ],
)
def test_logprobs_map_to_the_engine(fields: dict[str, Any], asked: int | None) -> None:
    assert to_generation_request(request(**fields)).logprobs == asked


@pytest.mark.parametrize("fields", [{"top_logprobs": 3}, {"logprobs": False, "top_logprobs": 3}])
def test_top_logprobs_without_logprobs_is_400(fields: dict[str, Any]) -> None:
    with pytest.raises(APIError) as error:
        to_generation_request(request(**fields))
    assert (error.value.status, error.value.param) == (400, "top_logprobs")


@pytest.mark.parametrize("top", [-1, 21])
def test_top_logprobs_is_0_to_20(top: int) -> None:
    with pytest.raises(ValidationError) as error:
        request(logprobs=True, top_logprobs=top)
    assert error.value.errors()[0]["loc"][0] == "top_logprobs"


def token(text: str, logprob: float, *alternatives: tuple[str, float]) -> TokenLogprob:
    top = tuple(TopLogprob(t, t.encode(), lp) for t, lp in alternatives)
    return TokenLogprob(text, text.encode(), logprob, top)


HELLO = token("Hel", -0.5, ("Hel", -0.5), ("Hi", -1.5))
LO = token("lo", -0.25, ("lo", -0.25), ("p", -2.0))
CAFE = token("é", -1.0, ("é", -1.0), ("e", -1.25))


async def scripted(*deltas: TextDelta) -> AsyncGenerator[Event, None]:
    for delta in deltas:
        yield delta
    yield Finished("stop", Usage(prompt_tokens=3, completion_tokens=3))


def chat_answer(fields: dict[str, Any], include_usage: bool = False) -> ChatAnswer:
    options = to_chat_plan(request(**fields), max_choices=4).options
    return ChatAnswer("c", 0, "m", options=options, include_usage=include_usage)


def answer(fields: dict[str, Any], *deltas: TextDelta) -> dict[str, Any]:
    return whole(chat_answer(fields), [scripted(*deltas)]).model_dump()


def test_a_whole_answer_carries_each_tokens_logprobs() -> None:
    body = answer(
        {"logprobs": True, "top_logprobs": 2},
        TextDelta("Hello", (HELLO, LO)),
        TextDelta("é", (CAFE,)),
    )
    content = body["choices"][0]["logprobs"]["content"]
    assert content == [
        {
            "token": "Hel",
            "logprob": -0.5,
            "bytes": [72, 101, 108],
            "top_logprobs": [
                {"token": "Hel", "logprob": -0.5, "bytes": [72, 101, 108]},
                {"token": "Hi", "logprob": -1.5, "bytes": [72, 105]},
            ],
        },
        {
            "token": "lo",
            "logprob": -0.25,
            "bytes": [108, 111],
            "top_logprobs": [
                {"token": "lo", "logprob": -0.25, "bytes": [108, 111]},
                {"token": "p", "logprob": -2.0, "bytes": [112]},
            ],
        },
        {
            "token": "é",
            "logprob": -1.0,
            "bytes": [0xC3, 0xA9],
            "top_logprobs": [
                {"token": "é", "logprob": -1.0, "bytes": [0xC3, 0xA9]},
                {"token": "e", "logprob": -1.25, "bytes": [101]},
            ],
        },
    ]
    assert body["choices"][0]["logprobs"]["refusal"] is None


def test_logprobs_are_null_unless_asked_for() -> None:
    body = answer({}, TextDelta("Hello", (HELLO, LO)))
    assert body["choices"][0]["logprobs"] is None
    assert answer({"logprobs": True})["choices"][0]["logprobs"] == {
        "content": [],
        "refusal": None,
    }


def stream(fields: dict[str, Any], *deltas: TextDelta) -> list[dict[str, Any]]:
    payloads = streamed(chat_answer(fields), [scripted(*deltas)])
    return [json.loads(str(payload)) for payload in payloads[:-1]]


def test_each_streamed_chunk_carries_the_logprobs_of_its_text() -> None:
    chunks = stream({"logprobs": True}, TextDelta("Hello", (HELLO, LO)), TextDelta("é", (CAFE,)))
    choices = [chunk["choices"][0] for chunk in chunks]
    assert [c["delta"].get("content") for c in choices] == ["", "Hello", "é", None]
    assert choices[0]["logprobs"] is None  # the role chunk
    assert [t["token"] for t in choices[1]["logprobs"]["content"]] == ["Hel", "lo"]
    assert [t["token"] for t in choices[2]["logprobs"]["content"]] == ["é"]
    assert choices[3]["logprobs"] is None and choices[3]["finish_reason"] == "stop"


def test_logprobs_of_text_held_back_as_a_possible_tool_call_come_with_its_release() -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    chunks = stream(
        {"logprobs": True, "tools": tools},
        TextDelta("{", (token("{", -0.1),)),
        TextDelta('"x', (token('"x', -0.2),)),  # not `{"tool_calls"`: released as content
        TextDelta("!", (token("!", -0.3),)),
    )
    choices = [chunk["choices"][0] for chunk in chunks]
    assert [c["delta"].get("content") for c in choices] == ["", '{"x', "!", None]
    assert [t["token"] for t in choices[1]["logprobs"]["content"]] == ["{", '"x']
    assert [t["token"] for t in choices[2]["logprobs"]["content"]] == ["!"]
