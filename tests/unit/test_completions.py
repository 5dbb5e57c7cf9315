"""Legacy completions: request validation, the mapping of each field onto the engine, and the
conversion of scripted engine events (logprobs included) into completions and stream chunks."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import pytest
from pydantic import ValidationError

from server.api.completions import (
    CompletionAnswer,
    to_completion_plan,
    to_legacy_logprobs,
)
from server.api.completions_protocol import Completion, CompletionRequest
from server.api.errors import APIError
from server.engine.contract import (
    Event,
    Finished,
    GenerationRequest,
    SamplingParams,
    TextDelta,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from tests.unit.answers import scripted, streamed, whole


def request(**fields: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "gemma-3-270m", "prompt": "Hi", **fields})


def token(text: str, logprob: float, *top: tuple[str, float]) -> TokenLogprob:
    alternatives = tuple(TopLogprob(t, t.encode(), lp) for t, lp in top)
    return TokenLogprob(text, text.encode(), logprob, alternatives)


def to_generation_requests(body: CompletionRequest, max_choices: int) -> list[GenerationRequest]:
    return list(to_completion_plan(body, max_choices).generations.requests)


def frame(**fields: Any) -> CompletionAnswer:
    values: dict[str, Any] = {
        "completion_id": "cmpl-1",
        "created": 1,
        "model": "m",
        "n": 1,
        "prefixes": ("",),
        "with_logprobs": False,
        **fields,
    }
    return CompletionAnswer(**values)


def to_completion(
    generations: Sequence[AsyncGenerator[Event, None]], answer: CompletionAnswer
) -> Completion:
    return whole(answer, generations)


def stream(generations: Sequence[AsyncGenerator[Event, None]], **fields: Any) -> list[str]:
    events = streamed(frame(**fields), generations)
    assert all(isinstance(event, str) for event in events)
    return [str(event) for event in events]


# --- requests -----------------------------------------------------------------------------


def test_defaults_max_tokens_16_and_gemma_sampling() -> None:
    [generation] = to_generation_requests(request(), max_choices=4)
    assert generation.prompt == "Hi"
    assert generation.messages == ()
    assert generation.max_tokens == 16
    assert generation.sampling == SamplingParams()
    assert generation.logprobs is None


def test_fields_map_onto_the_engine() -> None:
    [generation] = to_generation_requests(
        request(
            max_tokens=9,
            temperature=0.5,
            top_p=0.9,
            top_k=5,
            min_p=0.2,
            presence_penalty=1,
            frequency_penalty=-1,
            seed=3,
            stop=["A", "", "B"],
            logit_bias={"42": -100, "7": 2.5},
            logprobs=3,
            user="u",
        ),
        max_choices=4,
    )
    assert generation.max_tokens == 9
    assert generation.sampling == SamplingParams(
        temperature=0.5,
        top_p=0.9,
        top_k=5,
        min_p=0.2,
        presence_penalty=1,
        frequency_penalty=-1,
        seed=3,
        logit_bias=((7, 2.5), (42, -100.0)),
    )
    assert generation.stop == ("A", "B")
    assert generation.logprobs == 3


def test_prompt_list_times_n_in_choice_order_with_seed_per_sample() -> None:
    generations = to_generation_requests(request(prompt=["a", "b"], n=2, seed=10), max_choices=4)
    assert [(g.prompt, g.sampling.seed) for g in generations] == [
        ("a", 10),
        ("a", 11),
        ("b", 10),
        ("b", 11),
    ]


def test_best_of_equal_to_n_is_accepted() -> None:
    assert len(to_generation_requests(request(n=2, best_of=2), max_choices=4)) == 2


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"suffix": "end"}, "suffix", "unsupported_parameter"),
        ({"best_of": 3}, "best_of", "unsupported_value"),
        ({"n": 2, "best_of": 1}, "best_of", "unsupported_value"),
        ({"n": 5}, "n", "invalid_value"),
        ({"echo": True, "logprobs": 0}, "echo", "unsupported_parameter"),
        ({"prompt": [1, 2, 3]}, "prompt[0]", "unsupported_value"),
        ({"prompt": [[1, 2]]}, "prompt[0]", "unsupported_value"),
        ({"prompt": []}, "prompt", "invalid_value"),
        ({"prompt": ["x"] * 33}, "prompt", "invalid_value"),
        ({"prompt": "\ud800"}, "prompt", "invalid_value"),
        ({"prompt": ["ok", "\ud800"]}, "prompt[1]", "invalid_value"),
        ({"logit_bias": {"abc": 1}}, "logit_bias", "invalid_value"),
        ({"logit_bias": {"-5": 1}}, "logit_bias", "invalid_value"),
        ({"logit_bias": {"1": 101}}, "logit_bias", "invalid_value"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name(
    fields: dict[str, Any], param: str, code: str
) -> None:
    with pytest.raises(APIError) as caught:
        to_generation_requests(request(**fields), max_choices=4)
    assert (caught.value.status, caught.value.param, caught.value.code) == (400, param, code)


def test_empty_suffix_and_echo_without_logprobs_are_fine() -> None:
    assert to_generation_requests(request(suffix="", echo=True), max_choices=4)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 2.5}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"n": 0}, "n"),
        ({"logprobs": 6}, "logprobs"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"frequency_penalty": -3}, "frequency_penalty"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"prompt": 5}, "prompt"),
    ],
)
def test_out_of_range_values_fail_validation(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        request(**fields)
    assert caught.value.errors()[0]["loc"][0] == field


def test_unknown_fields_are_ignored() -> None:
    assert request(vendor_extra={"x": 1}).prompt == "Hi"


# --- logprobs -----------------------------------------------------------------------------


def test_legacy_logprobs_shape_offsets_and_top_including_the_sampled_token() -> None:
    tokens = [token(" Hello", -0.5, (" Hello", -0.5), (" Hi", -1.0)), token(",", -2.0, (".", -1))]
    logprobs = to_legacy_logprobs(tokens, " Hello,", start=5)
    assert logprobs.tokens == [" Hello", ","]
    assert logprobs.token_logprobs == [-0.5, -2.0]
    assert logprobs.top_logprobs == [{" Hello": -0.5, " Hi": -1.0}, {".": -1, ",": -2.0}]
    assert logprobs.text_offset == [5, 11]


def test_a_token_without_text_of_its_own_gets_an_offset_inside_its_piece() -> None:
    # Half of a character: the engine reports the token with the text it completes.
    tokens = [token("\ufffd", -1.0), token("é", -1.0)]
    assert to_legacy_logprobs(tokens, "é", start=3).text_offset == [3, 4]


def test_logprobs_zero_gives_just_the_sampled_token_as_top() -> None:
    assert to_legacy_logprobs([token("a", -0.1)], "a", 0).top_logprobs == [{"a": -0.1}]


# --- whole completions and streams ----------------------------------------------------------


def test_completion_joins_deltas_echoes_and_counts_each_prompt_once() -> None:
    generations = [
        scripted(TextDelta(" x"), Finished("length", Usage(3, 1))),
        scripted(TextDelta(" y"), TextDelta("z"), Finished("stop", Usage(3, 2))),
        scripted(Finished("stop", Usage(5, 0))),
        scripted(TextDelta("!"), Finished("length", Usage(5, 1))),
    ]
    completion = to_completion(generations, frame(n=2, prefixes=("P", "P", "Q", "Q")))
    assert [(c.index, c.text, c.finish_reason) for c in completion.choices] == [
        (0, "P x", "length"),
        (1, "P yz", "stop"),
        (2, "Q", "stop"),
        (3, "Q!", "length"),
    ]
    assert completion.usage is not None
    assert completion.usage.model_dump() == {
        "prompt_tokens": 8,
        "completion_tokens": 4,
        "total_tokens": 12,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert completion.object == "text_completion"


def test_completion_with_logprobs_concatenates_them_with_offsets_across_deltas() -> None:
    generations = [
        scripted(
            TextDelta("ab", (token("a", -1.0), token("b", -2.0))),
            TextDelta("c", (token("c", -3.0),)),
            Finished("length", Usage(1, 3)),
        )
    ]
    completion = to_completion(generations, frame(with_logprobs=True))
    logprobs = completion.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.tokens == ["a", "b", "c"]
    assert logprobs.token_logprobs == [-1.0, -2.0, -3.0]
    assert logprobs.text_offset == [0, 1, 2]


def test_without_logprobs_the_choice_has_none() -> None:
    generations = [scripted(TextDelta("a"), Finished("stop", Usage(1, 1)))]
    assert to_completion(generations, frame()).choices[0].logprobs is None


def test_stream_chunks_echo_first_then_deltas_then_finish_then_usage_then_done() -> None:
    generations = [
        scripted(TextDelta(" x", (token(" x", -0.25),)), Finished("length", Usage(2, 1))),
        scripted(TextDelta(" y", (token(" y", -0.5),)), Finished("stop", Usage(2, 1))),
    ]
    events = stream(generations, n=2, prefixes=("", ""), with_logprobs=True, include_usage=True)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert {chunk["id"] for chunk in chunks} == {"cmpl-1"}
    assert [
        (c["choices"][0]["index"], c["choices"][0]["text"], c["choices"][0]["finish_reason"])
        for c in chunks[:-1]
    ] == [(0, " x", None), (0, "", "length"), (1, " y", None), (1, "", "stop")]
    assert chunks[0]["choices"][0]["logprobs"] == {
        "tokens": [" x"],
        "token_logprobs": [-0.25],
        "top_logprobs": [{" x": -0.25}],
        "text_offset": [0],
    }
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 2,
        "completion_tokens": 2,
        "total_tokens": 4,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert all(chunk["usage"] is None for chunk in chunks[:-1])


def test_stream_echo_chunk_and_no_usage_unless_asked() -> None:
    generations = [scripted(TextDelta(" x"), Finished("length", Usage(2, 1)))]
    events = stream(generations, prefixes=("Say",))
    chunks = [json.loads(event) for event in events[:-1]]
    assert [c["choices"][0]["text"] for c in chunks] == ["Say", " x", ""]
    assert all("usage" not in chunk for chunk in chunks)
    assert all(chunk["choices"][0]["logprobs"] is None for chunk in chunks)


def test_an_error_after_the_stream_started_is_one_error_event_then_done() -> None:
    async def failing() -> AsyncGenerator[Event, None]:
        yield TextDelta("a")
        raise RuntimeError("decode failed")

    events = stream([failing()])
    assert json.loads(events[0])["choices"][0]["text"] == "a"
    assert json.loads(events[1])["error"]["type"] == "server_error"
    assert events[2:] == ["[DONE]"]
