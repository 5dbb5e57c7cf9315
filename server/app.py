"""The application factory: routes, error handlers, and the model loaded in the background.

Nothing happens at import time. The HTTP port opens at once and `/health` answers 503 until the
engine is ready, so a supervisor (Docker, systemd, a test) can tell "loading" from "down".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server import __version__
from server.api.completions import router as completions_router
from server.api.deps import Runtime
from server.api.errors import install_error_handlers
from server.api.responses import router as responses_router
from server.api.routes import router
from server.engine.types import Engine
from server.fetch import FetchError, ensure_model_file
from server.planner import Plan
from server.registry import ModelSpec
from server.settings import Settings

log = logging.getLogger("gemma_serve")

EngineLoader = Callable[[], Engine]


def default_engine_loader(settings: Settings, plan: Plan) -> EngineLoader:
    """Fetch and verify the model file, then load it as planned (runs in a worker thread)."""

    def load() -> Engine:
        # Imported here so that only a server that really loads a model imports llama_cpp.
        from server.engine.llama_engine import LlamaEngine

        spec, n_ctx = plan.model, plan.n_ctx
        try:
            path = ensure_model_file(spec, settings.cache_dir)
        except FetchError as exc:
            if plan.fallback is None:
                raise
            spec = plan.fallback
            n_ctx = min(n_ctx, spec.architecture.context_length)
            log.warning("%s; serving the bundled %s instead", exc, spec.id)
            path = ensure_model_file(spec, settings.cache_dir)
        return LlamaEngine(
            model_path=path,
            model_id=spec.id,
            n_ctx=n_ctx,
            n_threads=settings.threads,
            n_gpu_layers=plan.n_gpu_layers,
            tensor_split=plan.tensor_split,
            kv_cache_type=settings.kv_cache_type,
            template_choice=settings.chat_template,
        )

    return load


async def _load(
    runtime: Runtime,
    load: EngineLoader,
    fallback: ModelSpec | None,
    on_fatal: Callable[[str], None],
) -> None:
    try:
        engine = await asyncio.to_thread(load)
    except Exception as exc:
        runtime.load_error = str(exc)
        on_fatal(f"cannot serve {runtime.spec.id}: {exc}")
        return
    if fallback is not None and engine.info.model_id == fallback.id:
        runtime.spec = fallback  # the plan's model could not be fetched: describe what runs
    runtime.engine = engine
    log.info("%s is loaded (context %d tokens); ready", engine.info.model_id, engine.info.n_ctx)


def create_app(
    settings: Settings,
    plan: Plan,
    load_engine: EngineLoader | None = None,
    on_fatal: Callable[[str], None] | None = None,
) -> FastAPI:
    """Build the ASGI app for a plan. `on_fatal` is told when the model cannot be loaded
    (default: log). `load_engine` replaces the default loader (tests use it to hold a load)."""
    runtime = Runtime(spec=plan.model)
    load = load_engine or default_engine_loader(settings, plan)
    report = on_fatal or (lambda message: log.error("%s", message))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(_load(runtime, load, plan.fallback, report))
        try:
            yield
        finally:
            # A load in progress cannot be interrupted (it runs in llama.cpp); let it end first.
            await loading
            if runtime.engine is not None:
                await asyncio.to_thread(runtime.engine.close)

    app = FastAPI(title="gemma-serve", version=__version__, lifespan=lifespan)
    app.state.runtime = runtime
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(completions_router)
    app.include_router(responses_router)
    return app
