"""The token stream's wire format: the frames and chunks built on the fast path are the bytes the
general path (sse-starlette's encoder, pydantic's serialiser) makes."""

from __future__ import annotations

import asyncio
import json

import pytest
from sse_starlette import EventSourceResponse
from sse_starlette.event import ensure_bytes
from sse_starlette.sse import SendTimeoutError
from starlette.types import Message

from server.api.chat_answer import ChatAnswer
from server.api.chat_protocol import ChunkChoice, Delta
from server.api.sse import EventStream, sse_frame
from server.engine.contract import Finished, TextDelta, Usage
from tests.unit.answers import scripted, streamed

TEXTS = [
    "Hello",
    "",
    ' "quoted" and \\ back',
    "line\nbreak\r\tand\x00nul\x1f\x7f",
    "Grüße, 世界 🙂",
    "\u2028\u2029</script>",
    "\x00gemma-serve-text\x00",  # the mark the template is cut around
]


@pytest.mark.parametrize(
    "payload",
    ['{"a":1}', "[DONE]", "two\nlines", "cr\rhere", {"event": "ping", "data": "{}"}],
)
def test_a_frame_is_sse_starlettes_encoding(payload: str | dict[str, str]) -> None:
    assert sse_frame(payload) == ensure_bytes(payload, "\n")


@pytest.mark.parametrize("include_usage", [False, True])
def test_each_text_chunk_is_the_chunk_pydantic_serialises(include_usage: bool) -> None:
    """Byte for byte, for every choice index and text (escapes, non-ASCII, the template's mark)."""
    answer = ChatAnswer("chatcmpl-1", 1_700_000_000, "gemma-3-4b", n=2, include_usage=include_usage)
    generations = [
        scripted(*[TextDelta(text) for text in TEXTS], Finished("stop", Usage(5, 7)))
        for _ in range(2)
    ]
    events = streamed(answer, generations)
    for index in range(2):
        general = [
            answer._chunk([ChunkChoice(index=index, delta=Delta(content=text))]) for text in TEXTS
        ]
        mine = [
            e for e in events if isinstance(e, str) and f'"index":{index},"delta":{{"content"' in e
        ]
        assert mine == general  # (the role chunk, `{"role": ...}` first, is not among them)


def test_a_streamed_answer_reads_as_before() -> None:
    """Text chunks (fast path) between the role chunk and the finishing one (general path)."""
    answer = ChatAnswer("chatcmpl-1", 1_700_000_000, "gemma-3-4b", n=2)
    generations = [
        scripted(*[TextDelta(text) for text in TEXTS], Finished("stop", Usage(5, 7))),
        scripted(TextDelta("b"), Finished("length", Usage(5, 1))),
    ]
    payloads = [json.loads(event) for event in streamed(answer, generations)[:-1]]  # no [DONE]
    texts: dict[int, str] = {0: "", 1: ""}
    for payload in payloads:
        assert payload["object"] == "chat.completion.chunk" and payload["id"] == "chatcmpl-1"
        assert "usage" not in payload
        (choice,) = payload["choices"]
        texts[choice["index"]] += choice["delta"].get("content", "")
    assert texts == {0: "".join(TEXTS), 1: "b"}
    finishes = [
        p["choices"][0]["finish_reason"] for p in payloads if p["choices"][0]["finish_reason"]
    ]
    assert sorted(finishes) == ["length", "stop"]


def test_the_send_hook_exists_and_a_set_timeout_still_applies() -> None:
    # EventStream overrides this private method: a renamed one would leave the override unused.
    assert "_send_with_timeout" in vars(EventSourceResponse)
    sent: list[Message] = []

    async def slow_send(message: Message) -> None:
        await asyncio.sleep(1)
        sent.append(message)

    async def send(message: Message) -> None:
        sent.append(message)

    message: Message = {"type": "http.response.body", "body": b"x", "more_body": True}
    untimed = EventStream(iter(()))
    asyncio.run(untimed._send_with_timeout(send, message))
    assert sent == [message]
    timed = EventStream(iter(()), send_timeout=0.01)
    with pytest.raises(SendTimeoutError):
        asyncio.run(timed._send_with_timeout(slow_send, message))
