"""Which threads may run llama.cpp's CPU compute: an engine's own thread, or one that ends with
the work.

llama.cpp's CPU backend is built with OpenMP here (`OPENMP = 1` in its system info), and libgomp
keeps a team of worker threads for every thread that has ever started a parallel region, for as
long as that thread lives. Once the process holds more such workers than there are CPUs, libgomp
stops spinning at its barriers and sleeps on a futex instead, and ggml crosses a barrier after
every operation of the graph: a single stream of the bundled model then decoded at 21-22 ms a
step instead of 14-15 on 2 cores, after the start-up calibration had timed its steps on the
loading thread (bench/RESULTS.md). A thread that ends takes its team with it, so work that is
not the engine thread's own runs on a thread of its own that ends when the work does: the
one-off timing of the CPU at load on a passing thread, embedding batches on a thread that
serves a run of them and ends once none has come for a moment (a new thread and team for every
batch cost 4.4 ms a batch here, against 1.6 ms for the decode itself).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


def on_passing_thread(work: Callable[[], T], name: str = "gemma-serve-compute") -> T:
    """`work()` on a new thread that ends with it; its result, or its exception, here."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:  # re-raised on the calling thread
            failure.append(exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


class LingeringThread:
    """Runs work items one at a time on one thread, started by the first item and ended once
    no item has come for `linger` seconds (a later item starts a new one)."""

    def __init__(self, name: str, linger: float = 2.0) -> None:
        self._name = name
        self._linger = linger
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._queue: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._running = False

    def submit(self, work: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            self._queue.append((work, future))
            if self._running:
                self._arrived.notify()
            else:
                self._running = True
                threading.Thread(target=self._serve, name=self._name, daemon=True).start()
        return future

    async def run(self, work: Callable[[], T]) -> T:
        """`work()` on this thread, awaited; cancelling the wait drops it if it has not
        started (an item already running ends on its thread and its result is dropped)."""
        return await asyncio.wrap_future(self.submit(work))

    def _serve(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._arrived.wait(self._linger)
                if not self._queue:
                    self._running = False
                    return
                work, future = self._queue.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(work())
            except BaseException as exc:  # the waiting side re-raises it
                future.set_exception(exc)
