"""`gemma-serve doctor`: one screen a person pastes into a bug report.

Versions, the NVIDIA driver and each GPU as NVML reports them, what the installed llama.cpp build
can offload to, the model cache and what it holds, and the plan (the same block as
`gemma-serve plan`). `gather` collects the facts (the only I/O); `render` is a pure function of
them, so each line is tested for GPUs that are not present.
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from server import __version__
from server.build_record import cpu_flags, name, needed
from server.capability import LlamaBuild
from server.download import repo_dir
from server.fetch import read_record, record_matches, unwritable_cache
from server.hardware import Hardware
from server.memory import gib
from server.models.installed import (
    UserModels,
    cached_file,
    default_models_file,
    installed_specs,
    load_user_models,
)
from server.planner import Plan, plan
from server.registry import HuggingFaceSource, ModelSpec, PypiSource, load_registry
from server.report import describe, device_line, plan_options
from server.settings import Settings

_ENVIRONMENT = ("CUDA_DEVICE_ORDER", "CUDA_VISIBLE_DEVICES")


@dataclass(frozen=True)
class CachedModel:
    """A registry model as the cache holds it: where, and the sha256 verified for the file as
    it is now (None: not verified, or changed since)."""

    model_id: str
    size: int
    package: str | None = None  # the Python package that ships it (the bundled model)
    path: Path | None = None
    sha256: str | None = None
    origin: str | None = None
    partial: int = 0  # bytes of an interrupted download, resumed at the next start


@dataclass(frozen=True)
class Facts:
    python: str
    machine: Hardware
    build: LlamaBuild
    settings: Settings
    free_disk: int | None
    models: tuple[CachedModel, ...]
    plan: Plan
    environment: tuple[tuple[str, str | None], ...]
    set_here: frozenset[str] = frozenset()  # variables gemma-serve set, not the user
    cpu_needs: frozenset[str] = frozenset()  # instruction sets the build uses (its record)
    cpu_lacks: frozenset[str] = frozenset()  # those this CPU does not have
    unwritable: str | None = None  # why the model cache cannot be written, if it cannot
    installed: tuple[ModelSpec, ...] = ()  # registry models in the cache, then brought ones
    brought: UserModels = field(default_factory=UserModels)  # the user registry file's
    models_file: Path | None = None
    # The running server's models and their state (`loaded`, ...); None: no server answered.
    server_states: dict[str, str] | None = None
    server_url: str = ""


def _partial_download(spec: ModelSpec, cache_dir: Path) -> int:
    """Bytes already downloaded of the model's first hub source (0 if none)."""
    for source in spec.sources:
        if isinstance(source, HuggingFaceSource):
            blobs = repo_dir(cache_dir / "hub", source.repo) / "blobs"
            return max((p.stat().st_size for p in blobs.glob("*.incomplete")), default=0)
    return 0


def cached_model(spec: ModelSpec, cache_dir: Path) -> CachedModel:
    package = next((s.package for s in spec.sources if isinstance(s, PypiSource)), None)
    found = cached_file(spec, cache_dir)
    if found is None:
        return CachedModel(
            spec.id, spec.file_size, package, partial=_partial_download(spec, cache_dir)
        )
    path, record_file = found
    record = read_record(record_file)
    if record is None or not record_matches(record, path):
        return CachedModel(spec.id, spec.file_size, package, path)
    return CachedModel(
        spec.id, spec.file_size, package, path, record["sha256"], str(record["origin"])
    )


def server_url(settings: Settings) -> str:
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}"


def running_states(settings: Settings) -> dict[str, str] | None:
    """Each model's state as the server running with these settings reports it (its
    /v1/models), or None when none answers within a second."""
    import httpx

    keys = settings.api_keys
    headers = {"Authorization": f"Bearer {keys[0]}"} if keys else {}
    try:
        answer = httpx.get(f"{server_url(settings)}/v1/models", headers=headers, timeout=1)
        cards = answer.json()["data"] if answer.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(cards, list):
        return None
    return {str(card.get("id")): str(card.get("state", "loaded")) for card in cards}


def gather(
    settings: Settings,
    machine: Hardware,
    build: LlamaBuild,
    set_here: frozenset[str] = frozenset(),
    server_states: dict[str, str] | None = None,
) -> Facts:
    """Everything the report says, read from this machine. `set_here`: the environment variables
    the command line set itself (`cli.main` sets CUDA_DEVICE_ORDER unless the user did).
    `server_states`: what the running server says of its models (`running_states`)."""
    registry = load_registry(settings.registry_file)
    brought = load_user_models(settings.models_file, {spec.id for spec in registry.models})
    chosen = plan(machine.devices, registry, plan_options(settings), build)
    needs, flags = needed(), cpu_flags()
    try:
        free: int | None = shutil.disk_usage(_existing(settings.cache_dir)).free
    except OSError:
        free = None
    return Facts(
        python=platform.python_version(),
        machine=machine,
        build=build,
        settings=settings,
        free_disk=free,
        models=tuple(cached_model(spec, settings.cache_dir) for spec in registry.models),
        plan=chosen,
        environment=tuple((name, os.environ.get(name)) for name in _ENVIRONMENT),
        set_here=set_here,
        cpu_needs=needs,
        cpu_lacks=needs - flags if flags is not None else frozenset(),
        unwritable=unwritable_cache(settings.cache_dir),
        installed=tuple(installed_specs(registry, settings.cache_dir, brought)),
        brought=brought,
        models_file=settings.models_file or default_models_file(),
        server_states=server_states,
        server_url=server_url(settings),
    )


def _existing(path: Path) -> Path:
    """The nearest existing directory at or above `path` (the cache may not exist yet)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _build_lines(build: LlamaBuild) -> list[str]:
    offload = "yes" if build.gpu_offload else "no"
    lines = [
        f"llama.cpp build: backends {', '.join(build.backends) or 'none'}; GPU offload: {offload}"
    ]
    lines += [f"  device: {device}" for device in build.devices]
    for backend, features in build.features.items():
        flags = " ".join(
            name if value == "1" else f"{name}={value}" for name, value in features.items()
        )
        lines.append(f"  {backend} flags: {flags}")
    return lines


def _model_line(model: CachedModel) -> str:
    if model.path is None and model.package:
        return f"  {model.model_id}: not assembled yet (it comes with the {model.package} package)"
    if model.path is None and model.partial:
        return (
            f"  {model.model_id}: not cached ({model.partial / 1e9:.2f} of "
            f"{model.size / 1e9:.2f} GB downloaded; the download resumes at the next start)"
        )
    if model.path is None:
        return f"  {model.model_id}: not cached ({model.size / 1e9:.2f} GB to download)"
    if model.sha256 is None:
        return f"  {model.model_id}: cached at {model.path}, sha256 not verified yet"
    return (
        f"  {model.model_id}: cached at {model.path}, sha256 {model.sha256} verified "
        f"({model.origin})"
    )


def render(facts: Facts) -> list[str]:
    """The report, line by line."""
    machine, settings = facts.machine, facts.settings
    lines = [
        f"gemma-serve {__version__}, Python {facts.python}, "
        f"llama-cpp-python {facts.build.version or 'unknown'}"
    ]
    if machine.driver:
        lines.append(f"NVIDIA driver {machine.driver}, CUDA {machine.cuda} (NVML)")
    else:
        lines.append(f"NVML: {machine.note or 'no GPU found'}")
    if machine.failing:
        lines.append(f"GPU failing: {machine.failing}")
    if machine.devices:
        lines.append("GPUs:")
        lines += [device_line(i, d) for i, d in enumerate(machine.devices)]
    else:
        lines.append("GPUs: none")
    lines += _build_lines(facts.build)
    if facts.cpu_needs:
        uses = " ".join(sorted(name(flag) for flag in facts.cpu_needs))
        lacks = ", ".join(sorted(name(flag) for flag in facts.cpu_lacks))
        lines.append(
            f"  CPU instructions used: {uses}" + (f"; THIS CPU LACKS {lacks}" if lacks else "")
        )
    lines.append(
        "environment: "
        + ", ".join(
            f"{name}={value if value is not None else '(unset)'}"
            + (" (set by gemma-serve)" if name in facts.set_here else "")
            for name, value in facts.environment
        )
        + f", require GPU: {'yes' if settings.require_gpu else 'no'}"
    )
    free = f"{gib(facts.free_disk)} free" if facts.free_disk is not None else "free space unknown"
    lines.append(f"cache: {settings.cache_dir} ({free})")
    if facts.unwritable:
        lines.append(f"  {facts.unwritable}")
    lines += [_model_line(model) for model in facts.models]
    lines += _installed_lines(facts)
    lines.append("plan:")
    lines += [f"  {line}" for line in describe(machine, facts.plan)]
    return lines


def _installed_lines(facts: Facts) -> list[str]:
    """The user registry file, then each installed model with its state on the running server."""
    count = len(facts.brought.specs)
    file = facts.models_file
    exists = file is not None and file.is_file()
    lines = [f"user registry file: {file} ({f'{count} models' if exists else 'none'})"]
    lines += [
        f"  {spec.id}: {spec.sources[0].model_dump().get('path')}" for spec in facts.brought.specs
    ]
    lines += [f"  refused: {line}" for line in facts.brought.refused]
    states = facts.server_states
    where = (
        f"on the server at {facts.server_url}"
        if states is not None
        else f"no server answers at {facts.server_url}"
    )
    lines.append(f"installed models ({where}):")
    for spec in facts.installed:
        state = (states or {}).get(spec.id, "not served" if states is not None else "")
        lines.append(f"  {spec.id}" + (f": {state}" if state else ""))
    return lines
