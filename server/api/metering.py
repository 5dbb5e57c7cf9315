"""An `Engine` proxy that meters every generation, without the converters knowing.

`MeteredEngine` wraps the loaded engine (installed in `app.py`): its prepared generations time
the first piece of text and the gaps between pieces, count tokens from `Finished.usage` (or, for
a generation cut short by a shutdown or a client leaving, from the tokens its text deltas
carried: what was really sent), and note them on the HTTP request's `RequestRecord` for the
access log. Metrics only: everything else
is the wrapped engine's contract, passed through unchanged.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from contextvars import ContextVar
from dataclasses import dataclass, field

from server.api.metrics import Metrics
from server.engine.contract import (
    Engine,
    EngineInfo,
    EngineStats,
    Event,
    Finished,
    Generation,
    GenerationRequest,
    TextDelta,
    Usage,
)


@dataclass
class RequestRecord:
    """What one HTTP request generated, for its access-log line (set by the access log)."""

    started: float = field(default_factory=time.monotonic)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    first_text: float | None = None  # monotonic time of the first generated text


# NOTE: set by the access-log middleware in the request's task; streaming responses run in
# tasks that copy this context, so they see the same (mutable) record.
current_record: ContextVar[RequestRecord | None] = ContextVar("current_record", default=None)


class MeteredGeneration:
    def __init__(self, inner: Generation, metrics: Metrics, record: RequestRecord | None) -> None:
        self._inner = inner
        self._metrics = metrics
        self._record = record
        self.prompt_tokens = inner.prompt_tokens

    async def events(self) -> AsyncGenerator[Event, None]:
        started = time.monotonic()
        last: float | None = None
        sent = 0  # tokens whose text was passed on
        finished = False
        # NOTE: aclosing: when our consumer stops early, the engine's generator is closed too,
        # which is what cancels the generation.
        async with aclosing(self._inner.events()) as events:
            try:
                async for event in events:
                    now = time.monotonic()
                    self._observe(event, started, last, now)
                    if isinstance(event, TextDelta):
                        sent, last = sent + event.tokens, now
                    finished = finished or isinstance(event, Finished)
                    yield event
            finally:
                if not finished and sent:  # cut short (shutdown, client gone): what was sent
                    self._count(Usage(self.prompt_tokens, sent))

    def _observe(self, event: Event, started: float, last: float | None, now: float) -> None:
        metrics, record = self._metrics, self._record
        if isinstance(event, TextDelta):
            if last is None:
                metrics.time_to_first_token.observe(now - started)
                if record is not None and record.first_text is None:
                    record.first_text = now
            else:
                metrics.inter_token_latency.observe(now - last)
        elif isinstance(event, Finished):
            self._count(event.usage)

    def _count(self, usage: Usage) -> None:
        self._metrics.prompt_tokens.inc(usage.prompt_tokens)
        self._metrics.completion_tokens.inc(usage.completion_tokens)
        if self._record is not None:
            self._record.prompt_tokens += usage.prompt_tokens
            self._record.completion_tokens += usage.completion_tokens


class MeteredEngine:
    """Engine proxy: the wrapped engine's contract, plus metrics."""

    def __init__(self, inner: Engine, metrics: Metrics) -> None:
        self._inner = inner
        self.info: EngineInfo = inner.info
        self._metrics = metrics

    async def prepare(self, request: GenerationRequest) -> Generation:
        prepared = await self._inner.prepare(request)
        return MeteredGeneration(prepared, self._metrics, current_record.get())

    def stats(self) -> EngineStats:
        return self._inner.stats()

    def close(self) -> None:
        self._inner.close()
