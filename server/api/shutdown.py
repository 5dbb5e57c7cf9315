"""Graceful shutdown: on SIGTERM, refuse new requests, let running ones finish, then end them.

`Drain.run()` is started by the command line's signal handler (see `cli.py`); the listening
socket stays open meanwhile, so a new request gets an OpenAI-shaped 503 (clients retry, a load
balancer moves on) rather than a refused connection. Requests still running after the grace
period are ended through `interrupt` (closing the engine): streams get a final error event and
`[DONE]`, other requests a 503. Only then does uvicorn stop, well inside Docker's and systemd's
30-second kill timeout when the grace period is the default 10 s.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from server.api.errors import json_response, unavailable

log = logging.getLogger("gemma_serve")

# After interrupting, how long ended requests get to send their last bytes.
_INTERRUPT_WAIT = 5.0
_POLL = 0.05


class Drain:
    """Counts the HTTP requests in flight and runs the shutdown sequence over them."""

    def __init__(self, grace: float, interrupt: Callable[[], Awaitable[None]]) -> None:
        self.grace = grace
        self.draining = False
        self.active = 0
        self._interrupt = interrupt

    async def _wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.active and time.monotonic() < deadline:
            await asyncio.sleep(_POLL)
        return self.active == 0

    async def run(self) -> None:
        """Refuse new requests; wait up to `grace` seconds; interrupt what still runs."""
        self.draining = True
        log.info(
            "shutting down: new requests get 503; %d running, %.0f s to finish",
            self.active,
            self.grace,
        )
        if await self._wait_idle(self.grace):
            return
        log.warning("%d requests still running after %.0f s; ending them", self.active, self.grace)
        await self._interrupt()
        if not await self._wait_idle(_INTERRUPT_WAIT):
            log.warning("%d requests did not end; closing their connections", self.active)


class DrainMiddleware:
    """Tracks requests for `drain`, and answers 503 to any that arrives while it drains."""

    def __init__(self, app: ASGIApp, drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.drain.draining:
            error = unavailable(
                "The server is shutting down; retry on another instance or in a moment.",
                "server_shutting_down",
                retry_after=5,
            )
            error.headers["Connection"] = "close"
            await json_response(error, scope["path"])(scope, receive, send)
            return
        self.drain.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.active -= 1
