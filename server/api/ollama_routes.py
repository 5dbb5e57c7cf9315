"""Ollama's API under `/api/`: a thin router over the one serving path, and what Ollama's clients
ask about models (the list, one model's details, what is loaded, pulling one).

Chat and generate are converted in `server.api.ollama` and served by `serving.Serving` like every
other endpoint (NDJSON instead of SSE when streamed). Errors come out as Ollama's
`{"error": "..."}` (see `errors.dialect_of`). Model management that makes no sense for a server
of registry models (create, push, copy, blobs) answers 400 in that shape, never a 404 page.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from server.api.deps import Runtime, RuntimeDep, SettingsDep
from server.api.errors import APIError, OllamaErrorResponse
from server.api.ollama import (
    OllamaAnswer,
    now_text,
    to_ollama_chat_plan,
    to_ollama_generate_plan,
)
from server.api.ollama_protocol import (
    ChatDone,
    GenerateDone,
    ModelDetails,
    ModelRequest,
    OllamaChatRequest,
    OllamaGenerateRequest,
    OllamaMessage,
    RunningList,
    RunningModel,
    ShowAnswer,
    Status,
    TagList,
    TagModel,
    Timings,
    Version,
)
from server.api.ollama_pull import pull_lines, pull_whole
from server.api.serving import NDJSON, Serving, ServingDep
from server.fetch import FetchError
from server.models.manager import KeepAlive, ModelState
from server.registry import ModelSpec, RegistryError, load_registry
from server.setting_values import parse_duration
from server.settings import Settings

# The Ollama release whose API this follows: clients compare `/api/version` with the minimum
# they need, so it is Ollama's numbering, not gemma-serve's.
OLLAMA_API_VERSION = "0.12.0"
# `expires_at` of a model that is never unloaded (keep-alive forever).
FOREVER = "9999-12-31T23:59:59Z"
# Gemma 3's turn format in Ollama's template syntax, for display: prompts are rendered with the
# chat template the server loaded, never with this text.
TEMPLATE = (
    '{{- range .Messages }}<start_of_turn>{{ if eq .Role "assistant" }}model{{ else }}user'
    "{{ end }}\n{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n"
)
_PULL_TICK = 1.0  # seconds between progress lines while a file downloads

router = APIRouter(prefix="/api")
log = logging.getLogger("gemma_serve.api")


def served(runtime: Runtime, asked: str) -> ModelState:
    """The installed model `asked` names (404 otherwise); Ollama's default tag `:latest` is
    optional."""
    return runtime.models.state(runtime.resolve(asked.removesuffix(":latest")))


def _details(spec: ModelSpec) -> ModelDetails:
    return ModelDetails(parameter_size=spec.parameters, quantization_level=spec.quantization)


def _spec(runtime: Runtime, state: ModelState) -> ModelSpec:
    """A chat model's registry description (Ollama's routes list chat models only)."""
    spec = runtime.spec_of(state)
    if spec is None or state.kind != "chat":
        raise APIError(400, f"{state.model_id} is not a chat model.", param="model")
    return spec


def _chat_models(runtime: Runtime) -> list[ModelState]:
    return [state for state in runtime.models.states() if state.kind == "chat"]


def _size(runtime: Runtime, state: ModelState) -> int:
    spec = _spec(runtime, state)
    vision = state.model is not None and state.model.info.vision
    return spec.file_size + ((spec.vision_projector_size or 0) if vision else 0)


def _tag(runtime: Runtime, state: ModelState) -> TagModel:
    name = f"{runtime.public_id(state)}:latest"
    spec = _spec(runtime, state)
    return TagModel(
        name=name,
        model=name,
        modified_at=now_text(),
        size=_size(runtime, state),
        digest=spec.sha256 or "",
        details=_details(spec),
    )


def keep_alive_of(value: float | str | None) -> KeepAlive | float:
    """Ollama's `keep_alive` in seconds: a number of seconds or a duration ("5m"), negative for
    forever (None here); -1.0 when absent (the model's keep-alive is unchanged)."""
    if value is None:
        return -1.0
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise APIError(400, f"keep_alive: {exc}", param="keep_alive") from exc


def _expires(state: ModelState) -> str:
    if state.expires_at is None:
        return FOREVER if not state.busy else now_text()
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(state.expires_at))


@router.get("/version", response_model=Version)
async def version() -> Version:
    return Version(version=OLLAMA_API_VERSION)


@router.get("/tags", response_model=TagList)
async def tags(runtime: RuntimeDep) -> TagList:
    """Every installed model."""
    return TagList(models=[_tag(runtime, state) for state in _chat_models(runtime)])


@router.get("/ps", response_model=RunningList)
async def running(runtime: RuntimeDep) -> RunningList:
    """The loaded models, with the memory they hold and when they unload if still idle."""
    models = []
    for state in _chat_models(runtime):
        if state.state != "loaded":
            continue
        info = state.model.info
        models.append(
            RunningModel(
                **_tag(runtime, state).model_dump(),
                expires_at=_expires(state),
                size_vram=state.holds if info.device == "gpu" else 0,
                context_length=info.n_ctx,
            )
        )
    return RunningList(models=models)


def _bare(name: str) -> str:
    return name.removesuffix(":latest")


def _model_name(body: ModelRequest) -> str:
    name = body.model or body.name
    if not name:
        raise APIError(400, "Missing required parameter: 'model'.", param="model")
    return name


@router.post("/show", response_model=ShowAnswer)
async def show(body: ModelRequest, runtime: RuntimeDep) -> ShowAnswer:
    state = served(runtime, _model_name(body))
    spec = _spec(runtime, state)
    info = state.model.info if state.model is not None else None
    arch = spec.architecture
    model_info: dict[str, Any] = {
        "general.architecture": "gemma3",
        "general.basename": spec.name,
        "gemma3.block_count": arch.block_count,
        "gemma3.attention.head_count": arch.head_count,
        "gemma3.attention.head_count_kv": arch.head_count_kv,
        "gemma3.attention.key_length": arch.key_length,
        "gemma3.attention.value_length": arch.value_length,
        "gemma3.attention.sliding_window": arch.sliding_window,
        "gemma3.vocab_size": arch.vocab_size,
        # What a client may send: the served context, not the one the model was trained with.
        "gemma3.context_length": info.n_ctx if info else arch.context_length,
    }
    capabilities = ["completion", "tools"] + (["vision"] if info and info.vision else [])
    parameters = [f"num_ctx {info.n_ctx}"] if info else []
    parameters += ['stop "<end_of_turn>"', "temperature 1", "top_k 64", "top_p 0.95"]
    return ShowAnswer(
        modelfile=f"# Served by gemma-serve\nFROM {runtime.public_id(state)}\n",
        parameters="\n".join(parameters),
        template=TEMPLATE,
        details=_details(spec),
        model_info=model_info,
        capabilities=capabilities,
        modified_at=now_text(),
    )


async def _load_answer(
    request: OllamaChatRequest | OllamaGenerateRequest, serving: Serving
) -> ChatDone | GenerateDone:
    """A request with nothing to generate loads the model (`done_reason: "load"`, every count
    and duration 0), or with `keep_alive: 0` unloads it (`"unload"`), as Ollama does."""
    reason = "load"
    if keep_alive_of(request.keep_alive) == 0:
        serving.release()
        await serving.runtime.models.unload(serving.runtime.resolve(_bare(request.model)))
        reason = "unload"
    nothing = Timings(
        done_reason=reason,
        total_duration=0,
        prompt_eval_count=0,
        prompt_eval_duration=0,
        eval_count=0,
        eval_duration=0,
    ).model_dump()
    common = {"model": request.model, "created_at": now_text(), "done": True, **nothing}
    if isinstance(request, OllamaChatRequest):
        return ChatDone(message=OllamaMessage(content=""), **common)
    return GenerateDone(response="", **common)


@router.post("/chat", response_model=ChatDone)
async def chat(
    body: OllamaChatRequest, request: Request, serving: ServingDep
) -> Response | ChatDone | GenerateDone:
    started = time.monotonic_ns()  # Ollama's durations count from the request's arrival
    await serving.select(_bare(body.model), keep_alive=keep_alive_of(body.keep_alive))
    if not body.messages:
        return await _load_answer(body, serving)
    # NOTE: in a worker thread: pictures are decoded with Pillow (see routes.py).
    converted = await asyncio.to_thread(to_ollama_chat_plan, body)
    answer = OllamaAnswer(body.model, "chat", converted.options, started)
    return await serving.serve(
        request, converted.generations, answer, stream=body.stream, ndjson=True
    )


@router.post("/generate", response_model=GenerateDone)
async def generate(
    body: OllamaGenerateRequest, request: Request, serving: ServingDep
) -> Response | ChatDone | GenerateDone:
    started = time.monotonic_ns()
    await serving.select(_bare(body.model), keep_alive=keep_alive_of(body.keep_alive))
    if not body.prompt and not body.images:
        return await _load_answer(body, serving)
    converted = await asyncio.to_thread(to_ollama_generate_plan, body)
    answer = OllamaAnswer(body.model, "generate", converted.options, started)
    return await serving.serve(
        request, converted.generations, answer, stream=body.stream, ndjson=True
    )


def _registry_spec(settings: Settings, name: str) -> ModelSpec:
    try:
        return load_registry(settings.registry_file).get(name.removesuffix(":latest"))
    except RegistryError as exc:
        raise APIError(404, f"pull model manifest: {exc}", param="model") from exc


@router.post("/pull", response_model=Status)
async def pull(body: ModelRequest, settings: SettingsDep) -> Response | Status:
    """Download a registry model into the cache (the served model does not change)."""
    spec = _registry_spec(settings, _model_name(body))
    if body.stream:
        return StreamingResponse(pull_lines(spec, settings), media_type=NDJSON)
    try:
        await pull_whole(spec, settings)
    except FetchError as exc:
        raise APIError(502, str(exc), code="download_failed") from exc
    return Status(status="success")


@router.delete("/delete")
async def delete(body: ModelRequest, runtime: RuntimeDep, settings: SettingsDep) -> None:
    """Refused: the served model is in use, and other files of the cache may be shared with
    other servers and `gemma-serve pull`; the operator removes them (docs/api.md)."""
    name = _model_name(body)
    if name.removesuffix(":latest") in (runtime.model_id, *runtime.aliases):
        raise APIError(
            400, f"The model '{name}' is being served; it cannot be deleted.", param="model"
        )
    _registry_spec(settings, name)  # unknown: 404
    raise APIError(
        400,
        f"gemma-serve does not delete model files through the API; remove '{name}' from "
        f"the model cache ({settings.cache_dir}) by hand.",
        param="model",
        code="unsupported_endpoint",
    )


# How /openapi.json documents the endpoints that always refuse.
REFUSED: dict[int | str, dict[str, Any]] = {
    400: {"description": "Not supported by gemma-serve.", "model": OllamaErrorResponse}
}


def _not_here(what: str) -> APIError:
    """A deterministic refusal is a 4xx: clients retry 5xx answers."""
    return APIError(400, f"{what} is not supported by gemma-serve.", code="unsupported_endpoint")


@router.post("/create", responses=REFUSED)
async def create() -> None:
    raise _not_here("Creating models (/api/create)")


@router.post("/push", responses=REFUSED)
async def push() -> None:
    raise _not_here("Pushing models (/api/push)")


@router.post("/copy", responses=REFUSED)
async def copy() -> None:
    raise _not_here("Copying models (/api/copy)")


@router.post("/blobs/{digest}", responses=REFUSED)
async def blobs(digest: str) -> None:
    raise _not_here("Model blobs (/api/blobs)")
