"""The embedding model as an installed model of kind "embedding": loaded on demand by the model
manager (or at start with --embedding-model), unloaded when idle like the chat models, and counted
by the fit decision with its memory need (server.memory.embedding_memory).

An embedding model is installed when its file is in the cache, or named by
--embedding-model (with --embedding-model-file: that file; else downloaded at its first load).
"""

from __future__ import annotations

import threading
from pathlib import Path

from server.engine.embedding_contract import EmbeddingEngine
from server.fetch import ensure_model_file
from server.memory import embedding_memory
from server.models.installed import cached_file
from server.models.manager import Installed
from server.registry import ModelSpec, Registry
from server.settings import Settings


def embedding_model(
    spec: ModelSpec, settings: Settings, on_gpu: bool, path: Path | None = None
) -> Installed:
    """`spec` for the manager: its file fetched and verified (or `path`) when it loads, then
    loaded in its own llama.cpp context (a worker thread). On a GPU plan it goes on the GPU
    whole: 300M parameters, about 0.4 GB with its compute buffer."""

    def load(stopping: threading.Event, _free: int | None) -> EmbeddingEngine:
        from server.engine.embedding_engine import LlamaEmbeddingEngine  # loads llama.cpp

        return LlamaEmbeddingEngine(
            model_path=path or ensure_model_file(spec, settings.cache_dir, stopping),
            model_id=spec.id,
            n_threads=settings.threads,
            n_gpu_layers=999 if on_gpu else 0,
            matryoshka=spec.capabilities.matryoshka_dimensions,
            max_waiting=settings.queue_size,
        )

    file_size = path.stat().st_size if path is not None else spec.file_size
    return Installed(
        spec.id,
        load,
        need=embedding_memory(file_size, spec.architecture),
        file_size=file_size,
        kind="embedding",
        about=spec,
    )


def installed_embedding_specs(
    registry: Registry, cache_dir: Path, named: str | None
) -> list[ModelSpec]:
    """The registry's embedding models whose file is in the cache, and the one `named` by
    --embedding-model (fetched at its first load if absent)."""
    return [
        spec
        for spec in registry.models
        if spec.capabilities.embeddings
        and (spec.id == named or cached_file(spec, cache_dir) is not None)
    ]
