"""An accepted generation as the asyncio side sees it: its events arrive on an asyncio queue.

The engine thread pushes events with `call_soon_threadsafe`, once per step for all the events of
that step (`one_delivery_per_step`); the consumer iterates `events()`, which submits the
generation on first use. Every generation holds one place of the engine's
bounded capacity from `prepare()` on (so a full server answers 503 before a stream starts) until
the engine is done with it, or until it is dropped without ever being iterated.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import contextmanager

from server.engine.contract import Event, Finished, GenerationRequest, TextDelta
from server.engine.vision import PromptImage

DONE = object()  # end-of-events marker on a generation's asyncio queue


class _Outbox(threading.local):
    """The events an engine thread holds during one step (None: push at once)."""

    held: list[tuple[LlamaGeneration, object]] | None = None


_outbox = _Outbox()


@contextmanager
def one_delivery_per_step() -> Iterator[None]:
    """Hold every event this thread pushes until the block ends, then hand them to each event
    loop in one `call_soon_threadsafe`, in order.

    NOTE: each `call_soon_threadsafe` takes the loop's lock and writes its wake-up pipe, and the
    loop then runs a callback; one per token per sequence was the engine thread's largest cost
    outside `llama_decode` (bench/step_cost.py), paid again for every sequence of a step.
    """
    held: list[tuple[LlamaGeneration, object]] = []
    _outbox.held = held
    try:
        yield
    finally:
        _outbox.held = None
        _deliver(held)


def _deliver(held: list[tuple[LlamaGeneration, object]]) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[LlamaGeneration, object]]] = {}
    for generation, item in held:
        assert generation._loop is not None
        by_loop.setdefault(generation._loop, []).append((generation, item))
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_put_all, items)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            for generation, _ in items:
                generation.cancelled.set()


def _put_all(items: list[tuple[LlamaGeneration, object]]) -> None:
    for generation, item in items:
        generation._queue.put_nowait(item)


class _Once:
    """A callback run at most once, by whichever thread gets there first."""

    def __init__(self, callback: Callable[[], None]) -> None:
        self._callback: Callable[[], None] | None = callback
        self._lock = threading.Lock()

    def _run_once(self) -> None:
        with self._lock:
            callback, self._callback = self._callback, None
        if callback is not None:
            callback()


class Reservation(_Once):
    """One place in the engine's capacity; `release()` is idempotent and thread-safe."""

    def release(self) -> None:
        self._run_once()


class Announcement(_Once):
    """A generation on its way to the engine: announced when its preparation starts, settled
    (once; any thread) when it is submitted, refused or dropped. An idle engine gives the
    generations announced with the first one a moment to arrive (`Scheduler._await_announced`)."""

    def settle(self) -> None:
        self._run_once()


class LlamaGeneration:
    """One sequence to generate: the tokenised prompt, its limits and its event queue."""

    def __init__(
        self,
        request: GenerationRequest,
        tokens: list[int],
        *,
        grammar: str | None,
        n_ctx: int,
        reservation: Reservation,
        submit: Callable[[LlamaGeneration], None],
        images: tuple[PromptImage, ...] = (),
        announcement: Announcement | None = None,
    ) -> None:
        self.request = request
        self.tokens = tokens  # an image's positions hold its stand-in id (engine/vision.py)
        self.images = images
        self.grammar = grammar
        self.prompt_tokens = len(tokens)
        room = n_ctx - len(tokens)
        self.max_new_tokens = min(request.max_tokens or room, room)
        self.cancelled = threading.Event()
        self.reservation = reservation
        self.submitted_at = 0.0
        self._submit = submit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self.announcement = announcement or Announcement(lambda: None)
        # A generation prepared but never iterated (a later choice of the same request was refused)
        # gives its place back, and stops being awaited, when it is garbage-collected.
        weakref.finalize(self, reservation.release)
        weakref.finalize(self, self.announcement.settle)

    def push(self, item: object) -> None:
        """Called from the engine thread; held until the step ends inside
        `one_delivery_per_step`."""
        assert self._loop is not None
        held = _outbox.held
        if held is not None:
            held.append((self, item))
            return
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            self.cancelled.set()

    async def events(self) -> AsyncGenerator[Event, None]:
        """Start generation and yield its events; leaving early cancels it.

        NOTE: the `finally` runs when the consumer stops iterating (client disconnect, error), as
        long as the consumer closes this generator (`contextlib.aclosing`); the engine thread
        checks `cancelled` before every decode step and frees its sequence.
        """
        self._loop = asyncio.get_running_loop()
        self.submitted_at = time.monotonic()
        try:
            self._submit(self)
        except BaseException:
            self.reservation.release()
            raise
        try:
            while True:
                item = await self._queue.get()
                if item is DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                assert isinstance(item, TextDelta | Finished)
                yield item
        finally:
            self.cancelled.set()
