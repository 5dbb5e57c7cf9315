"""What an endpoint's pure converters hand the serving path, and what they answer with.

Free of FastAPI and sse-starlette, so the converters (chat.py, completions.py, responses.py,
chat_answer.py) and their tests need no web framework; serving.py runs these over HTTP.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from pydantic import BaseModel

from server.api.error_shape import error_body
from server.api.protocol import PromptTokensDetails, Usage
from server.api.refusals import RefusalFields
from server.engine.contract import Event, GenerationRequest
from server.engine.contract import Usage as EngineUsage

# What an SSE response sends: a `data:` payload, or a dict with the `event` name and `data`.
ServerEvent = str | dict[str, str]
# The last `data:` of a chat or completions stream.
SSE_DONE = "[DONE]"

T_co = TypeVar("T_co", bound=BaseModel, covariant=True)


@dataclass(frozen=True)
class GenerationRequests:
    """Every sequence one request asks the engine for, in answer order, and where the request
    holds what the engine may refuse of each."""

    requests: tuple[GenerationRequest, ...]
    count_param: str  # the field that decides how many sequences there are (`n`, `prompt`)
    refusal_fields: tuple[RefusalFields, ...]  # one per request
    prompts: int = 1  # how many prompts `n` multiplies: more than the server holds names `prompt`

    def __post_init__(self) -> None:
        assert len(self.refusal_fields) == len(self.requests), "one RefusalFields per request"


class Answer(Protocol[T_co]):
    """How one endpoint writes its answer from `(sequence index, event)` pairs."""

    @property
    def ends_with_done(self) -> bool:
        """Whether the stream ends with `data: [DONE]` (chat, completions) or not (responses)."""
        ...

    def whole(self, events: AsyncIterator[tuple[int, Event]]) -> Awaitable[T_co]: ...

    def stream(self, events: AsyncIterator[tuple[int, Event]]) -> AsyncIterator[ServerEvent]: ...

    def failed(self, message: str, code: str) -> list[ServerEvent]:
        """The events that end a stream after an error (the HTTP status is already sent)."""
        ...


def wire_usage(usage: EngineUsage) -> Usage:
    return Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=usage.cached_tokens),
    )


def error_event(message: str, code: str) -> str:
    """The `data:` payload of an error in a chat or completions stream."""
    return json.dumps(error_body(message, type="server_error", code=code))
