"""Handing engine events to the event loop (server/engine/generation.py): inside one step every
event is held and then handed over in one `call_soon_threadsafe` per event loop, each
generation's events in the order they were pushed; outside a step an event goes at once; a closed
loop cancels the generations that had events for it; text deltas that wait behind each other (a
consumer behind the engine) reach it as one."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from server.engine.contract import (
    ChatMessage,
    Finished,
    GenerationRequest,
    SamplingParams,
    TextDelta,
    TokenLogprob,
    Usage,
)
from server.engine.generation import DONE, LlamaGeneration, Reservation, one_delivery_per_step


def generation_on(loop: asyncio.AbstractEventLoop) -> LlamaGeneration:
    request = GenerationRequest(messages=(ChatMessage("user", "hi"),), sampling=SamplingParams())
    generation = LlamaGeneration(
        request,
        [1, 2, 3],
        grammar=None,
        n_ctx=64,
        reservation=Reservation(lambda: None),
        submit=lambda generation: None,
    )
    generation._loop = loop
    return generation


class CountingLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        super().__init__()
        self.handoffs = 0

    def call_soon_threadsafe(self, *args: Any, **kwargs: Any) -> Any:
        self.handoffs += 1
        return super().call_soon_threadsafe(*args, **kwargs)


def drain(generation: LlamaGeneration) -> list[object]:
    items = []
    while not generation._queue.empty():
        items.append(generation._queue.get_nowait())
    return items


def on_engine_thread(work: Any) -> None:
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()


def test_a_step_hands_all_its_events_over_once_in_order() -> None:
    loop = CountingLoop()
    try:
        first, second = generation_on(loop), generation_on(loop)

        def step() -> None:
            with one_delivery_per_step():
                for item in ("a", "b", "c"):
                    first.push(item)
                    second.push(item.upper())
                first.push(DONE)
                assert loop.handoffs == 0  # nothing leaves before the step ends

        on_engine_thread(step)
        assert loop.handoffs == 1
        loop.run_until_complete(asyncio.sleep(0))
        assert drain(first) == ["a", "b", "c", DONE]
        assert drain(second) == ["A", "B", "C"]
    finally:
        loop.close()


def test_outside_a_step_an_event_goes_at_once() -> None:
    loop = CountingLoop()
    try:
        generation = generation_on(loop)
        on_engine_thread(lambda: generation.push("x"))
        on_engine_thread(lambda: generation.push(DONE))
        assert loop.handoffs == 2
        loop.run_until_complete(asyncio.sleep(0))
        assert drain(generation) == ["x", DONE]
    finally:
        loop.close()


def test_events_for_a_closed_loop_cancel_their_generation() -> None:
    loop = asyncio.new_event_loop()
    generation = generation_on(loop)
    loop.close()

    def step() -> None:
        with one_delivery_per_step():
            generation.push("x")

    on_engine_thread(step)
    assert generation.cancelled.is_set()


def events_of(pushes: list[list[object]]) -> list[object]:
    """The events a consumer sees when each group of `pushes` arrives while it waits."""

    async def consume() -> list[object]:
        loop = asyncio.get_running_loop()
        generation = generation_on(loop)
        arriving: list[asyncio.Task[None]] = []

        def submit(_: LlamaGeneration) -> None:
            async def arrive() -> None:
                for group in pushes:
                    for item in group:
                        generation.push(item)
                    await asyncio.sleep(0.01)  # the consumer takes this group before the next

            arriving.append(loop.create_task(arrive()))

        generation._submit = submit
        return [event async for event in generation.events()]

    return asyncio.run(consume())


def logprob(text: str) -> TokenLogprob:
    return TokenLogprob(text, text.encode(), -0.5, ())


def test_text_waiting_behind_text_reaches_the_consumer_as_one_delta() -> None:
    finished = Finished("length", Usage(3, 3, 0))
    deltas = [TextDelta(t, (logprob(t),), 1) for t in ("Hel", "lo", " there")]
    events = events_of([[*deltas, finished, DONE]])
    assert events == [
        TextDelta("Hello there", tuple(logprob(t) for t in ("Hel", "lo", " there")), 3),
        finished,
    ]


def test_a_consumer_that_keeps_up_gets_every_delta_as_it_came() -> None:
    finished = Finished("stop", Usage(3, 2, 0))
    deltas = [TextDelta("a", (), 1), TextDelta("b", (), 1)]
    events = events_of([[deltas[0]], [deltas[1]], [finished, DONE]])
    assert events == [*deltas, finished]
