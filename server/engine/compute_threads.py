"""Which threads may run llama.cpp's CPU compute: an engine's own thread, or one that ends with
the work.

llama.cpp's CPU backend is built with OpenMP here (`OPENMP = 1` in its system info), and libgomp
keeps a team of worker threads for every thread that has ever started a parallel region, for as
long as that thread lives. Once the process holds more such workers than there are CPUs, libgomp
stops spinning at its barriers and sleeps on a futex instead, and ggml crosses a barrier after
every operation of the graph: a single stream of the bundled model then decoded at 21-22 ms a
step instead of 14-15 on 2 cores, after the start-up calibration had timed its steps on the
loading thread (bench/RESULTS.md). A thread that ends takes its team with it, so work that is
not the engine thread's own (timing the CPU at load, an embedding batch) runs on a thread of
its own that ends when the work does.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

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


async def on_passing_thread_async(work: Callable[[], T], name: str = "gemma-serve-compute") -> T:
    """`on_passing_thread` without blocking the event loop (the waiting is done by one of
    asyncio's worker threads, which itself runs no compute)."""
    return await asyncio.to_thread(on_passing_thread, work, name)
