"""One file from the Hugging Face hub into its cache: resumable across restarts, and cancellable.

huggingface_hub's own `hf_hub_download` (1.x and later) writes each attempt to a file unique to
the process and deletes it when the process stops, so a 16 GB download interrupted by a restart
or a SIGTERM starts again from zero. This module keeps the partial file instead,
`blobs/<etag>.incomplete` in the hub's cache layout, and continues it with an HTTP Range request,
at the next attempt in the same process (a connection cut mid-file) or at the next start. A set
`cancel` event stops it between two chunks: the server's shutdown uses it, so SIGTERM during the
first download ends the process at once and the next start resumes.

The file lands where huggingface_hub itself would put it (`blobs/<etag>`, linked from
`snapshots/<commit>/<file>`, `refs/main`), so huggingface_hub's cache lookups find it, offline too.
The metadata (commit, LFS sha256, size, where to download) comes from huggingface_hub's public
`get_hf_file_metadata`, which also reads `HF_ENDPOINT`, `HF_TOKEN` and `HF_HUB_OFFLINE`.
"""

from __future__ import annotations

import http.client
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

log = logging.getLogger("gemma_serve.fetch")

CHUNK = 256 * 1024  # bytes read between two looks at `cancel`
ATTEMPTS = 5
TIMEOUT = 30.0


class Cancelled(Exception):
    """Getting the model ready was stopped because the server is shutting down: nothing failed.
    (Loading's own case, `LoadCancelled`, lives with the loader.)"""


class DownloadCancelled(Cancelled):
    """The download was stopped by `cancel`; its partial file is kept for the next attempt."""


class DownloadFailed(Exception):
    """The transfer failed after every attempt; the message is one line."""


@dataclass(frozen=True)
class HubFile:
    """A file on the hub as its metadata describes it."""

    repo: str
    file: str
    commit: str
    etag: str  # for a file stored in LFS: its sha256
    size: int | None
    url: str  # where the bytes are (the hub's redirect target for LFS files)


def metadata(repo: str, file: str) -> HubFile:
    """The file's metadata from the hub. Raises huggingface_hub's errors (HTTP status, offline,
    unreachable)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(repo, file)
    meta = get_hf_file_metadata(url)
    if not meta.commit_hash or not meta.etag:
        raise DownloadFailed(f"{repo}/{file}: the hub's answer has no commit or etag")
    return HubFile(repo, file, meta.commit_hash, meta.etag, meta.size, meta.location or url)


def repo_dir(hub_cache: Path, repo: str) -> Path:
    return hub_cache / f"models--{repo.replace('/', '--')}"


def cached(hub_cache: Path, repo: str, file: str) -> Path | None:
    """The cached copy of the file at the repo's last known commit, if any (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, file, cache_dir=hub_cache)
    return Path(found) if isinstance(found, str) else None


def download(remote: HubFile, hub_cache: Path, cancel: threading.Event | None = None) -> Path:
    """The cached file for `remote`, downloaded (or resumed) if the cache does not hold it."""
    root = repo_dir(hub_cache, remote.repo)
    blob = root / "blobs" / remote.etag
    if not blob.is_file():
        blob.parent.mkdir(parents=True, exist_ok=True)
        partial = blob.with_name(f"{blob.name}.incomplete")
        _transfer(remote, partial, cancel)
        partial.replace(blob)
    link = root / "snapshots" / remote.commit / remote.file
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.unlink(missing_ok=True)  # a dangling link to a deleted blob
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(remote.commit)
    return link


def _headers(remote: HubFile, start: int) -> dict[str, str]:
    from huggingface_hub import constants, get_token

    headers = {"User-Agent": "gemma-serve", "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    token = get_token()
    # The token is for the hub; a redirect target (a CDN URL) is already signed.
    if token and urlparse(remote.url).netloc == urlparse(constants.ENDPOINT).netloc:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _transfer(remote: HubFile, partial: Path, cancel: threading.Event | None) -> None:
    """Append to `partial` until it holds the whole file, resuming after a cut."""
    failure = ""
    for attempt in range(ATTEMPTS):
        start = partial.stat().st_size if partial.exists() else 0
        if remote.size is not None and start == remote.size:
            return
        if remote.size is not None and start > remote.size:
            partial.unlink()
            start = 0
        if start:
            log.info("resuming %s/%s at byte %d", remote.repo, remote.file, start)
        try:
            _get(remote, partial, start, cancel)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            if isinstance(exc, urllib.error.HTTPError) and exc.code < 500 and exc.code != 429:
                raise DownloadFailed(f"the hub answered {exc.code}") from exc
            failure = str(getattr(exc, "reason", exc)) or type(exc).__name__
            time.sleep(min(2**attempt, 10) * 0.5)
            continue
        size = partial.stat().st_size
        if remote.size is None or size == remote.size:
            return
        failure = f"the transfer ended at byte {size} of {remote.size}"
    raise DownloadFailed(f"download failed after {ATTEMPTS} attempts ({failure})")


def _get(remote: HubFile, partial: Path, start: int, cancel: threading.Event | None) -> None:
    request = urllib.request.Request(remote.url, headers=_headers(remote, start))
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        resumed = response.status == 206
        with partial.open("ab" if resumed else "wb") as out:
            progress = _progress(remote, start if resumed else 0)
            try:
                while True:
                    if cancel is not None and cancel.is_set():
                        raise DownloadCancelled(f"{remote.repo}/{remote.file}")
                    chunk = response.read(CHUNK)
                    if not chunk:
                        return
                    out.write(chunk)
                    if progress is not None:
                        progress.update(len(chunk))
            finally:
                if progress is not None:
                    progress.close()


def _progress(remote: HubFile, start: int) -> Any:
    """A progress bar on a terminal (tqdm comes with huggingface_hub); None otherwise."""
    if not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm  # type: ignore[import-untyped]

    return tqdm(
        total=remote.size,
        initial=start,
        unit="B",
        unit_scale=True,
        desc=remote.file,
    )
