"""Legacy completions (`POST /v1/completions`) end to end: the real server and engine with the
bundled Gemma 3 270M, driven by the official OpenAI SDK and raw HTTP. Covers each field, each
error (status, type, code, param) and the stream format."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import MODEL_ID, SERVER_CTX
from tests.e2e.test_errors import assert_error

# The chat template's rendering of [{"role": "user", "content": "Hi"}] (without <bos>, which a
# raw prompt gets automatically): as a raw prompt its special tokens must be parsed.
CHAT_HI = "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
COUNTING = "1, 2, 3,"  # greedy continuation: " 4, 5, 6, 7, ..."
FRANCE = "The capital of France is"
BANANA = 30077  # the token " banana"


def complete(http: httpx.Client, **fields: Any) -> httpx.Response:
    return http.post("/v1/completions", json={"model": MODEL_ID, **fields})


def test_completion_with_the_sdk(openai_client) -> None:  # type: ignore[no-untyped-def]
    completion = openai_client.completions.create(
        model=MODEL_ID, prompt=COUNTING, max_tokens=8, temperature=0
    )
    assert completion.object == "text_completion"
    assert completion.id.startswith("cmpl-")
    assert completion.model == MODEL_ID
    [choice] = completion.choices
    assert choice.index == 0
    assert choice.text.startswith(" 4, 5, 6")
    assert choice.finish_reason == "length"
    assert choice.logprobs is None
    # <bos> 1 , ▁ 2 , ▁ 3 , -> 9 tokens
    assert completion.usage.prompt_tokens == 9
    assert completion.usage.completion_tokens == 8
    assert completion.usage.total_tokens == 17


def test_max_tokens_defaults_to_16(http: httpx.Client) -> None:
    body = complete(http, prompt=COUNTING, temperature=0).json()
    assert body["usage"]["completion_tokens"] == 16
    assert body["choices"][0]["finish_reason"] == "length"


def test_a_raw_prompt_parses_special_tokens_like_the_chat_template(openai_client) -> None:  # type: ignore[no-untyped-def]
    chat = openai_client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": "Hi"}], max_tokens=12, temperature=0
    )
    for prompt in (CHAT_HI, "<bos>" + CHAT_HI):  # <bos> is added once, unless already there
        raw = openai_client.completions.create(
            model=MODEL_ID, prompt=prompt, max_tokens=12, temperature=0
        )
        assert raw.usage.prompt_tokens == chat.usage.prompt_tokens == 10
        assert raw.choices[0].text == chat.choices[0].message.content


def test_echo_prepends_the_prompt(openai_client) -> None:  # type: ignore[no-untyped-def]
    plain = openai_client.completions.create(
        model=MODEL_ID, prompt=COUNTING, max_tokens=4, temperature=0
    )
    echoed = openai_client.completions.create(
        model=MODEL_ID, prompt=COUNTING, max_tokens=4, temperature=0, echo=True
    )
    assert echoed.choices[0].text == COUNTING + plain.choices[0].text


def test_a_prompt_list_times_n_gives_prompt_major_choices(openai_client) -> None:  # type: ignore[no-untyped-def]
    completion = openai_client.completions.create(
        model=MODEL_ID, prompt=[COUNTING, FRANCE], n=2, max_tokens=4, temperature=0
    )
    assert [choice.index for choice in completion.choices] == [0, 1, 2, 3]
    texts = [choice.text for choice in completion.choices]
    assert texts[0] == texts[1] and texts[0].startswith(" 4,")
    assert texts[2] == texts[3] and texts[2] != texts[0]
    # each prompt counted once: 9 + 6 tokens (<bos> The capital of France is)
    assert completion.usage.prompt_tokens == 9 + 6
    assert completion.usage.completion_tokens == 4 * 4


SEEDED = {"prompt": FRANCE, "max_tokens": 8, "temperature": 1.0, "seed": 1234}


def seeded_texts(http: httpx.Client) -> tuple[str, str, str, list[str]]:
    """The seeded prompt alone, alone again, second in a list, and as both samples of n=2."""
    first = complete(http, **SEEDED).json()["choices"][0]["text"]
    again = complete(http, **SEEDED).json()["choices"][0]["text"]
    listed = complete(http, **{**SEEDED, "prompt": [COUNTING, FRANCE]}).json()["choices"][1]
    samples = complete(http, **{**SEEDED, "n": 2}).json()["choices"]
    return first, again, listed["text"], [sample["text"] for sample in samples]


def test_the_same_seed_gives_the_same_text_when_repeated(http: httpx.Client) -> None:
    # Beside other sequences (a list, n) flash attention's arithmetic may differ after a near
    # tie; without it the texts agree (tests/e2e/test_exact_mode.py).
    first, again, _, samples = seeded_texts(http)
    assert first == again
    # with n, sample j uses seed + j: the samples differ (8 tokens at temperature 1)
    assert samples[0] != samples[1]


def test_stop_strings_end_the_text_and_are_not_included(http: httpx.Client) -> None:
    body = complete(http, prompt=COUNTING, max_tokens=16, temperature=0, stop=[" 6", "x"]).json()
    assert body["choices"][0]["text"] == " 4, 5,"
    assert body["choices"][0]["finish_reason"] == "stop"


def test_logit_bias_forces_and_bans_tokens(http: httpx.Client) -> None:
    forced = complete(
        http, prompt=FRANCE, max_tokens=5, temperature=0, logit_bias={str(BANANA): 100}
    ).json()
    assert forced["choices"][0]["text"] == " banana" * 5
    plain = complete(http, prompt=FRANCE, max_tokens=1, temperature=0).json()["choices"][0]
    assert plain["text"] == " the"  # token 506
    banned = complete(
        http, prompt=FRANCE, max_tokens=1, temperature=0, logit_bias={"506": -100}
    ).json()
    assert banned["choices"][0]["text"] != " the"


def test_penalties_top_p_and_user_are_accepted(http: httpx.Client) -> None:
    response = complete(
        http,
        prompt=COUNTING,
        max_tokens=4,
        temperature=0.7,
        top_p=0.5,
        presence_penalty=1.5,
        frequency_penalty=1.5,
        user="someone",
        best_of=1,
        vendor_extra=True,
    )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 4


def test_logprobs_object_shape_when_asked(http: httpx.Client) -> None:
    body = complete(http, prompt=COUNTING, max_tokens=4, temperature=0, logprobs=2).json()
    logprobs = body["choices"][0]["logprobs"]
    assert set(logprobs) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    lengths = {len(values) for values in logprobs.values()}
    assert len(lengths) == 1


def test_logprobs_cover_every_generated_token(http: httpx.Client) -> None:
    body = complete(http, prompt=COUNTING, max_tokens=4, temperature=0, logprobs=2).json()
    choice = body["choices"][0]
    logprobs = choice["logprobs"]
    assert len(logprobs["tokens"]) == 4
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert logprobs["text_offset"][0] == 0
    assert all(lp <= 0 for lp in logprobs["token_logprobs"])
    # greedy: the sampled token is the most likely one; top holds up to logprobs + 1 entries
    for sampled, logprob, top in zip(
        logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True
    ):
        assert 2 <= len(top) <= 3
        assert top[sampled] == logprob == max(top.values())


# --- streaming ------------------------------------------------------------------------------


def test_streaming_with_the_sdk_matches_the_whole_completion(openai_client) -> None:  # type: ignore[no-untyped-def]
    args = {"model": MODEL_ID, "prompt": COUNTING, "max_tokens": 10, "temperature": 0}
    whole = openai_client.completions.create(**args)
    chunks = list(
        openai_client.completions.create(
            **args, stream=True, stream_options={"include_usage": True}
        )
    )
    assert len({chunk.id for chunk in chunks}) == 1
    assert all(chunk.object == "text_completion" for chunk in chunks)
    text = "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].text
    finishes = [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices]
    assert finishes[-1] == "length" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 10
    assert chunks[-1].usage.prompt_tokens == 9


def test_sse_wire_format_with_echo_and_several_choices(http: httpx.Client) -> None:
    body = {
        "model": MODEL_ID,
        "prompt": [COUNTING, FRANCE],
        "max_tokens": 3,
        "temperature": 0,
        "echo": True,
        "stream": True,
    }
    with http.stream("POST", "/v1/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if not line.startswith(":")]
    events = [line for line in lines if line]
    assert all(line.startswith("data: ") for line in events), events
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: ") :]) for line in events[:-1]]
    assert all("usage" not in chunk for chunk in chunks)
    by_choice: dict[int, list[dict[str, Any]]] = {}
    for chunk in chunks:
        [choice] = chunk["choices"]
        by_choice.setdefault(choice["index"], []).append(choice)
    assert list(by_choice) == [0, 1]  # streamed one after the other
    for index, prompt in enumerate((COUNTING, FRANCE)):
        choices = by_choice[index]
        assert choices[0]["text"] == prompt  # the echo comes first
        assert [c["finish_reason"] for c in choices] == [None] * (len(choices) - 1) + ["length"]
        assert choices[-1]["text"] == ""


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"suffix": "the end"}, "suffix", "unsupported_parameter"),
        ({"prompt": [1, 2, 3]}, "prompt[0]", "unsupported_value"),
        ({"prompt": [[1, 2, 3]]}, "prompt[0]", "unsupported_value"),
        ({"prompt": []}, "prompt", "invalid_value"),
        ({"best_of": 2}, "best_of", "unsupported_value"),
        ({"echo": True, "logprobs": 1}, "echo", "unsupported_parameter"),
        ({"n": 5}, "n", "invalid_value"),
        ({"n": 0}, "n", "invalid_value"),
        ({"logprobs": 6}, "logprobs", "invalid_value"),
        ({"max_tokens": 0}, "max_tokens", "invalid_value"),
        ({"temperature": 2.5}, "temperature", "invalid_value"),
        ({"top_p": 2}, "top_p", "invalid_value"),
        ({"presence_penalty": -3}, "presence_penalty", "invalid_value"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
        ({"logit_bias": {"banana": 1}}, "logit_bias", "invalid_value"),
        ({"logit_bias": {"1": 200}}, "logit_bias", "invalid_value"),
        ({"logit_bias": {"999999999": -100}}, "logit_bias", "invalid_value"),
        ({"prompt": None}, "prompt", "invalid_value"),
        ({"prompt": {"text": "Hi"}}, "prompt", "invalid_value"),
        ({"stream": "yes please"}, "stream", "invalid_value"),
    ],
)
def test_invalid_requests_are_400_naming_the_field(
    http: httpx.Client, fields: dict[str, Any], param: str, code: str
) -> None:
    body = {"prompt": "Hi", "max_tokens": 2, **fields}
    error = assert_error(complete(http, **body), 400, param=param, code=code)
    assert error["type"] == "invalid_request_error"


def test_a_missing_prompt_or_model_is_400(http: httpx.Client) -> None:
    assert_error(complete(http, max_tokens=2), 400, param="prompt")
    response = http.post("/v1/completions", json={"prompt": "Hi", "max_tokens": 2})
    assert_error(response, 400, param="model")


def test_an_unknown_model_is_404_with_the_sdk(openai_client) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.NotFoundError) as caught:
        openai_client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Hi", max_tokens=2)
    assert caught.value.body["code"] == "model_not_found"
    assert caught.value.body["param"] == "model"


def test_a_suffix_is_refused_through_the_sdk_unless_empty(openai_client) -> None:  # type: ignore[no-untyped-def]
    args = {"model": MODEL_ID, "prompt": "def f(", "max_tokens": 2}
    assert openai_client.completions.create(**args, suffix="").choices[0].text
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.completions.create(**args, suffix=")")
    assert caught.value.body["param"] == "suffix"


@pytest.mark.parametrize("stream", [False, True])
def test_context_length_exceeded_before_any_byte(http: httpx.Client, stream: bool) -> None:
    long_prompt = "word " * SERVER_CTX
    body = {"model": MODEL_ID, "prompt": long_prompt, "max_tokens": 4, "stream": stream}
    with http.stream("POST", "/v1/completions", json=body) as response:
        response.read()
    assert response.headers["content-type"].startswith("application/json")
    error = assert_error(response, 400, param="prompt", code="context_length_exceeded")
    assert "in the prompt" in error["message"]


def test_context_length_names_the_prompt_of_a_list(http: httpx.Client) -> None:
    response = complete(http, prompt=["Hi", "word " * SERVER_CTX], max_tokens=4)
    assert_error(response, 400, param="prompt[1]", code="context_length_exceeded")


def test_max_tokens_beyond_the_context_is_400(http: httpx.Client) -> None:
    response = complete(http, prompt="Hi", max_tokens=SERVER_CTX)
    assert_error(response, 400, param="prompt", code="context_length_exceeded")


def capacity(http: httpx.Client) -> int:
    """Sequences the server can ever hold: its parallel count (on the CPU 4, 8 or 16, timed as
    the model loads) and the default queue of 64."""
    return int(http.get("/health").json()["parallel"]) + 64


def test_a_request_bigger_than_the_server_is_400_naming_the_field(http: httpx.Client) -> None:
    # 32 prompts x 4 choices = 128 sequences, more than 4, 8 or 16 generating + 64 waiting. An
    # idle server used to answer 503 "try again", which could never succeed.
    held = capacity(http)
    response = complete(http, prompt=["a"] * 32, n=4, max_tokens=1)
    error = assert_error(response, 400, param="n", code="invalid_value")
    assert "128" in error["message"] and f"({held}:" in error["message"]
    assert "retry-after" not in response.headers


def test_a_prompt_list_within_the_server_is_served(http: httpx.Client) -> None:
    held = capacity(http)  # 68, 72 or 80: a whole number of 4-choice prompts
    response = complete(http, prompt=["a"] * (held // 4), n=4, max_tokens=1)  # exactly full
    assert response.status_code == 200, response.text
    assert [choice["index"] for choice in response.json()["choices"]] == list(range(held))
