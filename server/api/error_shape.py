"""OpenAI's error object and the exception that carries it, free of any web framework.

`APIError` is raised anywhere in the API layer, the pure converters included, and answered in
OpenAI's shape, `{"error": {message, type, param, code}}`, by the handlers in errors.py, or in
Ollama's or Anthropic's on their paths (`dialect_of`, `APIError.body_for`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal

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


Dialect = Literal["openai", "ollama", "anthropic"]
DIALECTS: tuple[Dialect, ...] = ("openai", "ollama", "anthropic")

# Anthropic's error `type` for each status (its API reference, "Errors"); 503 is its 529.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
}


def dialect_of(path: str) -> Dialect:
    """Which API a path belongs to: Ollama's under `/api/`, Anthropic's Messages API under
    `/v1/messages`, OpenAI's everywhere else."""
    if path == "/api" or path.startswith("/api/"):
        return "ollama"
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        return "anthropic"
    return "openai"


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

    def plain_message(self) -> str:
        """The message with the field named, for dialects without a `param` field."""
        if self.param and self.param not in self.message:
            return f"{self.param}: {self.message}"
        return self.message

    def body_for(self, dialect: Dialect) -> dict[str, Any]:
        """The body in `dialect`'s shape (the status and headers are the same for all)."""
        if dialect == "ollama":
            return {"error": self.plain_message()}
        if dialect == "anthropic":
            kind = _ANTHROPIC_TYPES.get(self.status, "invalid_request_error")
            if self.status >= 500 and self.status != 503:
                kind = "api_error"
            return {"type": "error", "error": {"type": kind, "message": self.plain_message()}}
        return self.body()


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
