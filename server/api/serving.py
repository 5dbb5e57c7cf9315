"""The one serving path of chat, completions and responses.

Each endpoint converts its request into `GenerationRequests` (pure, in its own module) and
describes its answer with an `Answer` (both in serving_types.py, free of FastAPI); everything
between is here, once:

1. the model the request names is checked (404 otherwise);
2. every sequence is prepared (tokenised, checked, given a place) before any is started, and a
   request needing more sequences than the server can ever hold is a 400 naming the field that
   asked for them; an engine refusal becomes a 400 naming the endpoint's own field
   (api/refusals.py);
3. the sequences then run together in the batch (`streams.interleave`) and the answer is either
   streamed (an error after the start is the endpoint's error event) or collected while the
   client is watched: a client that hangs up cancels the generation and gets 499.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Sequence
from contextlib import aclosing, suppress
from typing import Annotated, TypeVar

from fastapi import Depends, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sse_starlette import EventSourceResponse

from server.api.deps import EngineDep, Runtime, RuntimeDep, SettingsDep
from server.api.errors import APIError, stream_failure
from server.api.refusals import openai_refusal
from server.api.serving_types import SSE_DONE, Answer, GenerationRequests, ServerEvent
from server.api.streams import interleave
from server.engine.contract import (
    Engine,
    Event,
    Generation,
    GenerationRequest,
    RequestRejected,
)
from server.logtext import printable

prompt_log = logging.getLogger("gemma_serve.prompts")

NDJSON = "application/x-ndjson"
# An SSE comment every so often keeps proxies from closing a stream during a long prefill.
PING_SECONDS = 15

T = TypeVar("T", bound=BaseModel)


class ClientGone(Exception):
    """The client hung up before its answer was ready."""


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (and so the generation) if the client hangs up first."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while not await request.is_disconnected():
            await asyncio.sleep(0.25)

    watcher = asyncio.ensure_future(watch())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # NOTE: also when this handler is itself cancelled (server shutdown): the generation
        # must not outlive its request.
        watcher.cancel()
        if not task.done():
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise ClientGone
    return task.result()


class Serving:
    """The serving path for one HTTP request (see the module docstring)."""

    def __init__(self, runtime: Runtime, engine: Engine, *, log_prompts: bool = False) -> None:
        self.runtime = runtime
        self.engine = engine
        self._log_prompts = log_prompts

    def check_model(self, model: str) -> None:
        self.runtime.check_model(model)

    async def prepare(self, generations: GenerationRequests) -> list[Generation]:
        """Prepare every generation, or none: a refusal or a full server releases the places the
        earlier ones took."""
        requests = generations.requests
        capacity = self.engine.info.capacity
        if len(requests) > capacity:
            too_many = "prompt" if generations.prompts > capacity else generations.count_param
            fix = "send fewer prompts" if too_many == "prompt" else f"lower {too_many}"
            raise APIError(
                400,
                f"This request asks for {len(requests)} generations at once, more than this "
                f"server can ever hold ({capacity}: sequences generated together plus those "
                f"waiting); {fix}.",
                param=too_many,
                code="invalid_value",
            )
        prepared: list[Generation] = []
        try:
            for index, asked in enumerate(requests):
                self._log_prompt(asked)
                try:
                    prepared.append(await self.engine.prepare(asked))
                except RequestRejected as exc:
                    fields = generations.refusal_fields[index]
                    raise openai_refusal(exc, asked, fields) from exc
        except BaseException:
            prepared.clear()  # NOTE: dropping an unstarted generation gives its place back
            raise
        return prepared

    async def respond(
        self,
        request: Request,
        prepared: Sequence[Generation],
        answer: Answer[T],
        *,
        stream: bool,
        ndjson: bool = False,
    ) -> Response | T:
        """Run the prepared sequences together and answer: a stream (SSE, or with `ndjson` one
        JSON object a line, as Ollama streams), or the whole answer (499 when the client hangs up
        first)."""
        if stream:
            events = sse_events(answer, [generation.events() for generation in prepared])
            if ndjson:
                return StreamingResponse(ndjson_lines(events), media_type=NDJSON)
            return EventSourceResponse(events, sep="\n", ping=PING_SECONDS)

        async def collect() -> T:
            generations = [generation.events() for generation in prepared]
            async with aclosing(interleave(generations)) as events:
                return await answer.whole(events)

        try:
            return await unless_disconnected(request, collect())
        except ClientGone:
            return Response(status_code=499)  # nobody reads it; nginx's "client closed request"

    async def serve(
        self,
        request: Request,
        generations: GenerationRequests,
        answer: Answer[T],
        *,
        stream: bool,
        ndjson: bool = False,
    ) -> Response | T:
        """Prepare, then respond."""
        prepared = await self.prepare(generations)
        return await self.respond(request, prepared, answer, stream=stream, ndjson=ndjson)

    def _log_prompt(self, generation: GenerationRequest) -> None:
        if not self._log_prompts:
            return
        text = generation.prompt
        if text is None:
            text = " | ".join(f"{m.role}: {m.content}" for m in generation.messages)
        prompt_log.info("prompt: %s", printable(text, limit=10_000))


async def sse_events(
    answer: Answer[T], generations: Sequence[AsyncGenerator[Event, None]]
) -> AsyncIterator[ServerEvent]:
    """The events of a streamed answer: the endpoint's own, then its error events if the
    generation fails after the start (the status is sent by then), then `[DONE]` if it ends so.
    """
    # NOTE: when the client goes, sse-starlette cancels this generator's task; the cancellation
    # reaches `interleave`, which stops every generation.
    try:
        async with aclosing(interleave(generations)) as events:
            async for payload in answer.stream(events):
                yield payload
    except Exception as exc:
        message, code = stream_failure(exc)
        for payload in answer.failed(message, code):
            yield payload
    if answer.ends_with_done:
        yield SSE_DONE


async def ndjson_lines(events: AsyncIterator[ServerEvent]) -> AsyncIterator[str]:
    """A stream's payloads (JSON strings) as newline-delimited JSON."""
    async for payload in events:
        assert isinstance(payload, str), "an NDJSON stream has no named events"
        yield payload + "\n"


def get_serving(runtime: RuntimeDep, engine: EngineDep, settings: SettingsDep) -> Serving:
    return Serving(runtime, engine, log_prompts=settings.log_prompts)


ServingDep = Annotated[Serving, Depends(get_serving)]
