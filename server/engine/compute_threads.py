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
serves a run of them (a new thread and team for every batch cost 4.4 ms a batch here, against
1.6 ms for the decode itself).

An idle team is harmless alone, and a thread that keeps one starts its next work at once (a new
engine thread's first prefill took ~10 ms longer here: a request after 2 s idle, 61 ms against
50). So a thread with no work lingers, keeping its team, while no other thread computes, and
ends as soon as one starts (`TEAMS`: every such thread says when it works, lingers and ends).
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class Lingering:
    """A thread waiting for work on `condition` (whose lock it holds while it checks): `alone`
    if no other thread computed when it began; `dismissed` once another thread starts to."""

    condition: threading.Condition
    alone: bool
    dismissed: bool = False


class Teams:
    """The threads of this process that run llama.cpp's compute, working or lingering."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._working: set[int] = set()
        self._lingering: dict[int, Lingering] = {}

    def work(self) -> None:
        """The calling thread is about to compute: every other lingering thread is dismissed
        (marked, and its condition notified).

        NOTE: call it holding none of the caller's own locks: dismissing takes the others'.
        """
        me = threading.get_ident()
        with self._lock:
            self._working.add(me)
            self._lingering.pop(me, None)
            dismissed = list(self._lingering.values())
            self._lingering.clear()
        for lingering in dismissed:
            with lingering.condition:
                lingering.dismissed = True
                lingering.condition.notify_all()

    def linger(self, condition: threading.Condition) -> Lingering:
        """The calling thread has no work and waits for some on `condition`, keeping its team
        until it works again or ends. Alone (no other thread computes now), lingering costs
        nothing; once another thread starts computing it is dismissed and should end."""
        me = threading.get_ident()
        with self._lock:
            self._working.discard(me)
            lingering = Lingering(condition, alone=not self._working)
            self._lingering[me] = lingering
            return lingering

    def leave(self) -> None:
        """The calling thread ends, and its team with it."""
        me = threading.get_ident()
        with self._lock:
            self._working.discard(me)
            self._lingering.pop(me, None)


TEAMS = Teams()  # process-wide, as libgomp's teams are


def on_passing_thread(work: Callable[[], T], name: str = "gemma-serve-compute") -> T:
    """`work()` on a new thread that ends with it; its result, or its exception, here."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        TEAMS.work()
        try:
            outcome.append(work())
        except BaseException as exc:  # re-raised on the calling thread
            failure.append(exc)
        finally:
            TEAMS.leave()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]


class LingeringThread:
    """Runs work items one at a time on one thread, started by the first item; a later item
    starts a new one once it has ended. Between items it waits as long as no other thread
    computes, and `linger` seconds at most beside one that does (the next batch of a run comes
    within that); another thread that starts computing meanwhile ends it (`TEAMS`)."""

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
        TEAMS.work()
        try:
            while True:
                with self._lock:
                    lingered = not self._queue
                    if lingered:  # it must say that it works again before the next item
                        self._wait_for_work()
                    if not self._queue:  # nothing came: dismissed, or beside a busy thread
                        self._running = False
                        return
                    work, future = self._queue.popleft()
                if lingered:
                    TEAMS.work()
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    future.set_result(work())
                except BaseException as exc:  # the waiting side re-raises it
                    future.set_exception(exc)
        finally:
            TEAMS.leave()

    def _wait_for_work(self) -> None:
        """Holding the lock, with no item queued: wait for one while this thread may linger."""
        lingering = TEAMS.linger(self._arrived)
        limit = None if lingering.alone else self._linger
        self._arrived.wait_for(lambda: bool(self._queue) or lingering.dismissed, limit)
