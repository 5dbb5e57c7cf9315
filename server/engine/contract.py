"""What goes into and comes out of the engine, free of any llama_cpp or HTTP types.

The API layer converts OpenAI wire types to a `GenerationRequest` and consumes a stream of
`TextDelta`s closed by exactly one `Finished`. Errors a client caused are `RequestRejected`,
which name the part refused in the engine's terms (`Refused`; each dialect maps it to a 4xx
naming its own field); everything else is a bug or a broken model.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, Protocol

Role = Literal["system", "developer", "user", "assistant"]
FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


@dataclass(frozen=True)
class ImageInput:
    """A picture as the engine takes it: `width` x `height` RGB bytes (row-major, 3 bytes a
    pixel), `digest` a hash of exactly those (the prefix cache recognises an image by it), and
    `param` where the request had it (`messages[0].content[1]`): the API's label, which the
    engine never reads (its refusals name an image by its index)."""

    rgb: bytes = field(repr=False)
    width: int
    height: int
    digest: str
    param: str


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
    # (token id, bias) pairs added to the logits before sampling; -100 bans a token, 100 forces it.
    logit_bias: tuple[tuple[int, float], ...] = ()

    @classmethod
    def given(cls, **fields: Any) -> SamplingParams:
        """These defaults, overridden by every field a client set (None: not set)."""
        return cls(**{name: value for name, value in fields.items() if value is not None})


@dataclass(frozen=True)
class JsonFormat:
    """Output must be JSON: any object (`schema` None), or valid against `schema`."""

    schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class GenerationRequest:
    """One sequence to generate. Either `messages` (rendered by the chat template) or `prompt`
    (raw text for /v1/completions: no template, special tokens parsed, `<bos>` added unless the
    text starts with it)."""

    messages: tuple[ChatMessage, ...] = ()
    prompt: str | None = None
    sampling: SamplingParams = field(default_factory=SamplingParams)
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    json_format: JsonFormat | None = None
    # None: no logprobs. k >= 0: each generated token's logprob plus the k most likely tokens'.
    logprobs: int | None = None
    # Pictures, each standing where `image_marker.marker(i)` appears in the messages' contents.
    images: tuple[ImageInput, ...] = ()


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens whose KV came from the cache, not computed

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class TopLogprob:
    token: str
    bytes: bytes
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token with its log-probability under the model (log-softmax of the raw
    logits, before temperature and other samplers) and the most likely alternatives."""

    token: str
    bytes: bytes
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class TextDelta:
    """New text. `logprobs` (only when the request asked) covers the tokens this text came from;
    tokens of a matched stop string are not reported."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()
    # Generated tokens whose text this completes (a stream cut short is counted by these).
    tokens: int = 0


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    usage: Usage
    stop_sequence: str | None = None  # the request's stop string that ended it, if one did


Event = TextDelta | Finished


@dataclass(frozen=True)
class EngineInfo:
    model_id: str
    n_ctx: int
    # Sequences the engine holds at most, generating and waiting: more can never be accepted.
    capacity: int
    device: Literal["gpu", "cpu"] = "cpu"
    vision: bool = False  # a projector is loaded: the model takes images
    flash_attn: bool = True  # attention computed with llama.cpp's flash attention


class Refused(Enum):
    """What part of a request the engine refused, in the engine's own terms.

    The engine knows requests only as `GenerationRequest`s, never as a dialect's wire fields, so
    a refusal names the part of the `GenerationRequest` at fault, and each API dialect maps it
    to its own field and error shape in one place (OpenAI's: server/api/refusals.py). A dialect
    maps `CONVERSATION` and `CONTEXT_LENGTH` to the field holding the prompt (`messages`,
    `prompt[1]`, `input`), `OUTPUT_FORMAT` to the field that asked for JSON or a tool call
    (`response_format`, `tools`, `format`), `LOGIT_BIAS` to its bias field (`RequestRejected.
    index`: the entry of `SamplingParams.logit_bias`), `NO_IMAGE_INPUT` and `IMAGE` to where
    `GenerationRequest.images[index]` was in its request; and it picks its own error code per
    cause (each dialect's unit tests check that it maps every cause).
    """

    CONVERSATION = "conversation"  # the messages cannot be made into a prompt (roles, template)
    CONTEXT_LENGTH = "context_length"  # the prompt plus the completion exceed the context
    OUTPUT_FORMAT = "output_format"  # `json_format`'s schema cannot be enforced
    LOGIT_BIAS = "logit_bias"  # entry `index` of the bias names a token the model lacks
    NO_IMAGE_INPUT = "no_image_input"  # images sent to a model without a projector (`index` 0)
    IMAGE = "image"  # image `index` cannot be prepared for the model


class RequestRejected(ValueError):
    """The request cannot be served as asked (prompt too long, roles out of order, ...).

    `cause` says which part of the `GenerationRequest` (and `index` which of its items); the
    API dialect names its own field for it and answers 400. `message` is for people.
    """

    def __init__(self, message: str, cause: Refused, *, index: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.cause = cause
        self.index = index


class EngineUnavailable(RuntimeError):
    """The engine cannot take the request now (shutting down); the API layer answers 503."""


class EngineBusy(EngineUnavailable):
    """The queue is full: the API layer answers 503 with `Retry-After`, which OpenAI clients
    honour when they retry."""

    def __init__(self, message: str, *, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class EngineStats:
    """What `/health` and `/metrics` report about the engine's load."""

    active: int  # sequences being generated now
    queued: int  # accepted requests waiting for a free sequence
    parallel: int  # how many sequences are decoded together at most
    prompt_cache: PromptCacheStats | None = None  # None: an engine without one


@dataclass(frozen=True)
class PromptCacheStats:
    """The prompt cache since start: reuse of cached prefixes (a sequence's own or a restored saved
    state), and the sequence states saved in host memory."""

    hits: int = 0  # generations that reused a cached prefix
    reused_tokens: int = 0  # prompt tokens those generations did not prefill
    restores: int = 0  # saved states copied back into a sequence
    saves: int = 0  # sequence states copied to host memory
    evictions: int = 0  # saved states dropped for the budget
    saved_states: int = 0  # held now
    saved_bytes: int = 0  # held now
    budget_bytes: int = 0
    save_seconds: float = 0.0  # spent copying out
    restore_seconds: float = 0.0  # spent copying back


class Generation(Protocol):
    """A request the engine has accepted: the prompt is rendered, tokenised and fits, and it
    holds one place of the engine's capacity until it ends (or is dropped unstarted).

    Iterating starts generation: `TextDelta`s, then exactly one `Finished`; an engine that stops
    (closing) raises `EngineUnavailable` instead. Closing the iterator early (client gone) stops
    the generation.
    """

    prompt_tokens: int

    def events(self) -> AsyncGenerator[Event, None]: ...


class Engine(Protocol):
    """What the API layer needs from an engine."""

    info: EngineInfo

    async def prepare(self, request: GenerationRequest) -> Generation:
        """Validate, tokenise and take a place; raises `RequestRejected` (the request's fault),
        `EngineBusy` (no place free now) or `EngineUnavailable` (closing), before anything is
        generated."""
        ...

    def stats(self) -> EngineStats: ...

    def close(self) -> None:
        """End every generation and free the model; idempotent and thread-safe (the graceful
        shutdown closes the engine early, the lifespan closes it again)."""
        ...
