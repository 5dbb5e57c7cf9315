"""Anthropic's Messages API, answer side: engine events -> a `message`, or its SSE events.

Both read the one generation through chat's `ChoiceBuilder` (text, or tool calls read out of the
text), so a streamed and a whole answer cannot disagree, nor can Anthropic's tool calls and
OpenAI's. The stream is Anthropic's event sequence: `message_start`, then per content block
`content_block_start`, `content_block_delta`s (`text_delta`, or `input_json_delta` for a tool
call's input) and `content_block_stop`, a `ping` after the first block starts, then
`message_delta` (stop reason, final usage) and `message_stop`; an error after the start is an
`error` event.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from server.api.anthropic_protocol import (
    Message,
    MessageUsage,
    StopReason,
    TextOut,
    ToolUseOut,
)
from server.api.chat_choices import ChoiceBuilder, OutputOptions, StreamDelta
from server.api.serving_types import ServerEvent
from server.engine.contract import Event, Finished, TextDelta


def _event(name: str, **payload: Any) -> dict[str, str]:
    return {"event": name, "data": json.dumps({"type": name, **payload}, ensure_ascii=False)}


def stop_reason(builder: ChoiceBuilder, finished: Finished) -> StopReason:
    if builder.finish_reason == "tool_calls":
        return "tool_use"
    if builder.finish_reason == "length":
        return "max_tokens"
    return "stop_sequence" if finished.stop_sequence is not None else "end_turn"


def usage_of(finished: Finished) -> MessageUsage:
    """Anthropic counts prompt tokens read from the cache apart from those computed."""
    usage = finished.usage
    return MessageUsage(
        input_tokens=usage.prompt_tokens - usage.cached_tokens,
        output_tokens=usage.completion_tokens,
        cache_read_input_tokens=usage.cached_tokens,
    )


def _content(builder: ChoiceBuilder) -> list[TextOut | ToolUseOut]:
    message = builder.message()
    content: list[TextOut | ToolUseOut] = [TextOut(text=message.content)] if message.content else []
    for call in message.tool_calls or ():
        try:
            arguments = json.loads(call.function.arguments)
        except ValueError:
            # A forced call cut by max_tokens: its input is not whole, so it is shown as text.
            content.append(TextOut(text=call.function.arguments))
            continue
        content.append(ToolUseOut(id=call.id, name=call.function.name, input=arguments))
    return content


@dataclass
class AnthropicAnswer:
    """The answer to one Messages request. `input_tokens` is the prompt's length, known once the
    request is prepared (`message_start` reports it before anything is generated)."""

    ends_with_done = False  # Anthropic's streams end with `message_stop`

    message_id: str
    model: str
    input_tokens: int
    options: OutputOptions = field(default_factory=OutputOptions)
    _block: str | None = field(default=None, init=False)  # the open block: "text" or "tool_use"
    _index: int = field(default=-1, init=False)
    _pinged: bool = field(default=False, init=False)

    def _message(self, builder: ChoiceBuilder | None, finished: Finished | None) -> Message:
        if builder is None or finished is None:
            usage = MessageUsage(
                input_tokens=self.input_tokens, output_tokens=0, cache_read_input_tokens=0
            )
            return Message(
                id=self.message_id, model=self.model, content=[], stop_reason=None, usage=usage
            )
        return Message(
            id=self.message_id,
            model=self.model,
            content=_content(builder),
            stop_reason=stop_reason(builder, finished),
            stop_sequence=finished.stop_sequence,
            usage=usage_of(finished),
        )

    async def whole(self, events: AsyncIterator[tuple[int, Event]]) -> Message:
        builder = ChoiceBuilder(self.options)
        async for _, event in events:
            if isinstance(event, TextDelta):
                builder.text(event)
            else:
                builder.finish(event)
                return self._message(builder, event)
        raise AssertionError("interleave ends every generation with Finished")

    def _close(self) -> list[ServerEvent]:
        if self._block is None:
            return []
        self._block = None
        return [_event("content_block_stop", index=self._index)]

    def _open(self, kind: str, block: dict[str, Any]) -> list[ServerEvent]:
        events = self._close()
        self._block, self._index = kind, self._index + 1
        events.append(_event("content_block_start", index=self._index, content_block=block))
        if not self._pinged:
            self._pinged = True
            events.append(_event("ping"))
        return events

    def _blocks(self, part: StreamDelta) -> list[ServerEvent]:
        """A chat delta -> this stream's block events."""
        delta, events = part.delta, []
        if delta.content:
            if self._block != "text":
                events += self._open("text", {"type": "text", "text": ""})
            text = {"type": "text_delta", "text": delta.content}
            events.append(_event("content_block_delta", index=self._index, delta=text))
        for call in delta.tool_calls or ():
            if call.id is not None:
                block: dict[str, Any] = {"type": "tool_use", "id": call.id, "input": {}}
                block["name"] = call.function.name
                events += self._open("tool_use", block)
            if call.function.arguments:
                piece = {"type": "input_json_delta", "partial_json": call.function.arguments}
                events.append(_event("content_block_delta", index=self._index, delta=piece))
        return events

    async def stream(self, events: AsyncIterator[tuple[int, Event]]) -> AsyncIterator[ServerEvent]:
        builder = ChoiceBuilder(self.options)
        start = self._message(None, None).model_dump(mode="json")
        yield _event("message_start", message=start)
        async for _, event in events:
            ready = builder.text(event) if isinstance(event, TextDelta) else builder.finish(event)
            for part in ready:
                for server_event in self._blocks(part):
                    yield server_event
            if isinstance(event, Finished):
                for server_event in self._close():
                    yield server_event
                if not self._pinged:
                    yield _event("ping")
                reason: dict[str, str | None] = {
                    "stop_reason": stop_reason(builder, event),
                    "stop_sequence": event.stop_sequence,
                }
                usage = usage_of(event).model_dump()
                yield _event("message_delta", delta=reason, usage=usage)
                yield _event("message_stop")

    def failed(self, message: str, code: str) -> list[ServerEvent]:
        kind = "overloaded_error" if code == "server_shutting_down" else "api_error"
        return [_event("error", error={"type": kind, "message": message})]
