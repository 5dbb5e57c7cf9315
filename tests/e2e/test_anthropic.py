"""Anthropic's Messages API end to end: the real server and engine with the bundled Gemma 3 270M,
through the official `anthropic` SDK (messages.create plain, streamed, with a forced tool;
count_tokens; errors) and raw SSE (Anthropic's event order)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import anthropic
import httpx
import pytest

from tests.conftest import MODEL_ID

HI = [{"role": "user", "content": "Hi"}]
CITY_TOOL = {
    "name": "weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"enum": ["Paris", "Rome"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
GREEDY = {"temperature": 0}


@pytest.fixture
def client(base_url: str) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=base_url, api_key="not-needed", max_retries=0, timeout=120
    ) as sdk:
        yield sdk


def test_create(client: anthropic.Anthropic, openai_client) -> None:  # type: ignore[no-untyped-def]
    message = client.messages.create(model=MODEL_ID, max_tokens=8, messages=HI, extra_body=GREEDY)
    assert message.role == "assistant" and message.model == MODEL_ID
    assert message.stop_reason == "max_tokens"
    [block] = message.content
    assert block.type == "text" and block.text
    usage = message.usage
    assert usage.input_tokens + (usage.cache_read_input_tokens or 0) == 10  # chat's "Hi" prompt
    assert usage.output_tokens == 8
    chat = openai_client.chat.completions.create(
        model=MODEL_ID, messages=HI, max_tokens=8, temperature=0
    )
    assert block.text == chat.choices[0].message.content


def test_stream_adds_up_to_the_whole(client: anthropic.Anthropic) -> None:
    whole = client.messages.create(model=MODEL_ID, max_tokens=6, messages=HI, extra_body=GREEDY)
    with client.messages.stream(
        model=MODEL_ID, max_tokens=6, messages=HI, extra_body=GREEDY
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text  # type: ignore[union-attr]
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 6


def test_a_forced_tool_call(client: anthropic.Anthropic) -> None:
    message = client.messages.create(
        model=MODEL_ID,
        max_tokens=60,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[CITY_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "tool", "name": "weather"},
    )
    assert message.stop_reason == "tool_use"
    [call] = [block for block in message.content if block.type == "tool_use"]
    assert call.name == "weather" and call.input["city"] in ("Paris", "Rome")  # type: ignore[index]
    answered = client.messages.create(
        model=MODEL_ID,
        max_tokens=8,
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {"role": "assistant", "content": [call.model_dump()]},  # type: ignore[list-item]
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "Sunny"}],
            },
        ],
        tools=[CITY_TOOL],  # type: ignore[list-item]
    )
    assert answered.stop_reason in ("end_turn", "max_tokens", "tool_use")


def test_the_sse_event_order(http: httpx.Client) -> None:
    body = {"model": MODEL_ID, "max_tokens": 4, "messages": HI, "stream": True}
    names = []
    with http.stream("POST", "/v1/messages", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                names.append(json.loads(line[6:])["type"])
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert set(names[3:-3]) == {"content_block_delta"}
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_count_tokens_matches_the_message(client: anthropic.Anthropic) -> None:
    counted = client.messages.count_tokens(model=MODEL_ID, messages=HI, system="Be brief.")
    message = client.messages.create(model=MODEL_ID, max_tokens=1, messages=HI, system="Be brief.")
    usage = message.usage
    assert counted.input_tokens == usage.input_tokens + (usage.cache_read_input_tokens or 0)


def test_a_repeated_prompt_reads_the_cache(client: anthropic.Anthropic) -> None:
    system = "You answer questions about the weather, briefly and politely. " * 8
    for _ in range(2):
        message = client.messages.create(model=MODEL_ID, max_tokens=1, system=system, messages=HI)
    assert message.usage.cache_read_input_tokens and message.usage.cache_read_input_tokens > 50


def test_errors_are_the_sdks_own(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="claude-opus-4-1", max_tokens=8, messages=HI)  # type: ignore[arg-type]
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model=MODEL_ID,
            max_tokens=8,
            messages=HI,
            thinking={"type": "enabled", "budget_tokens": 1024},
        )
    assert "thinking" in str(caught.value)


def test_a_stop_sequence_is_named(client: anthropic.Anthropic) -> None:
    whole = client.messages.create(model=MODEL_ID, max_tokens=8, messages=HI, extra_body=GREEDY)
    text = whole.content[0].text  # type: ignore[union-attr]
    stop = text[len(text) // 2 :][:3]
    message = client.messages.create(
        model=MODEL_ID, max_tokens=8, messages=HI, stop_sequences=[stop], extra_body=GREEDY
    )
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == stop
    cut = "".join(block.text for block in message.content if block.type == "text")
    assert cut == text[: text.index(stop)]  # the text before the stop string, without it
