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
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from server import __version__
from server.api.access_log import AccessLogMiddleware
from server.api.anthropic_routes import router as anthropic_router
from server.api.deps import Runtime
from server.api.errors import install_error_handlers
from server.api.metering import MeteredEngine
from server.api.metrics import Metrics
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
from server.engine.chat_template import ChatTemplate, TemplateRejected
from server.engine.contract import Engine
from server.fetch import FetchError, ensure_model_file, ensure_projector_file
from server.gguf import read_header
from server.hardware import GpuProbe
from server.planner import Plan
from server.progress import Progress
from server.registry import ModelSpec
from server.settings import Settings
from server.ui import add_chat_page, is_page_path

log = logging.getLogger("gemma_serve")

EngineLoader = Callable[[], Engine]


def check_model_template(path: Path) -> None:
    """Compile and trial-render the model file's own chat template in the sandbox before
    llama.cpp loads the file: a template that tries to escape it (CVE-2024-34359) is refused."""
    source = read_header(path).metadata.get("tokenizer.chat_template")
    if isinstance(source, str) and source:
        try:
            ChatTemplate(source, origin=f"{path.name} file's")
        except TemplateRejected as exc:
            raise FetchError(f"{exc}; serve it with --chat-template pinned") from exc


def projector_of(
    spec: ModelSpec,
    settings: Settings,
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
) -> Path | None:
    """The model's own vision projector, fetched and checked; None for a text-only model. One
    that cannot be had leaves the model serving text (logged, and the model card says so)."""
    if not spec.has_vision:
        return None
    try:
        return ensure_projector_file(spec, settings.cache_dir, cancel, progress)
    except FetchError as exc:
        log.warning("%s; serving %s without images (text only)", exc, spec.id)
        return None


def model_to_serve(
    settings: Settings,
    plan: Plan,
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
) -> tuple[ModelSpec, int, Path]:
    """(model, context, verified file): the plan's model, or when it cannot be had the plan's
    fallback (the bundled model), said loudly: which model was meant, why it is not served, what
    to do. With --require-gpu there is no fallback: the FetchError ends the start (exit 1), so
    the supervisor retries and the download resumes, instead of a healthy-looking 270M."""
    spec, n_ctx = plan.model, plan.n_ctx
    try:
        return spec, n_ctx, ensure_model_file(spec, settings.cache_dir, cancel, progress)
    except FetchError as exc:
        if plan.fallback is None or settings.require_gpu:
            raise
        fallback = plan.fallback
        log.error(
            "NOT SERVING %s, the model planned for this machine: %s; serving the bundled %s "
            "instead (a small base model, poor answers). Fix the cause and restart to serve %s "
            "(an interrupted download resumes); --require-gpu makes this an error instead",
            spec.id,
            exc,
            fallback.id,
            spec.id,
        )
        n_ctx = min(n_ctx, fallback.architecture.context_length)
        return fallback, n_ctx, ensure_model_file(fallback, settings.cache_dir, cancel, progress)


def default_engine_loader(
    settings: Settings,
    plan: Plan,
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
) -> EngineLoader:
    """Fetch and verify the model file, then load it as planned (runs in a worker thread). A set
    `cancel` stops a download in progress (DownloadCancelled), to be resumed at the next start.
    `progress` follows each step, for the log and /health."""

    def load() -> Engine:
        # Imported here so that only a server that really loads a model imports llama_cpp.
        from server.engine.llama_engine import LlamaEngine

        spec, n_ctx, path = model_to_serve(settings, plan, cancel, progress)
        if cancel is not None and cancel.is_set():
            raise DownloadCancelled(spec.id)  # stopping: do not start loading it now
        if settings.chat_template == "gguf":
            check_model_template(path)
        mmproj = (
            None
            if settings.no_vision
            else settings.mmproj or projector_of(spec, settings, cancel, progress)
        )
        if progress is not None:
            progress.begin(
                "loading", spec.id, None, detail=f"from {path} ({n_ctx} tokens of context)"
            )
        try:
            return LlamaEngine(
                model_path=path,
                model_id=spec.id,
                n_ctx=n_ctx,
                n_threads=settings.threads,
                n_gpu_layers=plan.n_gpu_layers,
                tensor_split=plan.tensor_split,
                kv_cache_type=settings.kv_cache_type,
                template_choice=settings.chat_template,
                parallel=plan.parallel,
                parallel_trials=plan.parallel_trials,
                queue_size=settings.queue_size,
                request_timeout=settings.request_timeout,
                mmproj_path=mmproj,
                cache_ram=settings.cache_ram,
                cancel=cancel,
            )  # _load logs the end of the step: "... is loaded ...; ready"
        except BaseException:
            if progress is not None:
                progress.drop()
            raise

    return load


async def _load(
    runtime: Runtime,
    load: EngineLoader,
    fallback: ModelSpec | None,
    on_fatal: Callable[[str], None],
    install: Callable[[Engine], Engine],
) -> None:
    try:
        engine = await asyncio.to_thread(load)
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
    if fallback is not None and engine.info.model_id == fallback.id:
        runtime.spec = fallback  # the plan's model could not be fetched: describe what runs
    runtime.engine = install(engine)
    loaded = f"{engine.info.model_id} is loaded{{took}} (context {engine.info.n_ctx} tokens); ready"
    if runtime.progress is not None:
        runtime.progress.end(loaded)
        runtime.progress.close()
    else:
        log.info("%s", loaded.replace("{took}", ""))


def create_app(
    settings: Settings,
    plan: Plan,
    load_engine: EngineLoader | None = None,
    on_fatal: Callable[[str], None] | None = None,
    gpu_probe: GpuProbe | None = None,
) -> FastAPI:
    """Build the ASGI app for a plan. `on_fatal` is told when the model cannot be loaded
    (default: log). `load_engine` replaces the default loader (tests use it to hold a load).
    `gpu_probe` reads GPU memory for /metrics (default: NVML). `app.state.drain` runs the
    graceful shutdown. Raises SecurityConfigError for an unreadable API key file."""
    # Progress lines in the log off a terminal (containers, services); a bar on a terminal.
    progress = Progress(settings.progress_interval, terminal=sys.stderr.isatty())
    runtime = Runtime(spec=plan.model, aliases=tuple(settings.model_aliases), progress=progress)
    stopping = threading.Event()  # set at shutdown: a download in progress stops
    load = load_engine or default_engine_loader(settings, plan, stopping, progress)
    report = on_fatal or (lambda message: log.error("%s", message))
    api_keys = load_api_keys(settings.api_keys, settings.api_keys_file)
    probe = gpu_probe or GpuProbe()
    metrics = Metrics(
        engine_stats=lambda: runtime.engine.stats() if runtime.engine else None,
        gpu_memory=probe.memory_in_use if plan.on_gpu else None,
    )

    def install(engine: Engine) -> Engine:
        return MeteredEngine(engine, metrics)

    async def interrupt() -> None:
        # Engine.close() is idempotent: the lifespan closes the engine again, harmlessly.
        if runtime.engine is not None:
            await asyncio.to_thread(runtime.engine.close)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(_load(runtime, load, plan.fallback, report, install))
        try:
            yield
        finally:
            # A download in progress stops at once (it resumes at the next start), a load in
            # llama.cpp at its next tensor; then wait for the loader to return.
            stopping.set()
            await loading
            progress.close()
            if runtime.engine is not None:
                await asyncio.to_thread(runtime.engine.close)
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
    app.include_router(ollama_router)  # Ollama's API, /api/*
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
