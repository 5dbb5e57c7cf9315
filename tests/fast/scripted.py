"""A scripted engine behind the same `Engine` protocol as the real one, for the HTTP layer.

`ScriptedEngine` answers every `prepare()` with the next `Script` queued by `enqueue()` (or the
default one), and records what it was asked (`history`), how many generations ran at once
(`peak`), and which ones were closed before their end (`cancelled`). A script's steps are engine
events, exceptions to raise, and `Hold`s that wait until the test releases them, so a test can
keep a generation running while it hangs up, drains the server, or fills it.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field

from server.engine.contract import (
    EngineInfo,
    EngineStats,
    EngineUnavailable,
    Event,
    Finished,
    GenerationRequest,
    TextDelta,
    Usage,
)

MODEL_ID = "gemma-3-270m"


@dataclass
class Hold:
    """A step that waits until `release()` (from any thread)."""

    _released: threading.Event = field(default_factory=threading.Event)

    def release(self) -> None:
        self._released.set()

    @property
    def released(self) -> bool:
        return self._released.is_set()


Step = Event | BaseException | Hold | float  # a float: sleep that many seconds


@dataclass
class Script:
    steps: list[Step] = field(
        default_factory=lambda: [TextDelta("Hello"), 0.01, Finished("stop", Usage(3, 1))]
    )
    prompt_tokens: int = 3


class ScriptedGeneration:
    def __init__(self, engine: ScriptedEngine, script: Script) -> None:
        self._engine = engine
        self._script = script
        self.prompt_tokens = script.prompt_tokens

    async def events(self) -> AsyncGenerator[Event, None]:
        engine = self._engine
        engine.running += 1
        engine.peak = max(engine.peak, engine.running)
        finished = False
        try:
            for step in self._script.steps:
                if isinstance(step, Hold):
                    while not step.released and not engine.closed:
                        await asyncio.sleep(0.01)
                if engine.closed:  # as the real engine ends its jobs when closed
                    raise EngineUnavailable("the server is shutting down")
                if isinstance(step, Hold):
                    continue
                if isinstance(step, float | int):
                    await asyncio.sleep(step)
                elif isinstance(step, BaseException):
                    raise step
                else:
                    finished = isinstance(step, Finished)
                    yield step
        finally:
            engine.running -= 1
            if not finished:
                engine.cancelled += 1


class ScriptedEngine:
    """An `Engine` that follows scripts; see the module docstring."""

    def __init__(
        self, *, capacity: int = 8, parallel: int = 4, n_ctx: int = 1024, vision: bool = False
    ) -> None:
        self.info = EngineInfo(model_id=MODEL_ID, n_ctx=n_ctx, capacity=capacity, vision=vision)
        self.parallel = parallel
        self.closed = False
        self.reset()

    def reset(self) -> None:
        """Forget the scripts and the records (between tests sharing one server)."""
        self.history: list[GenerationRequest] = []
        self.running = 0
        self.peak = 0
        self.cancelled = 0
        self.on_prepare: Callable[[GenerationRequest], None] | None = None
        self._scripts: deque[Script] = deque()

    def enqueue(self, *scripts: Script) -> None:
        self._scripts.extend(scripts)

    async def prepare(self, request: GenerationRequest) -> ScriptedGeneration:
        if self.closed:
            raise EngineUnavailable("the server is shutting down")
        self.history.append(request)
        if self.on_prepare is not None:
            self.on_prepare(request)  # may raise what the real engine raises
        script = self._scripts.popleft() if self._scripts else Script()
        return ScriptedGeneration(self, script)

    def stats(self) -> EngineStats:
        return EngineStats(active=self.running, queued=0, parallel=self.parallel)

    def close(self) -> None:
        self.closed = True
