"""Run an endpoint's `Answer` over scripted engine events, as the serving path runs it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import TypeVar

from pydantic import BaseModel

from server.api.serving import sse_events
from server.api.serving_types import Answer, ServerEvent
from server.api.streams import interleave
from server.engine.contract import Event

T = TypeVar("T", bound=BaseModel)


async def scripted(*events: Event) -> AsyncGenerator[Event, None]:
    for event in events:
        yield event


def whole(answer: Answer[T], generations: Sequence[AsyncGenerator[Event, None]]) -> T:
    async def collect() -> T:
        async with aclosing(interleave(generations)) as events:
            return await answer.whole(events)

    return asyncio.run(collect())


def as_is(payload: ServerEvent) -> ServerEvent:
    """The payloads themselves, as an endpoint's `Answer` makes them (no wire framing)."""
    return payload


def streamed(
    answer: Answer[T], generations: Sequence[AsyncGenerator[Event, None]]
) -> list[ServerEvent]:
    async def collect() -> list[ServerEvent]:
        return [event async for event in sse_events(answer, generations, encode=as_is)]

    return asyncio.run(collect())
