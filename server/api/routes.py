"""Thin routers: fetch state, convert, hand to the engine, convert back."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable
from contextlib import suppress
from typing import TypeVar

from fastapi import APIRouter, Request, Response
from sse_starlette import EventSourceResponse

from server.api.converters import (
    output_options,
    to_chat_completion,
    to_generation_requests,
    to_stream_chunks,
)
from server.api.deps import EngineDep, Runtime, RuntimeDep, SettingsDep
from server.api.errors import APIError
from server.api.protocol import (
    Capabilities,
    ChatCompletion,
    ChatCompletionRequest,
    Health,
    ModelCard,
    ModelList,
)
from server.api.remote_images import inline_remote_images, policy_of
from server.engine.types import RequestRejected

router = APIRouter()

T = TypeVar("T")

# An SSE comment every so often keeps proxies from closing a stream during a long prefill.
_PING_SECONDS = 15


class _ClientGone(Exception):
    pass


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T:
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
        raise _ClientGone
    return task.result()


@router.get("/health", response_model=Health)
async def health(runtime: RuntimeDep) -> Health:
    if runtime.engine is None:
        raise runtime.not_ready_error()
    stats = runtime.engine.stats()
    return Health(active=stats.active, queued=stats.queued, parallel=stats.parallel)


@router.get("/v1/models", response_model=ModelList)
async def list_models(runtime: RuntimeDep) -> ModelList:
    return ModelList(data=[_card(runtime)])


@router.get("/v1/models/{model_id}", response_model=ModelCard)
async def get_model(model_id: str, runtime: RuntimeDep) -> ModelCard:
    runtime.check_model(model_id)
    return _card(runtime)


def _card(runtime: Runtime) -> ModelCard:
    spec, info = runtime.spec, runtime.engine.info if runtime.engine else None
    return ModelCard(
        id=runtime.model_id,
        created=runtime.created,
        name=spec.name,
        parameters=spec.parameters,
        quantization=spec.quantization,
        file_size=spec.file_size,
        context_length=info.n_ctx if info else None,
        trained_context_length=spec.architecture.context_length,
        device=info.device if info else None,
        capabilities=Capabilities(vision=info.vision) if info else None,
    )


@router.post("/v1/chat/completions", response_model=ChatCompletion)
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    runtime: RuntimeDep,
    engine: EngineDep,
    settings: SettingsDep,
) -> Response | ChatCompletion:
    runtime.check_model(body.model)
    await inline_remote_images(body, policy_of(settings))
    options = output_options(body)
    vocab_size = runtime.spec.architecture.vocab_size
    try:
        prepared = [
            await engine.prepare(generation)
            for generation in to_generation_requests(
                body, settings.max_choices, vocab_size=vocab_size
            )
        ]
    except RequestRejected as exc:
        param = exc.param
        if param == "response_format" and options.tools and options.tools.required:
            param = "tools"  # the grammar the engine could not build was the tool-call schema's
        raise APIError(400, exc.message, param=param, code=exc.code) from exc
    generations = [job.events() for job in prepared]
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if body.stream:
        chunks = to_stream_chunks(
            generations,
            completion_id=completion_id,
            created=created,
            model=body.model,
            include_usage=bool(body.stream_options and body.stream_options.include_usage),
            options=options,
        )
        return EventSourceResponse(chunks, sep="\n", ping=_PING_SECONDS)
    work = to_chat_completion(
        generations, completion_id=completion_id, created=created, model=body.model, options=options
    )
    try:
        return await _unless_disconnected(request, work)
    except _ClientGone:
        return Response(status_code=499)  # nobody reads it; nginx's "client closed request"
