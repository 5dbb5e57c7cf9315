"""Chat completions, answer side: engine events -> a `chat.completion` or its stream chunks.

Both read the same `(choice index, event)` pairs from the serving path and feed each choice's
`ChoiceBuilder`, so a streamed and a whole answer cannot disagree.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from pydantic_core import to_json

from server.api.chat_choices import ChoiceBuilder, OutputOptions
from server.api.chat_protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    Delta,
)
from server.api.protocol import Usage
from server.api.serving_types import ServerEvent, error_event, wire_usage
from server.engine.contract import Event, Finished, TextDelta
from server.engine.contract import Usage as EngineUsage

# Stands for a delta's text in a chunk serialised once per stream (no token decodes to it).
_TEXT_MARK = "\x00gemma-serve-text\x00"
_TEXT_MARK_JSON = to_json(_TEXT_MARK).decode()


def total_usage(usages: Sequence[EngineUsage]) -> Usage:
    """The prompt is counted once, the completions of every choice added up (as OpenAI does)."""
    first = usages[0]
    completion_tokens = sum(usage.completion_tokens for usage in usages)
    return wire_usage(EngineUsage(first.prompt_tokens, completion_tokens, first.cached_tokens))


@dataclass(frozen=True)
class ChatAnswer:
    """The answer to one chat request: `n` choices, whole or streamed."""

    completion_id: str
    created: int
    model: str
    n: int = 1
    options: OutputOptions = OutputOptions()  # noqa: RUF009 (frozen, never mutated)
    include_usage: bool = False
    ends_with_done = True

    async def whole(self, events: AsyncIterator[tuple[int, Event]]) -> ChatCompletion:
        """Collect every choice (generated together) into one `chat.completion`."""
        builders = [ChoiceBuilder(self.options) for _ in range(self.n)]
        usages: list[EngineUsage] = []
        choices: list[Choice] = []
        async for index, event in events:
            builder = builders[index]
            if isinstance(event, TextDelta):
                builder.text(event)
                continue
            builder.finish(event)
            usages.append(event.usage)
            assert builder.finish_reason is not None  # set by finish()
            choices.append(
                Choice(
                    index=index,
                    message=builder.message(),
                    logprobs=builder.logprobs(),
                    finish_reason=builder.finish_reason,
                )
            )
        return ChatCompletion(
            id=self.completion_id,
            created=self.created,
            model=self.model,
            choices=sorted(choices, key=lambda choice: choice.index),
            usage=total_usage(usages),
        )

    def _text_chunk_parts(self, index: int) -> tuple[str, str]:
        """A chunk whose one delta is content alone, split around that content's JSON string:
        a token's chunk is then `before + to_json(text) + after`, the same text as `_chunk`
        makes, without building and serialising three models a token."""
        whole = self._chunk([ChunkChoice(index=index, delta=Delta(content=_TEXT_MARK))])
        before, after = whole.split(_TEXT_MARK_JSON)
        return before, after

    def _chunk(self, choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        body = ChatCompletionChunk(
            id=self.completion_id,
            created=self.created,
            model=self.model,
            choices=choices,
            usage=usage,
        )
        return body.model_dump_json(exclude=None if self.include_usage else {"usage"})

    async def stream(self, events: AsyncIterator[tuple[int, Event]]) -> AsyncIterator[ServerEvent]:
        """The `data:` payloads of an OpenAI chat stream (the serving path adds `[DONE]`).

        Choices interleave, each chunk naming its `index`: every choice's role chunk comes
        first, its last chunk carries the `finish_reason`; the usage chunk (empty `choices`)
        follows them all when asked for. Tool calls stream as `delta.tool_calls` fragments (see
        `server.api.chat_choices`).
        """
        builders = [ChoiceBuilder(self.options) for _ in range(self.n)]
        text_chunks = [self._text_chunk_parts(index) for index in range(self.n)]
        usages: list[EngineUsage] = []
        for index in range(self.n):
            yield self._chunk([ChunkChoice(index=index, delta=Delta(role="assistant", content=""))])
        async for index, event in events:
            builder = builders[index]
            if isinstance(event, TextDelta):
                text = builder.plain_text(event)
                if text is not None:  # most tokens: a chunk from the template
                    before, after = text_chunks[index]
                    yield before + to_json(text).decode() + after
                    continue
                ready = builder.text(event)
            else:
                ready = builder.finish(event)
                usages.append(event.usage)
            for position, part in enumerate(ready):
                last = isinstance(event, Finished) and position == len(ready) - 1
                choice = ChunkChoice(
                    index=index,
                    delta=part.delta,
                    logprobs=part.logprobs,
                    finish_reason=builder.finish_reason if last else None,
                )
                yield self._chunk([choice])
        if self.include_usage:
            yield self._chunk([], usage=total_usage(usages))

    def failed(self, message: str, code: str) -> list[ServerEvent]:
        return [error_event(message, code)]
