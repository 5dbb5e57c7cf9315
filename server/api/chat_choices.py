"""One choice of a chat completion, built from the engine's events: text or tool calls, with
log-probabilities when asked for.

`ChoiceBuilder` is fed a generation's `TextDelta`s and its `Finished`; for a stream it returns
the deltas ready to send after each event, and at the end it holds the whole choice. Streamed and
whole answers go through the same code, so they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from server.api.chat_protocol import (
    AssistantMessage,
    ChoiceLogprobs,
    Delta,
    FinishReason,
    FunctionCall,
    FunctionCallDelta,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    TopLogprob,
)
from server.api.serving_types import GenerationRequests
from server.api.tool_call_parser import (
    ArgumentsPiece,
    CallStart,
    ContentPiece,
    Piece,
    ToolCallParser,
)
from server.api.tool_prompt import ToolPlan
from server.engine import contract as engine


@dataclass(frozen=True)
class OutputOptions:
    """What a request asks of its output beyond text."""

    tools: ToolPlan | None = None  # tools offered: the output may be tool calls
    logprobs: bool = False


@dataclass(frozen=True)
class DialectPlan:
    """What an Ollama or Anthropic chat request asks of the engine, and of its answer's choices
    (chat's own ChatPlan adds include_usage, which those dialects do not have)."""

    generations: GenerationRequests
    options: OutputOptions


@dataclass(frozen=True)
class StreamDelta:
    """One chunk's worth of a choice: a delta, and the logprobs of the tokens it came from."""

    delta: Delta
    logprobs: ChoiceLogprobs | None = None


def wire_logprobs(tokens: Sequence[engine.TokenLogprob]) -> list[TokenLogprob]:
    """Engine logprobs -> OpenAI's `logprobs.content` entries (`bytes` as a list of ints)."""
    return [
        TokenLogprob(
            token=token.token,
            logprob=token.logprob,
            bytes=list(token.bytes),
            top_logprobs=[
                TopLogprob(token=top.token, logprob=top.logprob, bytes=list(top.bytes))
                for top in token.top
            ],
        )
        for token in tokens
    ]


def _deltas(pieces: Sequence[Piece]) -> list[Delta]:
    """Pieces -> stream deltas: runs of content, or of one call's arguments, become one delta;
    a call's first delta has its id, type and name (arguments empty), as OpenAI streams them."""
    deltas: list[Delta] = []
    for piece in pieces:
        last = deltas[-1] if deltas else None
        if isinstance(piece, ContentPiece):
            if last is not None and last.content is not None:
                last.content += piece.text
            else:
                deltas.append(Delta(content=piece.text))
        elif isinstance(piece, CallStart):
            function = FunctionCallDelta(name=piece.name, arguments="")
            call = ToolCallDelta(index=piece.index, id=piece.id, type="function", function=function)
            deltas.append(Delta(tool_calls=[call]))
        else:
            previous = last.tool_calls[0] if last is not None and last.tool_calls else None
            if previous and previous.id is None and previous.index == piece.index:
                previous.function.arguments = (previous.function.arguments or "") + piece.text
            else:
                function = FunctionCallDelta(arguments=piece.text)
                deltas.append(
                    Delta(tool_calls=[ToolCallDelta(index=piece.index, function=function)])
                )
    return deltas


class ChoiceBuilder:
    def __init__(self, options: OutputOptions) -> None:
        self._options = options
        plan = options.tools
        self._parser = ToolCallParser(plan.names, eager=plan.required) if plan is not None else None
        self._content: list[str] = []
        self._calls: list[ToolCall] = []
        self._logprobs: list[TokenLogprob] = []
        self._unsent_logprobs: list[TokenLogprob] = []
        self.finish_reason: FinishReason | None = None
        self.usage: engine.Usage | None = None

    def text(self, delta: engine.TextDelta) -> list[StreamDelta]:
        """New text: the deltas it completes (none while it may still be a tool call)."""
        if self._options.logprobs:
            tokens = wire_logprobs(delta.logprobs)
            self._logprobs += tokens
            self._unsent_logprobs += tokens
        pieces = self._parser.feed(delta.text) if self._parser else [ContentPiece(delta.text)]
        return self._stream(pieces)

    def plain_text(self, delta: engine.TextDelta) -> str | None:
        """New text that can only be content (no tools offered, no logprobs asked), recorded and
        returned as is: a stream's chunk for it needs no deltas built. None: use `text`."""
        if self._parser is not None or self._options.logprobs:
            return None
        self._content.append(delta.text)
        return delta.text

    def finish(self, finished: engine.Finished) -> list[StreamDelta]:
        """The end: deltas held back until now, then the last one with no content (its chunk
        carries `finish_reason`)."""
        pieces = self._parser.finish() if self._parser else []
        ready = self._stream(pieces)
        if self._parser and self._parser.calls:
            self.finish_reason = "tool_calls" if self._parser.complete else finished.reason
        else:
            self.finish_reason = finished.reason
        self.usage = finished.usage
        return [*ready, StreamDelta(Delta(), self._take_logprobs())]

    def _stream(self, pieces: Sequence[Piece]) -> list[StreamDelta]:
        self._record(pieces)
        return [StreamDelta(delta, self._take_logprobs()) for delta in _deltas(pieces)]

    def _take_logprobs(self) -> ChoiceLogprobs | None:
        """Logprobs not sent yet go with the next chunk: text held back (a possible tool call)
        sends its tokens' logprobs when it is released."""
        if not self._unsent_logprobs:
            return None
        tokens, self._unsent_logprobs = self._unsent_logprobs, []
        return ChoiceLogprobs(content=tokens)

    def _record(self, pieces: Sequence[Piece]) -> None:
        for piece in pieces:
            if isinstance(piece, ContentPiece):
                self._content.append(piece.text)
            elif isinstance(piece, CallStart):
                function = FunctionCall(name=piece.name, arguments="")
                self._calls.append(ToolCall(id=piece.id, function=function))
            elif isinstance(piece, ArgumentsPiece):
                self._calls[piece.index].function.arguments += piece.text

    def message(self) -> AssistantMessage:
        """The whole answer: tool calls (content null) or text."""
        if self._calls:
            return AssistantMessage(content="".join(self._content) or None, tool_calls=self._calls)
        return AssistantMessage(content="".join(self._content))

    def logprobs(self) -> ChoiceLogprobs | None:
        return ChoiceLogprobs(content=self._logprobs) if self._options.logprobs else None
