"""One log line and the request metrics for every HTTP request, as pure ASGI middleware.

The line is written when the response has been sent in full (for a stream: after `[DONE]`):
client, method, path, status, tokens in and out, time to first text, total time and the user
agent. Client-supplied text (path, user agent) is escaped, and nothing from the request body is
ever logged here (prompts are logged only with --log-prompts, by `serving`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from starlette.datastructures import Headers
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.error_shape import dialect_of
from server.api.metering import RequestRecord, current_record
from server.api.metrics import Metrics, method_label, route_label
from server.logtext import printable

log = logging.getLogger("gemma_serve.access")

# Not HTTP: what nginx logs when the client went away before any response was sent.
CLIENT_CLOSED = 499


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes  # the app's live route list, for bounded metric labels

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = RequestRecord()
        token = current_record.set(record)
        status: int | None = None

        async def watched_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, watched_send)
        except BaseException:
            status = status or 500
            raise
        finally:
            current_record.reset(token)
            self.metrics.in_progress.dec()
            self._done(scope, record, status or CLIENT_CLOSED)

    def _done(self, scope: Scope, record: RequestRecord, status: int) -> None:
        duration = time.monotonic() - record.started
        path = route_label(self.routes, scope)
        self.metrics.requests.labels(method_label(scope["method"]), path, str(status)).inc()
        self.metrics.dialect_requests.labels(dialect_of(scope["path"])).inc()
        self.metrics.request_duration.labels(path).observe(duration)
        client = scope.get("client")
        first = (
            f"{record.first_text - record.started:.3f}s" if record.first_text is not None else "-"
        )
        log.info(
            '%s "%s %s" %d prompt_tokens=%d completion_tokens=%d first_token=%s duration=%.3fs '
            'agent="%s"',
            f"{client[0]}:{client[1]}" if client else "-",
            printable(scope["method"], 20),
            printable(scope["path"], 300),
            status,
            record.prompt_tokens,
            record.completion_tokens,
            first,
            duration,
            printable(Headers(scope=scope).get("user-agent", "-"), 200),
        )
