"""Several generations at once: the sequences of one request (`n` choices, a list of prompts)
run side by side.

The engine decodes every sequence it has been given in one batch, so a request with `n` choices
costs about as long as one choice, provided all of them are started together. Iterating a
generation is what submits it, hence one task per generation.

This is also the one place that holds the engine to its contract: a generation that ends without
its `Finished` (the engine was closed under it) raises `EngineUnavailable`, so a stream ends with
an error event and a plain request with a 503, never a 500.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing

from server.engine.contract import EngineUnavailable, Event, Finished, TextDelta

# A pump's last word: its generation ended normally.
_ENDED = object()


def _unfinished() -> EngineUnavailable:
    return EngineUnavailable("the generation was stopped because the server is shutting down")


async def _checked(events: AsyncGenerator[Event, None]) -> AsyncGenerator[Event, None]:
    """`events`, raising `EngineUnavailable` if they end without `Finished`."""
    finished = False
    async with aclosing(events):
        async for event in events:
            finished = finished or isinstance(event, Finished)
            yield event
    if not finished:
        raise _unfinished()


async def interleave(
    generations: Sequence[AsyncGenerator[Event, None]],
) -> AsyncGenerator[tuple[int, Event], None]:
    """Yield `(index, event)` from every generation as the events come, each generation's own
    events in order and ending with its `Finished`. The first error ends them all and is raised;
    so does leaving early.

    NOTE: cancelling a pump task raises inside its generation's `async for`, which closes that
    generation (`aclosing`), which tells the engine to free its sequence: nothing outlives this
    iterator.
    """
    if len(generations) == 1:  # one generation (most requests): no queue, no task
        async with aclosing(_checked(generations[0])) as only:
            async for event in only:
                yield 0, event
        return
    queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()

    async def pump(index: int, events: AsyncGenerator[Event, None]) -> None:
        try:
            async with aclosing(_checked(events)) as checked:
                async for event in checked:
                    queue.put_nowait((index, event))
        except Exception as exc:
            queue.put_nowait((index, exc))
        else:
            queue.put_nowait((index, _ENDED))

    tasks = [asyncio.create_task(pump(i, events)) for i, events in enumerate(generations)]
    try:
        running = len(tasks)
        while running:
            index, item = await queue.get()
            if item is _ENDED:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                assert isinstance(item, TextDelta | Finished)
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
