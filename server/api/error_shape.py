"""OpenAI's error object and the exception that carries it, free of any web framework.

`APIError` is raised anywhere in the API layer, the pure converters included, and answered in
OpenAI's shape, `{"error": {message, type, param, code}}`, by the handlers in errors.py.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from server.engine.contract import EngineUnavailable

log = logging.getLogger("gemma_serve.api")

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}


class APIError(Exception):
    """Raise anywhere in the API layer to answer with an OpenAI error."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or _TYPE_BY_STATUS.get(status, "server_error")
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def unavailable(message: str, code: str, retry_after: int | None = None) -> APIError:
    """503: the server cannot serve now (loading, failed, shutting down); clients may retry."""
    headers = {"Retry-After": str(retry_after)} if retry_after else None
    return APIError(503, message, type="server_error", code=code, headers=headers)


def stream_failure(exc: Exception) -> tuple[str, str]:
    """(message, code) for an error after a stream has started, which can only be reported as a
    final event. The server going down (drain over, engine closed) is expected and named as such;
    anything else is a bug, logged with its traceback."""
    if isinstance(exc, EngineUnavailable):
        log.info("a stream was ended early: %s", exc)
        return f"The generation was ended early: {exc}.", "server_shutting_down"
    log.error("generation failed after the stream started", exc_info=exc)
    return "The server had an error while generating the response.", "internal_error"


def error_body(
    message: str, *, type: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}
