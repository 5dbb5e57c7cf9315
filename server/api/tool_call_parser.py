"""Reading tool calls out of generated text as it arrives, for streamed and whole answers alike.

The model calls tools by answering with `{"tool_calls": [{"name": ..., "arguments": {...}}]}`
(see `server.api.tool_prompt`), optionally inside a Markdown code fence. `ToolCallParser` is fed the
text piece by piece and gives back pieces of the OpenAI answer: content, the start of a call
(id and name), and pieces of a call's arguments.

Two modes:
- `eager=False` (`tool_choice: "auto"`: the model may answer in text). Text is held back only
  while it could still be the start of a tool-call object; as soon as it cannot, all of it is
  content and the rest passes straight through. Calls are released only once the whole object
  has been read and is valid (known tool names, arguments a JSON object), so a streaming client
  never receives a call that turns out not to be one.
- `eager=True` (a call is required and a grammar guarantees the shape): each call's name is
  released as soon as it is read, and its arguments piece by piece as they are generated.

Text after the closing brace of the object is not part of the answer and is dropped.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger("gemma_serve.api")

_WHITESPACE = " \t\r\n"
# A Markdown code fence before the object: ``` or ```json, then the line ends.
_FENCE_PREFIX = re.compile(r"`{0,3}|```[A-Za-z]*[ \t]*")


@dataclass(frozen=True)
class ContentPiece:
    text: str


@dataclass(frozen=True)
class CallStart:
    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ArgumentsPiece:
    index: int
    text: str


Piece = ContentPiece | CallStart | ArgumentsPiece
_Reading = Generator[None, None, None]


class _NotACall(Exception):
    """The text read so far cannot be (the start of) a tool-call object."""


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class ToolCallParser:
    """Feed generated text with `feed`, then call `finish` once; both return the pieces of the
    answer that are ready. `calls` counts the calls released; `complete` says whether the whole
    tool-call object was read."""

    def __init__(
        self,
        names: frozenset[str],
        *,
        eager: bool,
        make_id: Callable[[], str] = new_call_id,
    ) -> None:
        self._names = names
        self._eager = eager
        self._make_id = make_id
        self._text = ""
        self._pos = 0
        self._held: list[Piece] = []  # read but not released yet (auto mode)
        self._ready: list[Piece] = []
        self._state: Literal["reading", "content", "complete", "stopped"] = "reading"
        self._reader = self._document()
        self.calls = 0

    @property
    def complete(self) -> bool:
        return self._state == "complete"

    def feed(self, text: str) -> list[Piece]:
        if self._state == "content":
            return [ContentPiece(text)] if text else []
        if self._state == "reading" and text:
            self._text += text
            self._advance()
        return self._take()

    def finish(self) -> list[Piece]:
        """The generation has ended: text still held back was not a (whole) call after all."""
        if self._state == "reading":
            if self.calls:  # eager calls already out, cut short (max_tokens)
                self._state = "stopped"
            else:
                self._as_content()
        return self._take()

    def _take(self) -> list[Piece]:
        ready, self._ready = self._ready, []
        return ready

    def _as_content(self) -> None:
        self._state = "content"
        self._held = []
        self._ready = [ContentPiece(self._text)] if self._text else []

    def _emit(self, piece: Piece) -> None:
        if self._eager:
            self._release([piece])
        else:
            self._held.append(piece)

    def _release(self, pieces: list[Piece]) -> None:
        self.calls += sum(isinstance(piece, CallStart) for piece in pieces)
        self._ready += pieces

    def _advance(self) -> None:
        try:
            self._reader.send(None)
        except StopIteration:
            self._state = "complete"
            self._release(self._held)
            self._held = []
        except _NotACall:
            if self.calls:
                # Only with eager calls, whose shape the grammar guarantees: keep what went out.
                log.warning("generated tool calls stopped making sense; the rest is dropped")
                self._state = "stopped"
            else:
                self._as_content()

    # --- the reader: a generator that yields whenever it needs more text ----------------------

    def _document(self) -> _Reading:
        yield from self._skip_whitespace()
        if self._text[self._pos] == "`":
            yield from self._fence()
        for token in ("{", '"tool_calls"', ":", "["):
            yield from self._literal(token)
        index = 0
        while True:
            for token in ("{", '"name"', ":"):
                yield from self._literal(token)
            name = yield from self._string()
            if name not in self._names:
                raise _NotACall
            for token in (",", '"arguments"', ":"):
                yield from self._literal(token)
            self._emit(CallStart(index, self._make_id(), name))
            yield from self._arguments(index)
            yield from self._literal("}")
            yield from self._skip_whitespace()
            separator = self._text[self._pos]
            if separator not in ",]":
                raise _NotACall
            self._pos += 1
            if separator == "]":
                break
            index += 1
        yield from self._literal("}")

    def _skip_whitespace(self) -> _Reading:
        """Up to the next character that is not whitespace, waiting for one if need be."""
        while True:
            while self._pos < len(self._text) and self._text[self._pos] in _WHITESPACE:
                self._pos += 1
            if self._pos < len(self._text):
                return
            yield

    def _fence(self) -> _Reading:
        while "\n" not in self._text[self._pos :]:
            if not _FENCE_PREFIX.fullmatch(self._text[self._pos :]):
                raise _NotACall
            yield
        end = self._text.index("\n", self._pos)
        line = self._text[self._pos : end]
        if not line.startswith("```") or not _FENCE_PREFIX.fullmatch(line):
            raise _NotACall
        self._pos = end + 1
        yield from self._skip_whitespace()

    def _literal(self, token: str) -> _Reading:
        yield from self._skip_whitespace()
        while len(self._text) - self._pos < len(token):
            if not token.startswith(self._text[self._pos :]):
                raise _NotACall
            yield
        if not self._text.startswith(token, self._pos):
            raise _NotACall
        self._pos += len(token)

    def _string(self) -> Generator[None, None, str]:
        yield from self._skip_whitespace()
        if self._text[self._pos] != '"':
            raise _NotACall
        end = self._pos + 1
        escaped = False
        while True:
            while end < len(self._text):
                char = self._text[end]
                end += 1
                if escaped:
                    escaped = False
                elif char == "\\":
                    escaped = True
                elif char == '"':
                    raw = self._text[self._pos : end]
                    self._pos = end
                    try:
                        value = json.loads(raw)
                    except ValueError as exc:
                        raise _NotACall from exc
                    assert isinstance(value, str)
                    return value
            yield

    def _arguments(self, index: int) -> _Reading:
        """A JSON object, emitted as it arrives; brackets are counted outside strings."""
        yield from self._skip_whitespace()
        if self._text[self._pos] != "{":
            raise _NotACall
        start = emitted = self._pos
        depth = 0
        in_string = escaped = False
        while True:
            closed = False
            while self._pos < len(self._text) and not closed:
                char = self._text[self._pos]
                self._pos += 1
                if in_string:
                    if escaped:
                        escaped = False
                    elif char == "\\":
                        escaped = True
                    elif char == '"':
                        in_string = False
                elif char == '"':
                    in_string = True
                elif char in "{[":
                    depth += 1
                elif char in "}]":
                    depth -= 1
                    closed = depth == 0
            if self._pos > emitted:
                self._emit(ArgumentsPiece(index, self._text[emitted : self._pos]))
                emitted = self._pos
            if closed:
                try:
                    arguments = json.loads(self._text[start : self._pos])
                except ValueError as exc:
                    raise _NotACall from exc
                if not isinstance(arguments, dict):
                    raise _NotACall
                return
            yield
