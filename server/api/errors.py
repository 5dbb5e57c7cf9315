"""Every error leaves the server in the shape of the dialect its path speaks: OpenAI's
`{"error": {message, type, param, code}}`, Ollama's `{"error": "..."}` under `/api/`, Anthropic's
`{"type": "error", "error": {type, message}}` under `/v1/messages` (`error_shape.dialect_of`).

Clients (the official SDKs above all) read the message and retry 408/409/429/5xx, so a
deterministic failure must be a 4xx, and FastAPI's own 422 `{"detail": ...}` must never escape.
Code raises one `APIError` (OpenAI's fields); `json_response(error, path)` writes it in the
dialect's shape, so the same checks (keys, Host, body size, a full queue) answer every dialect in
its own.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.error_shape import (
    APIError,
    Dialect,
    dialect_of,
    error_body,
    stream_failure,
    unavailable,
)
from server.engine.contract import EngineBusy, EngineUnavailable

# The error shape itself lives in error_shape.py (no web framework); these names stay importable
# from here for the modules that answer over HTTP.
__all__ = [
    "APIError",
    "ErrorResponse",
    "dialect_of",
    "error_body",
    "install_error_handlers",
    "json_response",
    "stream_failure",
    "unavailable",
]

log = logging.getLogger("gemma_serve.api")


def json_response(error: APIError, path: str = "") -> JSONResponse:
    """The HTTP response carrying `error` in the shape of `path`'s dialect (OpenAI's without a
    path)."""
    body = error.body_for(dialect_of(path))
    return JSONResponse(body, status_code=error.status, headers=error.headers)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """The body of every error response, as documented in /openapi.json."""

    error: ErrorDetail


class OllamaErrorResponse(BaseModel):
    """The body of an error under `/api/` (Ollama's shape)."""

    error: str


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicErrorResponse(BaseModel):
    """The body of an error under `/v1/messages` (Anthropic's shape)."""

    type: Literal["error"]
    error: AnthropicErrorDetail


_ERROR_MODELS: dict[Dialect, type[BaseModel]] = {
    "openai": ErrorResponse,
    "ollama": OllamaErrorResponse,
    "anthropic": AnthropicErrorResponse,
}


# What each documented error status means. 400 and 404 answer operations that take input (a body,
# a path or query parameter); 503 any operation while the model loads or the server stops.
_INPUT_ERRORS = {
    "400": "Invalid request: a field is missing, malformed, out of range or not supported "
    "(`param` names it), or the prompt does not fit the context.",
    "404": "Unknown model (`model_not_found`).",
}
_UNAVAILABLE = {
    "503": "The model is loading or failed to load, or the server is shutting down or busy; "
    "retry after `Retry-After` seconds.",
}


def _document_errors(app: FastAPI) -> None:
    """Make /openapi.json tell the truth about errors: FastAPI documents a 422 with
    `{"detail": ...}` for every operation that takes input, which this server never sends; the
    real answers are 400/404/503 with `ErrorResponse` (or its Ollama or Anthropic shape on their
    paths). Clients and schema-driven tests
    (schemathesis in tests/property) rely on the documented statuses and shapes."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        document = build()
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        contents = {}
        for dialect, model in _ERROR_MODELS.items():
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[model.__name__] = schema
            reference = {"$ref": f"#/components/schemas/{model.__name__}"}
            contents[dialect] = {"application/json": {"schema": reference}}
        for path, path_item in document.get("paths", {}).items():
            content = contents[dialect_of(path)]
            for operation in path_item.values():
                responses = operation.setdefault("responses", {})
                takes_input = "requestBody" in operation or operation.get("parameters")
                if responses.pop("422", None) is not None or takes_input:
                    errors = {**_INPUT_ERRORS, **_UNAVAILABLE}
                else:
                    errors = _UNAVAILABLE
                for status, description in errors.items():
                    responses.setdefault(status, {"description": description, "content": content})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]


_TYPE_LABELS = frozenset({"str", "int", "float", "bool", "list", "dict", "none"})


def _is_union_label(part: str) -> bool:
    """pydantic names the branch of a union it tried: `str`, `list[str]`, `literal['a','b']`,
    `function-after[...]`, a model's class name. Field names are lower-case identifiers."""
    return part in _TYPE_LABELS or part[:1].isupper() or any(c in part for c in "[('-")


def _param_path(loc: Sequence[int | str]) -> str | None:
    """('body', 'messages', 0, 'role') -> 'messages[0].role'."""
    path = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _is_union_label(part):
            continue  # pydantic's union-branch labels are not fields
        else:
            path += f".{part}" if path else str(part)
    return path or None


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    first = exc.errors()[0]
    param = _param_path(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        return "The request body is not valid JSON.", None
    if first.get("type") == "missing" and param:
        return f"Missing required parameter: '{param}'.", param
    message = str(first.get("msg", "Invalid request."))
    if param:
        given = first.get("input")
        shown = repr(given) if not isinstance(given, dict | list) else type(given).__name__
        return f"Invalid value for '{param}': {message} (got {shown}).", param
    return f"Invalid request body: {message}.", None


def install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, APIError)
        return json_response(exc, request.url.path)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        message, param = _validation_message(exc)
        error = APIError(400, message, param=param, code="invalid_value")
        return json_response(error, request.url.path)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        message = exc.detail if isinstance(exc.detail, str) else "HTTP error"
        if exc.status_code == 404:
            message = f"Unknown request URL: {request.method} {request.url.path}."
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}."
        code = "request_too_large" if exc.status_code == 413 else None  # the body limit
        error = APIError(exc.status_code, message, code=code, headers=exc.headers)
        return json_response(error, request.url.path)

    async def on_engine_unavailable(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, EngineBusy):
            busy = f"The server is busy: {exc}. Retry shortly."
            error = unavailable(busy, "server_busy", exc.retry_after)
        else:
            cannot = f"The server cannot take requests now: {exc}."
            error = unavailable(cannot, "server_unavailable", retry_after=5)
        return json_response(error, request.url.path)

    app.add_exception_handler(EngineUnavailable, on_engine_unavailable)
    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    # Innermost middleware (added first), so that the access log sees the 500 it sends.
    app.add_middleware(InternalErrorMiddleware)
    _document_errors(app)


class InternalErrorMiddleware:
    """A bug's answer, a 500 in OpenAI's shape, without the exception escaping the app.

    Starlette's own catch-all (`add_exception_handler(Exception, ...)`) sends its response and
    then re-raises, and uvicorn answers an exception from the app by closing the connection:
    the next request a client sent on that keep-alive connection failed. Here the exception
    ends with the response; only an error after the response started (nothing else can be
    sent then) is left to the server, which must close that connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watched_send)
        except Exception:
            if started:
                raise
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            response = APIError(500, "The server had an internal error.", code="internal_error")
            await json_response(response, scope.get("path", ""))(scope, receive, send)
