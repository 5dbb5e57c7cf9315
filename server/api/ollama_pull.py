"""Ollama's `/api/pull`: a registry model downloaded into the cache, with Ollama's progress lines.

The download is `gemma-serve pull`'s (resumable, verified, the same cache), run in a worker
thread; its `Progress` (what the log and `/health` show while a model downloads) is read every
second and written as Ollama's lines: `pulling manifest`, `pulling <file>` with `total` and
`completed` bytes, `verifying sha256 digest` while the file is hashed, then `success`, or an
`{"error": ...}` line. A client that leaves stops the download, to be resumed later.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from server.api.ollama_protocol import Status
from server.fetch import FetchError, ensure_model_file, ensure_projector_file
from server.progress import Progress
from server.registry import ModelSpec
from server.settings import Settings

log = logging.getLogger("gemma_serve.api")

TICK_SECONDS = 1.0  # between progress lines while the files download


def _fetch(
    spec: ModelSpec, settings: Settings, cancel: threading.Event, progress: Progress | None
) -> list[Path]:
    paths = [ensure_model_file(spec, settings.cache_dir, cancel, progress)]
    if spec.has_vision and not settings.no_vision:
        paths.append(ensure_projector_file(spec, settings.cache_dir, cancel, progress))
    return paths


def progress_line(spec: ModelSpec, step: dict[str, Any] | None) -> Status:
    """`Progress.snapshot()` as Ollama's progress object."""
    if step is None:  # between steps, or a cached file being checked by size
        return Status(status=f"pulling {spec.id}")
    status = (
        "verifying sha256 digest" if step["phase"] == "verifying" else f"pulling {step['what']}"
    )
    return Status(status=status, total=step["total_bytes"], completed=step["done_bytes"])


def _line(status: Status) -> str:
    return status.model_dump_json(exclude_none=True) + "\n"


async def pull_lines(spec: ModelSpec, settings: Settings) -> AsyncIterator[str]:
    """The NDJSON lines of a streamed pull."""
    cancel = threading.Event()
    progress = Progress(interval=30.0)  # the log gets a line every 30 s, the client every 1 s
    yield _line(Status(status="pulling manifest"))
    task = asyncio.ensure_future(asyncio.to_thread(_fetch, spec, settings, cancel, progress))
    try:
        while not task.done():
            yield _line(progress_line(spec, progress.snapshot()))
            await asyncio.wait({task}, timeout=TICK_SECONDS)
        task.result()
    except FetchError as exc:
        yield json.dumps({"error": str(exc)}) + "\n"
        return
    finally:
        # NOTE: also when the client goes away (this generator is cancelled): the download
        # stops, to be resumed later, and its ending is collected.
        cancel.set()
        progress.close()
        task.add_done_callback(_collect)
    yield _line(Status(status="success"))


async def pull_whole(spec: ModelSpec, settings: Settings) -> None:
    """A pull with `stream: false`: done when the files are verified; raises `FetchError`."""
    cancel = threading.Event()
    try:
        await asyncio.to_thread(_fetch, spec, settings, cancel, None)
    finally:
        cancel.set()  # NOTE: the client went away: the download stops


def _collect(task: asyncio.Future[list[Path]]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.info("a pull ended early: %s", task.exception())
