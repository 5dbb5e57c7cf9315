"""Loading a chat model: fetch and check its file, then load it as planned (in a worker thread).

`default_engine_loader` loads the model picked at start (with the plan's fallback);
`chat_model` describes any installed model to the model manager, planned when it is loaded
against the memory free then.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from server.download import DownloadCancelled
from server.engine.chat_template import ChatTemplate, TemplateRejected
from server.engine.contract import Engine
from server.fetch import FetchError, ensure_model_file, ensure_projector_file
from server.gguf import read_header
from server.hardware import Device, GpuProbe
from server.memory import estimate
from server.models.manager import Installed
from server.planner import CPU_CTX, CPU_PARALLEL, MIN_GPU_PARALLEL, Plan, PlanOptions, plan
from server.progress import Progress
from server.registry import ModelSpec, Registry
from server.report import plan_options
from server.settings import Settings

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
                flash_attn=settings.flash_attn,
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


def free_memory_reader(
    probe: GpuProbe, on_gpu: bool, margin: int
) -> tuple[Callable[[], int | None], str]:
    """(read the bytes free now, what they are): on a GPU, NVML's free memory less the margin
    of each card; on the CPU, the system's available memory (MemAvailable)."""
    if on_gpu:

        def gpu_free() -> int | None:
            cards = probe.memory_in_use()
            if not cards:
                return None  # NVML cannot tell: load beside the others rather than refuse
            return sum(max(0, card.total - card.used - margin) for card in cards)

        return gpu_free, "GPU memory"
    return available_memory, "memory"


def available_memory() -> int | None:
    """The system's available memory (MemAvailable), None where /proc/meminfo is absent."""
    try:
        for line in Path("/proc/meminfo").read_text(encoding="ascii").splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def on_demand_options(settings: Settings, spec: ModelSpec, on_gpu: bool) -> PlanOptions:
    """How a model loaded on demand is planned: at --ctx (else --plan-ctx) with --parallel (else
    the planner's minimum) on a GPU, never grown to fill the card, so that other models still
    fit beside it; on the CPU as the start model is."""
    options = replace(plan_options(settings), model=spec.id)
    if not on_gpu:
        return options
    return replace(
        options,
        ctx=settings.ctx or settings.plan_ctx,
        parallel=settings.parallel or MIN_GPU_PARALLEL,
    )


def chat_need(spec: ModelSpec, settings: Settings, on_gpu: bool) -> int:
    """Bytes a model loaded on demand holds, as `on_demand_options` plans it."""
    options = on_demand_options(settings, spec, on_gpu)
    if on_gpu:
        n_ctx, n_seq = options.ctx or settings.plan_ctx, options.parallel or MIN_GPU_PARALLEL
    else:
        n_ctx, n_seq = min(CPU_CTX, settings.max_ctx), options.parallel or CPU_PARALLEL
    n_ctx = min(n_ctx, spec.architecture.context_length)
    vision = spec.has_vision and not settings.no_vision
    return estimate(spec, n_ctx, n_seq=n_seq, kv_type=settings.kv_cache_type, vision=vision).total


def chat_model(
    spec: ModelSpec,
    settings: Settings,
    registry: Registry,
    devices: Callable[[], list[Device]] | None,
    install: Callable[[Engine], Engine],
    source: str = "registry",
) -> Installed:
    """An installed chat model for the manager: when loaded, planned on the GPUs as they are
    then (`devices()`, read at load time; None: the CPU), its file checked in the cache (a
    registry model not in it is not installed) and wrapped by `install` (the metrics)."""
    on_gpu = devices is not None

    def load(stopping: threading.Event, free: int | None) -> Engine:
        from server.engine.backends import llama_build  # loads llama.cpp

        options = on_demand_options(settings, spec, on_gpu)
        chosen = plan(devices() if devices else [], registry, options, llama_build())
        log.info("loading %s on demand: %s", spec.id, chosen.reason)
        return install(default_engine_loader(settings, chosen, stopping)())

    return Installed(
        spec.id,
        load,
        need=chat_need(spec, settings, on_gpu),
        file_size=spec.file_size,
        source=source,
        about=spec,
    )
