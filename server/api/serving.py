"""The one serving path of chat, completions and responses.

Each endpoint converts its request into `GenerationRequests` (pure, in its own module) and
describes its answer with an `Answer` (both in serving_types.py, free of FastAPI); everything
between is here, once:

1. the model the request names is chosen (`select`: 404 unless installed) and leased from the
   model manager, loaded first if it is not (the request waits for the load; one that cannot
   fit is a 400 with figures); each prepared generation holds its own lease until it is
   dropped, so the model is never unloaded under a stream;
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
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing, suppress
from typing import Annotated, TypeVar

from fastapi import Depends, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from server.api.deps import Runtime, RuntimeDep, SettingsDep
from server.api.errors import APIError, stream_failure, unavailable
from server.api.refusals import openai_refusal
from server.api.serving_types import SSE_DONE, Answer, GenerationRequests, ServerEvent
from server.api.sse import SEPARATOR, EventStream, sse_frame
from server.api.streams import interleave
from server.cancellation import Cancelled
from server.engine.contract import (
    Engine,
    Event,
    Generation,
    GenerationRequest,
    RequestRejected,
)
from server.logtext import printable
from server.models.fit import CannotFit
from server.models.manager import KeepAlive, Lease, ModelBusy

prompt_log = logging.getLogger("gemma_serve.prompts")

NDJSON = "application/x-ndjson"
# An SSE comment every so often keeps proxies from closing a stream during a long prefill.
PING_SECONDS = 15

T = TypeVar("T", bound=BaseModel)
E = TypeVar("E")


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


async def lease_model(runtime: Runtime, model_id: str, keep_alive: KeepAlive | float) -> Lease:
    """A lease on the installed model `model_id` (of any kind), loaded first if needed; what
    keeps it from being served is an API error: too large (400), too many waiting, shutting down
    or a failed load (503)."""
    try:
        return await runtime.models.acquire(model_id, keep_alive=keep_alive)
    except CannotFit as exc:
        raise APIError(400, str(exc), param="model", code="model_too_large") from exc
    except ModelBusy as exc:
        raise unavailable(f"{exc}; try again later.", "server_busy", retry_after=2) from exc
    except Cancelled as exc:
        raise unavailable("The server is shutting down.", "shutting_down") from exc
    except Exception as exc:  # the load failed (file gone, out of memory elsewhere)
        raise unavailable(
            f"The model {model_id} could not be loaded: {exc}", "model_load_failed"
        ) from exc


class Serving:
    """The serving path for one HTTP request (see the module docstring)."""

    def __init__(self, runtime: Runtime, *, log_prompts: bool = False) -> None:
        self.runtime = runtime
        self._log_prompts = log_prompts
        self._lease: Lease | None = None

    @property
    def engine(self) -> Engine:
        """The chosen model's engine (after `select`)."""
        assert self._lease is not None, "select the model first"
        engine: Engine = self._lease.model
        return engine

    async def select(self, model: str, *, keep_alive: KeepAlive | float = -1.0) -> None:
        """Choose the installed model `model` names and lease it, loading it first if needed.
        `keep_alive` (seconds, None: forever; negative: unchanged) is Ollama's per request.
        Until the model picked at start is ready: 503 `model_loading`, as before."""
        runtime = self.runtime
        if not runtime.ready:
            raise runtime.not_ready_error()
        model_id = runtime.resolve(model)
        kind = runtime.models.state(model_id).kind
        if kind != "chat":  # e.g. an embedding model: it generates no text
            what = (
                "an embedding model: it answers /v1/embeddings (and Ollama's /api/embed)"
                if kind == "embedding"
                else f"a model of kind '{kind}'"
            )
            raise APIError(
                400,
                f"'{model}' is {what}, not chat; the chat model is '{runtime.model_id}'.",
                param="model",
                code="model_not_supported",
            )
        self._lease = await lease_model(runtime, model_id, keep_alive)

    def check_model(self, model: str) -> None:
        self.runtime.check_model(model)

    def release(self) -> None:
        """The request is done with its model (its generations hold their own leases)."""
        if self._lease is not None:
            self._lease.release()

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
                    generation = await self.engine.prepare(asked)
                    assert self._lease is not None
                    # Released when the generation is dropped (ended, or never started): no
                    # cost per token.
                    weakref.finalize(generation, self._lease.extend().release_soon)
                    prepared.append(generation)
                except RequestRejected as exc:
                    fields = generations.refusal_fields[index]
                    raise openai_refusal(exc, asked, fields) from exc
        except BaseException:
            prepared.clear()  # NOTE: dropping an unstarted generation gives its place back
            raise
        finally:
            self.release()  # the request's own lease: its generations hold theirs
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
            generations = [generation.events() for generation in prepared]
            if ndjson:
                lines = sse_events(answer, generations, encode=ndjson_line)
                return StreamingResponse(lines, media_type=NDJSON)
            frames = sse_events(answer, generations, encode=sse_frame)
            return EventStream(frames, sep=SEPARATOR, ping=PING_SECONDS)

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
    answer: Answer[T],
    generations: Sequence[AsyncGenerator[Event, None]],
    encode: Callable[[ServerEvent], E],
) -> AsyncIterator[E]:
    """The events of a streamed answer: the endpoint's own, then its error events if the
    generation fails after the start (the status is sent by then), then `[DONE]` if it ends so;
    each one through `encode` (into its bytes on the wire: here, not in one more generator
    around this one, as that would cost a step a token)."""
    # NOTE: when the client goes, sse-starlette cancels this generator's task; the cancellation
    # reaches `interleave`, which stops every generation.
    try:
        async with aclosing(interleave(generations)) as events:
            async for payload in answer.stream(events):
                yield encode(payload)
    except Exception as exc:
        message, code = stream_failure(exc)
        for payload in answer.failed(message, code):
            yield encode(payload)
    if answer.ends_with_done:
        yield encode(SSE_DONE)


def ndjson_line(payload: ServerEvent) -> str:
    """A stream's payload (a JSON string) as one line of newline-delimited JSON."""
    assert isinstance(payload, str), "an NDJSON stream has no named events"
    return payload + "\n"


def get_serving(runtime: RuntimeDep, settings: SettingsDep) -> Serving:
    return Serving(runtime, log_prompts=settings.log_prompts)


ServingDep = Annotated[Serving, Depends(get_serving)]
