"""The application factory: routes, error handlers, and the model loaded in the background.

Nothing happens at import time. The HTTP port opens at once and `/health` answers 503 until the
engine is ready, so a supervisor (Docker, systemd, a test) can tell "loading" from "down".

Middleware, outermost first: access log and request metrics; Host check (DNS rebinding); CORS
(only when origins are configured); graceful-shutdown gate; API keys (only when configured);
body limit. So every request is logged and counted, a rebinding page is refused before anything
else, a browser's preflight is answered without a key, and a body is never read unauthorised.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server import __version__
from server.api.access_log import AccessLogMiddleware
from server.api.anthropic_routes import router as anthropic_router
from server.api.deps import Runtime
from server.api.embeddings import router as embeddings_router
from server.api.errors import install_error_handlers
from server.api.metering import MeteredEngine
from server.api.metrics import Metrics
from server.api.ollama_embed import router as ollama_embed_router
from server.api.ollama_routes import router as ollama_router
from server.api.routes import router
from server.api.security import (
    APIKeyMiddleware,
    BodyLimitMiddleware,
    HostCheckMiddleware,
    HostPolicy,
    StrictCORSMiddleware,
    load_api_keys,
)
from server.api.shutdown import Drain, DrainMiddleware
from server.cancellation import Cancelled
from server.download import DownloadCancelled
from server.engine.contract import Engine
from server.hardware import Device, GpuProbe, as_cuda_sees_them
from server.models.embedding import embedding_model, installed_embedding_specs
from server.models.installed import default_models_file, installed_specs, load_user_models
from server.models.loading import (
    EngineLoader,
    chat_model,
    chat_need,
    default_engine_loader,
    free_memory_reader,
)
from server.models.manager import Installed, ModelManager
from server.planner import Plan
from server.progress import Progress
from server.registry import ModelSpec, Registry, RegistryError, load_registry
from server.settings import Settings
from server.ui import add_chat_page, is_page_path

log = logging.getLogger("gemma_serve")

__all__ = ["EngineLoader", "create_app", "default_engine_loader"]


async def _load_embedding_model(runtime: Runtime) -> None:
    """Load the embedding model named by --embedding-model at start, beside the chat model; a
    failure is logged (a request naming it tries the load again and answers 503 with the reason),
    and chat goes on."""
    assert runtime.embedding_id is not None
    try:
        await runtime.models.start_loading(runtime.embedding_id)
    except (DownloadCancelled, Cancelled):
        return
    except Exception as exc:
        log.error("cannot serve the embedding model %s: %s", runtime.embedding_id, exc)


async def _load(
    runtime: Runtime, fallback: ModelSpec | None, on_fatal: Callable[[str], None]
) -> None:
    """Load the model picked at start through the manager; /health is ready once it is."""
    try:
        await runtime.models.start_loading(runtime.start_id)
    except DownloadCancelled:
        log.info("stopped during the download of %s; it resumes at the next start", runtime.spec.id)
        return
    except Cancelled:
        log.info("stopped while loading %s", runtime.spec.id)
        return
    except Exception as exc:
        runtime.load_error = str(exc)
        on_fatal(f"cannot serve {runtime.spec.id}: {exc}")
        return
    engine = runtime.engine
    if engine is None:  # loaded as the server stops
        return
    if fallback is not None and engine.info.model_id == fallback.id:
        runtime.spec = fallback  # the plan's model could not be fetched: describe what runs
    runtime.ready = True
    attention = "" if engine.info.flash_attn else ", without flash attention"
    loaded = (
        f"{engine.info.model_id} is loaded{{took}} (context {engine.info.n_ctx} tokens"
        f"{attention}); ready"
    )
    if runtime.progress is not None:
        runtime.progress.end(loaded)
        runtime.progress.close()
    else:
        log.info("%s", loaded.replace("{took}", ""))


def _register_models(
    manager: ModelManager,
    settings: Settings,
    plan: Plan,
    start: Callable[[threading.Event, int | None], Engine],
    install: Callable[[Engine], Engine],
    probe: GpuProbe,
) -> None:
    """The model picked at start first (clients take the first listed as the one to use), then
    every other installed model: registry models in the cache and those the user registry file
    brings (one that fails its checks is refused with one line; the others still serve)."""
    start_need = plan.needed if plan.on_gpu else chat_need(plan.model, settings, False)
    manager.register(
        Installed(
            plan.model.id, start, need=start_need, file_size=plan.model.file_size, about=plan.model
        )
    )
    try:
        registry = load_registry(settings.registry_file)
    except RegistryError as exc:
        log.error("%s; serving %s only", exc, plan.model.id)
        return
    brought = load_user_models(settings.models_file, {spec.id for spec in registry.models})
    for refused in brought.refused:
        log.error("%s", refused)
    everything = Registry(models=[*registry.models, *brought.specs])
    devices = None
    if plan.on_gpu:

        def devices() -> list[Device]:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            return as_cuda_sees_them(probe.hardware(), visible).devices

    local = {spec.id for spec in brought.specs}
    for spec in installed_specs(registry, settings.cache_dir, brought):
        if spec.id != plan.model.id:
            source = (
                str(settings.models_file or default_models_file())
                if spec.id in local
                else "registry"
            )
            manager.register(chat_model(spec, settings, everything, devices, install, source))
    for spec in installed_embedding_specs(registry, settings.cache_dir, settings.embedding_model):
        path = settings.embedding_model_file if spec.id == settings.embedding_model else None
        manager.register(embedding_model(spec, settings, plan.on_gpu, path))
    named = settings.embedding_model
    if named is not None and named not in manager.ids():
        log.error("--embedding-model %s is not an embedding model of the registry", named)
    elif named is not None and manager.state(named).kind != "embedding":
        log.error("--embedding-model %s is a chat model, not an embedding model", named)


def create_app(
    settings: Settings,
    plan: Plan,
    load_engine: EngineLoader | None = None,
    on_fatal: Callable[[str], None] | None = None,
    gpu_probe: GpuProbe | None = None,
    models: Sequence[Installed] = (),
) -> FastAPI:
    """Build the ASGI app for a plan. `on_fatal` is told when the model cannot be loaded
    (default: log). `load_engine` replaces the default loader (tests use it to hold a load).
    `gpu_probe` reads GPU memory for /metrics and for the fit of models loaded on demand
    (default: NVML). `models`: more installed models (tests give scripted ones); with
    `load_engine` set, only those, else every installed model. `app.state.drain` runs the
    graceful shutdown. Raises SecurityConfigError for an unreadable API key file."""
    # Progress lines in the log off a terminal (containers, services); a bar on a terminal.
    progress = Progress(settings.progress_interval, terminal=sys.stderr.isatty())
    probe = gpu_probe or GpuProbe()
    free, what = free_memory_reader(probe, plan.on_gpu, settings.gpu_margin)
    manager = ModelManager(
        keep_alive=settings.keep_alive,
        free_memory=free,
        what=what,
        max_waiting=settings.queue_size,
    )
    runtime = Runtime(
        spec=plan.model,
        models=manager,
        aliases=tuple(settings.model_aliases),
        progress=progress,
        embedding_id=settings.embedding_model,
    )
    load = load_engine or default_engine_loader(settings, plan, manager.stopping, progress)
    report = on_fatal or (lambda message: log.error("%s", message))
    api_keys = load_api_keys(settings.api_keys, settings.api_keys_file)
    metrics = Metrics(
        engine_stats=runtime.stats,
        gpu_memory=probe.memory_in_use if plan.on_gpu else None,
        models=manager.states,
    )

    def install(engine: Engine) -> Engine:
        return MeteredEngine(engine, metrics)

    # The first load reports its progress (/health, the log); a reload after an idle unload
    # reads the file already in the cache and just says it in one line.
    loads = [load, load_engine or default_engine_loader(settings, plan, manager.stopping)]

    def start(_stopping: threading.Event, _free: int | None) -> Engine:
        loader = loads.pop(0) if len(loads) > 1 else loads[0]
        return install(loader())

    if load_engine is None:
        _register_models(manager, settings, plan, start, install, probe)
    else:
        need = plan.needed if plan.on_gpu else 0
        manager.register(
            Installed(
                plan.model.id, start, need=need, file_size=plan.model.file_size, about=plan.model
            )
        )
    for model in models:
        manager.register(model)

    async def interrupt() -> None:
        # Engine.close() is idempotent: the lifespan closes the engines again, harmlessly.
        await asyncio.to_thread(manager.close_all_now)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(_load(runtime, plan.fallback, report))
        embedding = (
            asyncio.create_task(_load_embedding_model(runtime))
            if manager.installed(runtime.embedding_id or "")
            else None
        )
        try:
            yield
        finally:
            # A download in progress stops at once (it resumes at the next start), a load in
            # llama.cpp at its next tensor; then wait for the loaders and close every model.
            manager.stopping.set()
            await loading
            if embedding is not None:
                await embedding
            progress.close()
            await manager.close()
            probe.close()

    # No /docs or /redoc: FastAPI's pages load Swagger UI and ReDoc from a CDN (blank offline,
    # and outside the chat page's Content-Security-Policy). /openapi.json describes the API.
    app = FastAPI(
        title="gemma-serve",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.runtime = runtime
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.drain = Drain(settings.shutdown_grace, interrupt)
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(embeddings_router)  # /v1/embeddings
    app.include_router(ollama_router)  # Ollama's API, /api/*
    app.include_router(ollama_embed_router)  # /api/embed, /api/embeddings
    app.include_router(anthropic_router)  # Anthropic's Messages API, /v1/messages
    app.add_route("/metrics", metrics.endpoint, methods=["GET"], include_in_schema=False)
    if settings.ui:
        add_chat_page(app)  # after the API: its paths are `/` and `/ui/*` only
    # add_middleware puts each one outside those added before it: innermost first.
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_size)
    if api_keys:
        app.add_middleware(
            APIKeyMiddleware, keys=api_keys, public_page=is_page_path if settings.ui else None
        )
    app.add_middleware(DrainMiddleware, drain=app.state.drain)
    if settings.cors_origins:
        app.add_middleware(
            StrictCORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],  # the OpenAI JS SDK sends its own x-stainless-* headers
            max_age=600,
        )
    app.add_middleware(
        HostCheckMiddleware, policy=HostPolicy(settings.host, settings.allowed_hosts)
    )
    app.add_middleware(AccessLogMiddleware, metrics=metrics, routes=app.router.routes)
    return app
