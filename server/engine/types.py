"""What goes into and comes out of the engine, free of any llama_cpp or HTTP types.

The API layer converts OpenAI wire types to a `GenerationRequest` and consumes a stream of
`TextDelta`s closed by exactly one `Finished`. Errors a client caused are `RequestRejected`
(mapped to 4xx); everything else is a bug or a broken model.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Role = Literal["system", "developer", "user", "assistant"]
FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True)
class SamplingParams:
    """Sampling as llama.cpp applies it. Defaults are Gemma 3's recommended settings
    (its generation_config: temperature 1.0, top_k 64, top_p 0.95), used when a client sends
    none."""

    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 64
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None


@dataclass(frozen=True)
class JsonFormat:
    """Output must be JSON: any object (`schema` None), or valid against `schema`."""

    schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class GenerationRequest:
    messages: tuple[ChatMessage, ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    json_format: JsonFormat | None = None


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class TextDelta:
    text: str


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    usage: Usage


Event = TextDelta | Finished


@dataclass(frozen=True)
class EngineInfo:
    model_id: str
    n_ctx: int
    device: Literal["gpu", "cpu"] = "cpu"


class RequestRejected(ValueError):
    """The request cannot be served as asked (prompt too long, roles out of order, ...).

    `code` and `param` follow OpenAI's error object; the API layer answers 400.
    """

    def __init__(self, message: str, *, code: str | None = None, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.param = param


class EngineUnavailable(RuntimeError):
    """The engine cannot take the request now (shutting down); the API layer answers 503."""


class PreparedGeneration(Protocol):
    """A request the engine has accepted: the prompt is rendered, tokenised and fits.

    Iterating starts generation; closing the iterator early (client gone) stops it.
    """

    prompt_tokens: int

    def events(self) -> AsyncGenerator[Event, None]: ...


class Engine(Protocol):
    """What the API layer needs from an engine."""

    info: EngineInfo

    async def prepare(self, request: GenerationRequest) -> PreparedGeneration:
        """Validate and tokenise; raises `RequestRejected` before anything is generated."""
        ...

    def close(self) -> None: ...
