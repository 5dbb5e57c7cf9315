"""Thin routers: each endpoint converts its body (pure, in its own module) and hands the
generation requests and its answer to the one serving path (`serving.Serving`)."""

from __future__ import annotations

import asyncio
import time
import uuid

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from server.api.chat import to_chat_plan
from server.api.chat_answer import ChatAnswer
from server.api.chat_protocol import ChatCompletion, ChatCompletionRequest
from server.api.completions import CompletionAnswer, to_completion_plan
from server.api.completions_protocol import Completion, CompletionRequest
from server.api.deps import Runtime, RuntimeDep, SettingsDep
from server.api.images import ImageCollector, image_limits
from server.api.protocol import Capabilities, Health, ModelCard, ModelList
from server.api.remote_images import fetch_remote_images, policy_of
from server.api.responses import ResponseAnswer, to_response_generations
from server.api.responses_protocol import ResponseObject, ResponseRequest
from server.api.serving import Serving, ServingDep
from server.models.manager import ModelState
from server.settings import Settings

router = APIRouter()


@router.get("/health", response_model=Health)
async def health(runtime: RuntimeDep) -> Health | JSONResponse:
    if not runtime.ready:
        # 503 until ready, with what it is doing and how far it got (a supervisor's health
        # check reads `status`: server/healthcheck.py).
        error = runtime.not_ready_error()
        body = {**error.body(), **runtime.starting()}
        return JSONResponse(body, status_code=503, headers=error.headers)
    stats = runtime.stats()
    loaded = [runtime.public_id(s) for s in runtime.models.states() if s.state == "loaded"]
    if stats is None:  # every model unloaded while idle: ready, loads on the next request
        return Health(active=0, queued=0, parallel=0, loaded=loaded)
    return Health(active=stats.active, queued=stats.queued, parallel=stats.parallel, loaded=loaded)


@router.get("/v1/models", response_model=ModelList)
async def list_models(runtime: RuntimeDep) -> ModelList:
    """Every installed model with its state; the model picked at start first (many clients take
    the first entry as the model to use)."""
    return ModelList(data=[_card(runtime, state) for state in runtime.models.states()])


@router.get("/v1/models/{model_id}", response_model=ModelCard)
async def get_model(model_id: str, runtime: RuntimeDep) -> ModelCard:
    return _card(runtime, runtime.models.state(runtime.resolve(model_id)))


def _card(runtime: Runtime, state: ModelState) -> ModelCard:
    spec = runtime.spec_of(state)
    info = state.model.info if state.model is not None and state.kind == "chat" else None
    expires = int(state.expires_at) if state.expires_at is not None else None
    if spec is None:  # another kind of model, registered without a registry description
        return ModelCard(
            id=state.model_id,
            created=runtime.created,
            file_size=state.file_size,
            context_length=None,
            device=None,
            capabilities=None,
            flash_attn=None,
            state=state.state,
            memory=state.holds,
            expires_at=expires,
        )
    return ModelCard(
        id=runtime.public_id(state),
        created=runtime.created,
        name=spec.name,
        parameters=spec.parameters,
        quantization=spec.quantization,
        file_size=spec.file_size if state.model_id == runtime.start_id else state.file_size,
        context_length=info.n_ctx if info else None,
        trained_context_length=spec.architecture.context_length,
        device=info.device if info else None,
        capabilities=Capabilities(vision=info.vision) if info else None,
        flash_attn=info.flash_attn if info else None,
        state=state.state,
        memory=state.holds,
        expires_at=expires,
    )


async def _image_collector(
    body: ChatCompletionRequest | ResponseRequest, serving: Serving, settings: Settings
) -> ImageCollector:
    """The request's images are checked against the model and the limits, and its remote ones
    fetched (with --image-urls), before anything is decoded."""
    limits = image_limits(settings, accepted=serving.engine.info.vision)
    fetched = await fetch_remote_images(body, policy_of(settings), limits)
    return ImageCollector(limits, fetched)


@router.post("/v1/chat/completions", response_model=ChatCompletion)
async def create_chat_completion(
    body: ChatCompletionRequest, request: Request, serving: ServingDep, settings: SettingsDep
) -> Response | ChatCompletion:
    await serving.select(body.model)
    images = await _image_collector(body, serving, settings)
    # NOTE: in a worker thread: decoding a request's pictures with Pillow takes tens of
    # milliseconds each, which would stall every other stream on the event loop.
    chat = await asyncio.to_thread(to_chat_plan, body, settings.max_choices, images)
    answer = ChatAnswer(
        completion_id=f"chatcmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=body.model,
        n=len(chat.generations.requests),
        options=chat.options,
        include_usage=chat.include_usage,
    )
    return await serving.serve(request, chat.generations, answer, stream=bool(body.stream))


@router.post("/v1/completions", response_model=Completion)
async def create_completion(
    body: CompletionRequest, request: Request, serving: ServingDep, settings: SettingsDep
) -> Response | Completion:
    await serving.select(body.model)
    completion = to_completion_plan(body, settings.max_choices)
    answer = CompletionAnswer(
        completion_id=f"cmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=body.model,
        n=completion.n,
        prefixes=completion.prefixes,
        with_logprobs=body.logprobs is not None,
        include_usage=completion.include_usage,
    )
    return await serving.serve(request, completion.generations, answer, stream=bool(body.stream))


@router.post("/v1/responses", response_model=ResponseObject)
async def create_response(
    body: ResponseRequest, request: Request, serving: ServingDep, settings: SettingsDep
) -> Response | ResponseObject:
    await serving.select(body.model)
    images = await _image_collector(body, serving, settings)
    generations = await asyncio.to_thread(to_response_generations, body, images)  # see chat
    answer = ResponseAnswer(
        response_id=f"resp_{uuid.uuid4().hex}",
        message_id=f"msg_{uuid.uuid4().hex}",
        created_at=int(time.time()),
        request=body,
    )
    return await serving.serve(request, generations, answer, stream=bool(body.stream))
