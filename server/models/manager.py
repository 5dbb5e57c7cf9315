"""The model manager: every installed model by id, loaded on demand, unloaded when idle.

One manager owns every loaded model. A request names a model; `acquire` returns a `Lease` on it,
loading it first if needed. Why it is built so:

- **One load per model.** The first request starts a load task; the others await the same task
  (shielded), so two requests start one load, and a client that hangs up while waiting frees
  its own request without cancelling a load that others wait on (or that the next request
  would start again).
- **Loads run in a worker thread**, so the event loop keeps streaming the loaded models' tokens.
  Loads are placed one at a time (`_placing`): each is planned against the memory free *then*
  (the `free_memory` probe, read at load time) and two loads must not count the same free bytes.
- **Idle unload.** A model is busy while a lease on it is held (a request between choosing the
  model and starting its generations, or a generation until its last event); once idle for its
  keep-alive it is closed in a worker thread, which frees its memory. A load that needs the
  memory unloads idle models least recently used first (`fit.place`); a busy one is never
  unloaded for another.
- **Shutdown** sets `stopping`, which a loader passes to llama.cpp (it stops at the next tensor),
  waits for the loads, and closes every loaded model.

How another kind of engine registers (an embedding engine, say): build an `Installed` with its
own `kind` (e.g. "embedding"), `need` (the bytes it will hold once loaded), and `load(stopping,
free)`: it runs in a worker thread and returns the loaded object, which must have `close()` that
frees its memory (idempotent, thread-safe); `stopping` is set at shutdown (stop early, raise
`server.cancellation.Cancelled`), `free` is the memory expected free for it (None: not measured).
Then `manager.register(installed)`. A route does `lease = await manager.acquire(model_id)`, uses
`lease.model` (the loaded object; check `lease.kind`), and calls `lease.release()` when its work
ends; work that outlives the request (a stream) takes `lease.extend()` first. A lease dropped
unreleased is released when collected. `/v1/models`, `/api/ps` and `/metrics` read `states()`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from server.models.fit import Placement, Resident, place
from server.models.model import (
    Installed,
    KeepAlive,
    Loadable,
    ModelBusy,
    ModelState,
    NotInstalled,
    State,
)

__all__ = [
    "Installed",
    "KeepAlive",
    "Lease",
    "Loadable",
    "ModelBusy",
    "ModelManager",
    "ModelState",
    "NotInstalled",
]

log = logging.getLogger("gemma_serve.models")


@dataclass
class _Entry:
    model: Installed
    resident: Loadable | None = None
    loading: asyncio.Task[None] | None = None
    closing: asyncio.Task[None] | None = None
    users: int = 0  # leases held
    waiting: int = 0  # requests waiting for the load
    last_used: float = 0.0  # monotonic
    last_used_wall: float = 0.0
    keep_alive: KeepAlive | float = -1.0  # -1: the manager's default
    timer: asyncio.TimerHandle | None = None
    loads: int = 0
    unloads: int = 0
    load_seconds: float = 0.0
    unload_seconds: float = 0.0
    requests: int = 0
    error: str | None = None  # the last load's failure, until a load succeeds


class Lease:
    """A hold on a loaded model: while any is held, the model is busy and never unloaded."""

    def __init__(self, manager: ModelManager, entry: _Entry) -> None:
        self._manager = manager
        self._entry = entry
        self._held = True
        assert entry.resident is not None
        self.model: Any = entry.resident
        self.kind = entry.model.kind
        self.model_id = entry.model.model_id
        entry.users += 1

    def extend(self) -> Lease:
        """Another lease on the same model, for work that outlives this one."""
        return Lease(self._manager, self._entry)

    def release(self) -> None:
        """Idempotent. The model's keep-alive counts from the last release."""
        if self._held:
            self._held = False
            self._manager._released(self._entry)

    def release_soon(self) -> None:
        """`release` from any thread (a finalizer): done on the manager's event loop."""
        if self._held:
            self._held = False
            self._manager._released_from_anywhere(self._entry)

    def __del__(self) -> None:
        self.release_soon()


class ModelManager:
    """See the module docstring. `free_memory` reads the bytes free now (blocking; None: not
    measured, then models load beside each other); `what` names that memory in messages."""

    def __init__(
        self,
        *,
        keep_alive: KeepAlive = 300.0,
        free_memory: Callable[[], int | None] = lambda: None,
        what: str = "GPU memory",
        max_waiting: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.keep_alive = keep_alive
        self.stopping = threading.Event()
        self._free_memory = free_memory
        self._what = what
        self._max_waiting = max_waiting
        self._clock = clock
        self._entries: dict[str, _Entry] = {}
        self._placing = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def register(self, model: Installed) -> None:
        """Add an installed model (the first registered is listed first). Re-registering an id
        replaces its description, not its loaded state."""
        entry = self._entries.get(model.model_id)
        if entry is None:
            self._entries[model.model_id] = _Entry(model)
        else:
            entry.model = model

    def installed(self, model_id: str) -> bool:
        return model_id in self._entries

    def ids(self) -> list[str]:
        return list(self._entries)

    def loaded(self, model_id: str) -> Any:
        """The loaded object of `model_id`, or None (unloaded or not installed)."""
        entry = self._entries.get(model_id)
        return entry.resident if entry else None

    def start_loading(self, model_id: str) -> asyncio.Task[None]:
        """Start loading `model_id` (the model picked at start) without a request waiting. Its
        plan was just made against the memory free now, and may offload it in part: it is
        loaded as planned, not refused by the fit (later loads of it are checked)."""
        entry = self._entry(model_id)
        if entry.loading is None and entry.resident is None:
            self._begin_load(entry, fit=False)
        assert entry.loading is not None or entry.resident is not None
        task = entry.loading
        if task is None:  # already loaded
            task = asyncio.get_running_loop().create_task(asyncio.sleep(0))
        return task

    async def acquire(self, model_id: str, *, keep_alive: KeepAlive | float = -1.0) -> Lease:
        """A lease on `model_id`, loaded first if needed. `keep_alive` (>= 0 seconds, None for
        forever) replaces the model's keep-alive from now on, as Ollama's per-request keep_alive
        does. Raises NotInstalled, ModelBusy, fit.CannotFit, or the load's own error."""
        entry = self._entry(model_id)
        if keep_alive is None or keep_alive >= 0:
            entry.keep_alive = keep_alive
        entry.requests += 1
        if entry.resident is None and entry.waiting >= self._max_waiting:
            raise ModelBusy(f"{self._max_waiting} requests already wait for {model_id} to load")
        entry.waiting += 1
        try:
            while entry.resident is None:
                if entry.closing is not None:
                    await asyncio.shield(entry.closing)
                    continue
                if entry.loading is None:
                    self._begin_load(entry)
                assert entry.loading is not None
                await asyncio.shield(entry.loading)
        finally:
            entry.waiting -= 1
            if entry.resident is not None and entry.users == 0 and entry.waiting == 0:
                self._schedule_idle(entry)  # a waiter that left: the idle clock still runs
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        return Lease(self, entry)

    async def unload(self, model_id: str) -> None:
        """Unload now if loaded and idle (Ollama's `keep_alive: 0` with nothing to generate);
        a busy model unloads when its last request ends (its keep-alive is then 0)."""
        entry = self._entry(model_id)
        entry.keep_alive = 0.0
        if entry.resident is not None and not self._busy(entry):
            await self._start_unload(entry, "asked to unload")

    def states(self) -> list[ModelState]:
        return [self._state(entry) for entry in self._entries.values()]

    def state(self, model_id: str) -> ModelState:
        return self._state(self._entry(model_id))

    async def close(self) -> None:
        """Shutdown: stop loads (their loaders see `stopping`), then close every loaded model."""
        self.stopping.set()
        for entry in self._entries.values():
            if entry.timer is not None:
                entry.timer.cancel()
            if entry.loading is not None:
                with suppress(BaseException):
                    await asyncio.shield(entry.loading)
        for entry in self._entries.values():
            if entry.resident is not None:
                await self._start_unload(entry, "the server stops")
            elif entry.closing is not None:
                with suppress(BaseException):
                    await entry.closing

    def close_all_now(self) -> None:
        """Close every loaded model from any thread (the graceful shutdown's interrupt): their
        `close` is idempotent, so the lifespan's `close` later is harmless."""
        for entry in list(self._entries.values()):
            if entry.resident is not None:
                entry.resident.close()

    # Internals.

    def _entry(self, model_id: str) -> _Entry:
        entry = self._entries.get(model_id)
        if entry is None:
            raise NotInstalled(model_id)
        if self._loop is None:
            with suppress(RuntimeError):  # no loop running: a synchronous reader (states)
                self._loop = asyncio.get_running_loop()
        return entry

    def _busy(self, entry: _Entry) -> bool:
        return entry.users > 0 or entry.waiting > 0

    def _keep_alive(self, entry: _Entry) -> KeepAlive:
        if entry.keep_alive is not None and entry.keep_alive < 0:
            return self.keep_alive
        return entry.keep_alive

    def _begin_load(self, entry: _Entry, *, fit: bool = True) -> None:
        task = asyncio.get_running_loop().create_task(self._load(entry, fit=fit))
        task.add_done_callback(lambda done: done.cancelled() or done.exception())
        entry.loading = task

    async def _load(self, entry: _Entry, *, fit: bool = True) -> None:
        model = entry.model
        try:
            async with self._placing:
                placement = await self._place(entry) if fit else Placement((), None)
                for evicted in placement.evict:
                    await self._start_unload(
                        self._entries[evicted], f"to make room for {model.model_id}"
                    )
                started = self._clock()
                resident = await asyncio.to_thread(model.load, self.stopping, placement.free)
        except BaseException as exc:
            entry.error = str(exc) or type(exc).__name__
            raise
        finally:
            entry.loading = None
        took = self._clock() - started
        entry.resident, entry.error = resident, None
        entry.loads += 1
        entry.load_seconds += took
        entry.last_used, entry.last_used_wall = self._clock(), time.time()
        if self.stopping.is_set():  # loaded as the server stops: close it with the others
            return
        if entry.waiting:  # requests waited: their time to first token includes this load
            log.info(
                "%s loaded in %.1f s on demand (%d requests waited for it)",
                model.model_id,
                took,
                entry.waiting,
            )
        self._schedule_idle(entry)

    async def _place(self, entry: _Entry) -> Placement:
        free = await asyncio.to_thread(self._free_memory)
        residents = [
            Resident(other.model.model_id, other.model.need, self._busy(other), other.last_used)
            for other in self._entries.values()
            if other.resident is not None
        ]
        return place(entry.model.model_id, entry.model.need, free, residents, what=self._what)

    def _start_unload(self, entry: _Entry, reason: str) -> asyncio.Task[None]:
        if entry.closing is not None:
            return entry.closing
        resident, entry.resident = entry.resident, None
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        entry.closing = asyncio.get_running_loop().create_task(self._close(entry, resident, reason))
        return entry.closing

    async def _close(self, entry: _Entry, resident: Loadable | None, reason: str) -> None:
        started = self._clock()
        try:
            if resident is not None:
                await asyncio.to_thread(resident.close)
        finally:
            entry.closing = None
            took = self._clock() - started
            entry.unloads += 1
            entry.unload_seconds += took
            log.info("%s unloaded (%s) in %.1f s", entry.model.model_id, reason, took)

    def _released(self, entry: _Entry) -> None:
        entry.users -= 1
        entry.last_used, entry.last_used_wall = self._clock(), time.time()
        if entry.users == 0 and entry.waiting == 0:
            self._schedule_idle(entry)

    def _released_from_anywhere(self, entry: _Entry) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            entry.users -= 1
            return
        with suppress(RuntimeError):  # the loop closed meanwhile: nothing to schedule
            loop.call_soon_threadsafe(self._released, entry)

    def _schedule_idle(self, entry: _Entry) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        keep_alive = self._keep_alive(entry)
        if keep_alive is None or entry.resident is None or self.stopping.is_set():
            return
        delay = max(0.0, entry.last_used + keep_alive - self._clock())
        entry.timer = asyncio.get_running_loop().call_later(delay, self._expire, entry)

    def _expire(self, entry: _Entry) -> None:
        entry.timer = None
        keep_alive = self._keep_alive(entry)
        if entry.resident is None or self._busy(entry) or keep_alive is None:
            return
        if self._clock() < entry.last_used + keep_alive:
            self._schedule_idle(entry)
            return
        self._start_unload(entry, f"idle for {keep_alive:g} s")

    def _state(self, entry: _Entry) -> ModelState:
        state: State
        if entry.resident is not None:
            state = "loaded"
        elif entry.loading is not None:
            state = "loading"
        elif entry.closing is not None:
            state = "unloading"
        else:
            state = "unloaded"
        keep_alive = self._keep_alive(entry)
        expires = (
            entry.last_used_wall + keep_alive
            if state == "loaded" and keep_alive is not None and not self._busy(entry)
            else None
        )
        return ModelState(
            model_id=entry.model.model_id,
            kind=entry.model.kind,
            state=state,
            file_size=entry.model.file_size,
            holds=entry.model.need if state == "loaded" else 0,
            busy=self._busy(entry),
            requests=entry.requests,
            last_used=entry.last_used_wall or None,
            expires_at=expires,
            loads=entry.loads,
            unloads=entry.unloads,
            load_seconds=entry.load_seconds,
            unload_seconds=entry.unload_seconds,
            error=entry.error,
            source=entry.model.source,
            model=entry.resident,
            about=entry.model.about,
        )
