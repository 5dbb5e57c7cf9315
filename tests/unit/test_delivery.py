"""Handing engine events to the event loop (server/engine/generation.py): inside one step every
event is held and then handed over in one `call_soon_threadsafe` per event loop, each
generation's events in the order they were pushed; outside a step an event goes at once; a closed
loop cancels the generations that had events for it."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from server.engine.contract import ChatMessage, GenerationRequest, SamplingParams
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
