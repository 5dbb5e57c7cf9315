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

import dataclasses
import errno
import http.client
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from server.cancellation import Cancelled
from server.progress import Progress, size_text

log = logging.getLogger("gemma_serve.fetch")

# Errors of writing the partial file, not of the transfer: retrying them only wastes time.
_LOCAL_WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES})

CHUNK = 256 * 1024  # bytes read between two looks at `cancel`
ATTEMPTS = 5
TIMEOUT = 30.0


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
    url: str  # where the bytes are (for LFS files the hub's signed CDN link, which expires)


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


def download(
    remote: HubFile,
    hub_cache: Path,
    cancel: threading.Event | None = None,
    progress: Progress | None = None,
) -> Path:
    """The cached file for `remote`, downloaded (or resumed) if the cache does not hold it.
    `progress` is told the start, each chunk and the end (for the log and /health)."""
    root = repo_dir(hub_cache, remote.repo)
    blob = root / "blobs" / remote.etag
    if not blob.is_file():
        blob.parent.mkdir(parents=True, exist_ok=True)
        lock = hub_cache / ".locks" / root.name / f"{remote.etag}.lock"
        with _only_downloader(lock, remote, cancel):
            if not blob.is_file():  # not finished by the download this one waited for
                partial = blob.with_name(f"{blob.name}.incomplete")
                if progress is not None:
                    _begin(progress, remote, partial)
                try:
                    _transfer(remote, partial, cancel, progress)
                except BaseException:
                    if progress is not None:
                        progress.drop()
                    raise
                partial.replace(blob)
                if progress is not None:
                    progress.end(f"downloaded {remote.file} ({size_text(blob.stat().st_size)})")
    link = root / "snapshots" / remote.commit / remote.file
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.unlink(missing_ok=True)  # a dangling link to a deleted blob
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(remote.commit)
    return link


def _begin(progress: Progress, remote: HubFile, partial: Path) -> None:
    from huggingface_hub import constants

    start = partial.stat().st_size if partial.exists() else 0
    source = f"from {constants.ENDPOINT.rstrip('/')}/{remote.repo}"
    resumed = f", resuming at {size_text(start)}" if start else ""
    progress.begin("downloading", remote.file, remote.size, start_at=start, detail=source + resumed)


@contextmanager
def _only_downloader(path: Path, remote: HubFile, cancel: threading.Event | None) -> Iterator[None]:
    """Hold the blob's lock file (where huggingface_hub keeps its own, `.locks/<repo>/<etag>.lock`,
    so that its downloads wait too): two processes sharing the cache (a `pull` beside a `serve`,
    two containers) would both append to one partial file. The second waits, then finds it."""
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another download of %s/%s to finish", remote.repo, remote.file)
        while True:
            if cancel is not None and cancel.is_set():
                raise DownloadCancelled(f"{remote.repo}/{remote.file}") from None
            try:
                lock.acquire(timeout=1)
                break
            except Timeout:
                continue
    try:
        yield
    finally:
        lock.release()


def _hub_host() -> str:
    from huggingface_hub import constants

    return urlparse(constants.ENDPOINT).netloc


def _headers(remote: HubFile, start: int) -> dict[str, str]:
    from huggingface_hub import get_token

    headers = {"User-Agent": "gemma-serve", "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    token = get_token()
    # The token is for the hub; a redirect target (a CDN URL) is already signed.
    if token and urlparse(remote.url).netloc == _hub_host():
        headers["Authorization"] = f"Bearer {token}"
    return headers


def _transfer(
    remote: HubFile,
    partial: Path,
    cancel: threading.Event | None,
    progress: Progress | None = None,
) -> None:
    """Append to `partial` until it holds the whole file, resuming after a cut. The attempts
    are counted afresh whenever one gained bytes: a long download over a poor link goes on."""
    failure = ""
    attempt, furthest = 0, -1
    while attempt < ATTEMPTS:
        start = partial.stat().st_size if partial.exists() else 0
        if remote.size is not None and start == remote.size:
            return
        if remote.size is not None and start > remote.size:
            partial.unlink()
            start = 0
        if start > furthest:
            attempt, furthest = 0, start
        if start:
            log.info("resuming %s/%s at byte %d", remote.repo, remote.file, start)
        attempt += 1
        try:
            _get(remote, partial, start, cancel, progress)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
            if isinstance(exc, OSError) and exc.errno in _LOCAL_WRITE_ERRORS:
                raise  # a full disk or a read-only cache: no retry helps (fetch.py says so)
            if isinstance(exc, urllib.error.HTTPError) and exc.code < 500 and exc.code != 429:
                if urlparse(exc.geturl()).netloc == _hub_host():
                    raise DownloadFailed(f"the hub answered {exc.code}") from exc
                remote = _renewed(remote, exc.code)
                continue
            failure = str(getattr(exc, "reason", exc)) or type(exc).__name__
            time.sleep(min(2**attempt, 10) * 0.5)
            continue
        size = partial.stat().st_size
        if remote.size is None or size == remote.size:
            return
        failure = f"the transfer ended at byte {size} of {remote.size}"
    raise DownloadFailed(f"download failed after {ATTEMPTS} attempts ({failure})")


def _renewed(remote: HubFile, status: int) -> HubFile:
    """`remote` with a fresh download link: the hub's CDN links are signed and expire (about an
    hour), so a long download refused by the CDN asks the hub again and resumes."""
    log.info("the download link answered %d; asking the hub for a fresh one", status)
    try:
        fresh = metadata(remote.repo, remote.file)
    except Exception as exc:  # huggingface_hub's errors: offline, unreachable, HTTP status
        raise DownloadFailed(f"the download link answered {status}: {exc}") from exc
    if fresh.etag != remote.etag:
        raise DownloadFailed(f"{remote.repo}/{remote.file} changed on the hub during the download")
    return dataclasses.replace(remote, url=fresh.url)


class _NoTokenAcrossHosts(urllib.request.HTTPRedirectHandler):
    """urllib copies every header to a redirect's target: the hub token must not reach another
    host (requests drops it the same way)."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(req.full_url) != _origin(newurl):
            new.remove_header("Authorization")
        return new


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parsed = urlparse(url)
    return parsed.scheme, parsed.hostname, parsed.port


def _get(
    remote: HubFile,
    partial: Path,
    start: int,
    cancel: threading.Event | None,
    progress: Progress | None,
) -> None:
    request = urllib.request.Request(remote.url, headers=_headers(remote, start))
    opener = urllib.request.build_opener(_NoTokenAcrossHosts)
    with opener.open(request, timeout=TIMEOUT) as response:
        resumed = response.status == 206
        with partial.open("ab" if resumed else "wb") as out:
            if progress is not None:
                progress.position(start if resumed else 0)
            bar = _bar(remote, start if resumed else 0)
            try:
                while True:
                    if cancel is not None and cancel.is_set():
                        raise DownloadCancelled(f"{remote.repo}/{remote.file}")
                    chunk = response.read(CHUNK)
                    if not chunk:
                        return
                    out.write(chunk)
                    if progress is not None:
                        progress.advance(len(chunk))
                    if bar is not None:
                        bar.update(len(chunk))
            finally:
                if bar is not None:
                    bar.close()


def _bar(remote: HubFile, start: int) -> Any:
    """A progress bar on a terminal (tqdm comes with huggingface_hub); None otherwise (the log
    gets progress lines instead: server/progress.py)."""
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
