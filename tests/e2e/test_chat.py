"""Chat completions end to end: the real server, the real engine and the bundled Gemma 3 270M,
driven by the official OpenAI SDK and by raw HTTP."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import (
    MODEL_ID,
    NEVER_END,
    SERVER_CTX,
    start_server,
    stop_server,
    wait_healthy,
)
from tests.e2e.test_batching import BUSY_MACHINE, wait_idle

HI = [{"role": "user", "content": "Hi"}]
# A prompt the bundled base model keeps writing on for hundreds of tokens at temperature 0
# (checked by `test_long_prompt_really_runs_long`), for tests that need a long generation.
LONG = [{"role": "user", "content": "Write a long story about a dragon."}]


def test_non_streaming_completion_with_the_sdk(openai_client) -> None:  # type: ignore[no-untyped-def]
    completion = openai_client.chat.completions.create(model=MODEL_ID, messages=HI, max_tokens=16)
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == MODEL_ID
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert "<end_of_turn>" not in choice.message.content
    assert choice.finish_reason in ("stop", "length")
    usage = completion.usage
    assert (
        usage.prompt_tokens == 10
    )  # <bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n
    assert 0 < usage.completion_tokens <= 16
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streaming_completion_with_the_sdk(openai_client) -> None:  # type: ignore[no-untyped-def]
    stream = openai_client.chat.completions.create(
        model=MODEL_ID,
        messages=HI,
        max_tokens=16,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert len({chunk.id for chunk in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert all(reason is None for reason in finishes[:-1])
    assert finishes[-1] in ("stop", "length")
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens > 0


def test_sse_wire_format_line_by_line(http: httpx.Client) -> None:
    body = {
        "model": MODEL_ID,
        "messages": HI,
        "max_tokens": 8,
        "logit_bias": NEVER_END,  # the answer always runs to max_tokens ("length")
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if not line.startswith(":")]
    events = [line for line in lines if line]
    assert all(line.startswith("data: ") for line in events), events
    # every event is followed by a blank line
    assert all(lines[i + 1] == "" for i, line in enumerate(lines[:-1]) if line), lines
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: ") :]) for line in events[:-1]]
    assert {chunk["id"] for chunk in chunks} == {chunks[0]["id"]}
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    choice_chunks = [chunk for chunk in chunks if chunk["choices"]]
    assert all(c["choices"][0]["finish_reason"] is None for c in choice_chunks[:-1])
    assert choice_chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert choice_chunks[-1]["choices"][0]["delta"] == {}
    usage_chunk = chunks[-1]
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 8
    assert all(chunk["usage"] is None for chunk in chunks[:-1])


def test_stream_without_include_usage_has_no_usage(http: httpx.Client) -> None:
    body = {"model": MODEL_ID, "messages": HI, "max_tokens": 4, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    chunks = [json.loads(line[6:]) for line in events[:-1]]
    assert all("usage" not in chunk and chunk["choices"] for chunk in chunks)


def test_stream_and_non_stream_give_the_same_text_at_temperature_0(openai_client) -> None:  # type: ignore[no-untyped-def]
    args = {"model": MODEL_ID, "messages": LONG, "max_tokens": 40, "temperature": 0}
    whole = openai_client.chat.completions.create(**args).choices[0].message.content
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in openai_client.chat.completions.create(**args, stream=True)
        if c.choices
    )
    assert whole and streamed == whole


def test_long_prompt_really_runs_long(openai_client) -> None:  # type: ignore[no-untyped-def]
    completion = openai_client.chat.completions.create(
        model=MODEL_ID, messages=LONG, max_tokens=150, temperature=0
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 150


def test_max_tokens_and_max_completion_tokens_are_honoured(openai_client) -> None:  # type: ignore[no-untyped-def]
    for field in ("max_tokens", "max_completion_tokens"):
        completion = openai_client.chat.completions.create(
            model=MODEL_ID, messages=LONG, temperature=0, **{field: 5}
        )
        assert completion.usage.completion_tokens == 5
        assert completion.choices[0].finish_reason == "length"


def test_same_seed_gives_the_same_text(openai_client) -> None:  # type: ignore[no-untyped-def]
    def sample(seed: int) -> str:
        return (
            openai_client.chat.completions.create(
                model=MODEL_ID, messages=LONG, max_tokens=24, temperature=1.0, seed=seed
            )
            .choices[0]
            .message.content
        )

    first = sample(1234)
    assert sample(1234) == first
    assert sample(99) != first


def test_top_p_is_honoured(openai_client) -> None:  # type: ignore[no-untyped-def]
    # top_p close to 0 keeps only the most likely token: sampling becomes greedy. Both seeded, so
    # both decode the prompt's last token alone (llama.cpp's flash attention computes a prompt's
    # logits otherwise than a lone token's, which a near tie in this text can tell apart).
    args = {"model": MODEL_ID, "messages": LONG, "max_tokens": 24}
    greedy = openai_client.chat.completions.create(**args, temperature=0, seed=5)
    nucleus = openai_client.chat.completions.create(**args, temperature=1.5, top_p=0.0001, seed=5)
    assert nucleus.choices[0].message.content == greedy.choices[0].message.content


@pytest.mark.parametrize("stream", [False, True])
def test_stop_string_spanning_tokens_ends_generation_and_is_not_emitted(
    openai_client,
    stream: bool,  # type: ignore[no-untyped-def]
) -> None:
    args = {"model": MODEL_ID, "messages": LONG, "max_tokens": 60, "temperature": 0}
    baseline = openai_client.chat.completions.create(**args).choices[0].message.content
    stop = baseline[20:27]
    assert len(stop) == 7
    if stream:
        chunks = list(openai_client.chat.completions.create(**args, stop=[stop], stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    else:
        choice = openai_client.chat.completions.create(**args, stop=stop).choices[0]
        text, finish = choice.message.content, choice.finish_reason
    assert text == baseline[: baseline.index(stop)]
    assert finish == "stop"


def test_health_answers_quickly_while_a_long_generation_streams(
    http: httpx.Client, base_url: str
) -> None:
    body = {
        "model": MODEL_ID,
        "messages": LONG,
        "max_tokens": 150,
        "temperature": 0,
        "stream": True,
    }
    # Not a speed bound (the machine may be busy): /health answers while the generation runs,
    # not after it, so each answer still counts it. The first lines (the role chunk) may come
    # before the engine thread has admitted the generation (an idle engine's thread starts
    # anew): it is counted as queued then, as active once it generates.
    with (
        httpx.Client(base_url=base_url, timeout=60) as probe,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        lines = response.iter_lines()
        for _ in range(5):
            next(lines)  # the stream is flowing
            health = probe.get("/health")
            assert health.status_code == 200
            counts = health.json()
            assert counts["active"] + counts["queued"] == 1, counts
        assert counts["active"] == 1, counts  # by the fifth line it generates
        assert sum(1 for line in lines if line.startswith("data: ")) > 50  # still generating


@pytest.fixture(scope="module")
def one_sequence(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A server that generates ONE sequence at a time: a generation leaked by a disconnect
    would hold it, and the next request would wait behind it (and fail its time bound)."""
    running = start_server(
        tmp_path_factory.mktemp("one"), "--ctx", str(SERVER_CTX), "--parallel", "1"
    )
    try:
        wait_healthy(running)
        with httpx.Client(base_url=running.base_url, timeout=120) as client:
            yield client
    finally:
        stop_server(running)


def assert_the_sequence_is_freed(client: httpx.Client) -> None:
    """The one sequence goes idle and serves the next request. A leaked generation (4000 tokens,
    over a minute even on an idle machine) would keep it busy past these generous bounds."""
    wait_idle(client, within=BUSY_MACHINE)
    quick = client.post(
        "/v1/chat/completions", json={"model": MODEL_ID, "messages": HI, "max_tokens": 2}
    )
    assert quick.status_code == 200


def test_disconnecting_from_a_stream_stops_its_generation(one_sequence: httpx.Client) -> None:
    # LONG runs for well over 150 tokens (see above); at max_tokens 4000 it would hold the
    # engine's one sequence for over a minute if the disconnect did not stop it.
    body = {
        "model": MODEL_ID,
        "messages": LONG,
        "max_tokens": 4000,
        "temperature": 0,
        "stream": True,
    }
    with one_sequence.stream("POST", "/v1/chat/completions", json=body) as response:
        data = (line for line in response.iter_lines() if line.startswith("data: "))
        for _ in range(3):
            next(data)
        assert one_sequence.get("/health").json()["active"] == 1
    assert_the_sequence_is_freed(one_sequence)


def test_disconnecting_from_a_non_streaming_request_stops_its_generation(
    one_sequence: httpx.Client,
) -> None:
    body = {"model": MODEL_ID, "messages": LONG, "max_tokens": 4000, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{one_sequence.base_url}/v1/chat/completions", json=body, timeout=1.5)
    assert_the_sequence_is_freed(one_sequence)


def test_models_lists_the_loaded_model(openai_client) -> None:  # type: ignore[no-untyped-def]
    models = openai_client.models.list()
    assert [model.id for model in models.data] == [MODEL_ID]
    assert models.data[0].object == "model"
    assert openai_client.models.retrieve(MODEL_ID).id == MODEL_ID


def test_a_model_card_says_what_runs_and_where(http: httpx.Client) -> None:
    card = http.get(f"/v1/models/{MODEL_ID}").json()
    assert card["owned_by"] == "gemma-serve" and isinstance(card["created"], int)
    assert card["quantization"] == "Q4_K_M"
    assert card["file_size"] == 253113024
    assert card["context_length"] == SERVER_CTX  # the loaded context, not the trained one
    assert card["trained_context_length"] == 32768
    assert card["device"] == "cpu"  # this llama.cpp build has no GPU offload
    assert card["flash_attn"] is True  # the default, on the CPU too (--no-flash-attn: off)


def test_health_is_ok_when_ready(http: httpx.Client) -> None:
    response = http.get("/health")
    assert response.status_code == 200
    health = response.json()
    assert health["status"] == "ok"
    # the CPU plan's count, timed as the model loads: 4, or more where the cores gain from it
    assert health["parallel"] in (4, 8, 16)
    assert {type(health["active"]), type(health["queued"])} == {int}


def test_n_choices_non_streaming(openai_client) -> None:  # type: ignore[no-untyped-def]
    # <eos> and <end_of_turn> banned: every choice runs its 12 tokens, whatever it samples
    args = {"model": MODEL_ID, "messages": LONG, "max_tokens": 12, "temperature": 1.0, "seed": 7}
    args["logit_bias"] = NEVER_END
    completion = openai_client.chat.completions.create(**args, n=3)
    assert [choice.index for choice in completion.choices] == [0, 1, 2]
    texts = [choice.message.content for choice in completion.choices]
    assert len(set(texts)) > 1  # sampled with different seeds
    assert completion.usage.completion_tokens == 36  # every choice counted
    assert (
        completion.usage.prompt_tokens
        == openai_client.chat.completions.create(**args).usage.prompt_tokens
    )  # the prompt once
    again = openai_client.chat.completions.create(**args, n=3)
    assert [choice.message.content for choice in again.choices] == texts  # reproducible


def test_n_choices_streaming(openai_client) -> None:  # type: ignore[no-untyped-def]
    args = {"model": MODEL_ID, "messages": LONG, "max_tokens": 8, "temperature": 0, "n": 2}
    whole = openai_client.chat.completions.create(**args)
    chunks = list(
        openai_client.chat.completions.create(
            **args, stream=True, stream_options={"include_usage": True}
        )
    )
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
    assert texts == {i: c.message.content for i, c in enumerate(whole.choices)}
    assert finishes == {0: "length", 1: "length"}
    assert chunks[-1].usage.completion_tokens == 16


@pytest.mark.parametrize(
    ("path", "field", "usage_key", "details_key"),
    [
        ("/v1/chat/completions", "messages", "prompt_tokens", "prompt_tokens_details"),
        ("/v1/completions", "prompt", "prompt_tokens", "prompt_tokens_details"),
        ("/v1/responses", "input", "input_tokens", "input_tokens_details"),
    ],
)
def test_a_repeated_long_prompt_reports_its_cached_tokens(
    http: httpx.Client, path: str, field: str, usage_key: str, details_key: str
) -> None:
    # A prompt no earlier request shares more than a few template tokens with.
    text = f"{uuid.uuid4().hex} " + "The quick brown fox jumps over the lazy dog. " * 20
    content: object = [{"role": "user", "content": text}] if field == "messages" else text
    body = {"model": MODEL_ID, field: content, "temperature": 0}
    body["max_output_tokens" if path == "/v1/responses" else "max_tokens"] = 1
    first, second = (http.post(path, json=body).json()["usage"] for _ in range(2))
    assert first[details_key]["cached_tokens"] == 0
    assert 0 < second[details_key]["cached_tokens"] < second[usage_key]
