"""Every error leaves the server in the shape of the dialect its path speaks: OpenAI's
`{"error": {message, type, param, code}}`, Ollama's `{"error": "..."}` under `/api/`, Anthropic's
`{"type": "error", "error": {type, message}}` under `/v1/messages` (`dialect_of`).

Clients (the official SDKs above all) read the message and retry 408/409/429/5xx, so a
deterministic failure must be a 4xx, and FastAPI's own 422 `{"detail": ...}` must never escape.
Code raises one `APIError` (OpenAI's fields); `APIError.response(path)` writes it in the dialect's
shape, so the same checks (keys, Host, body size, a full queue) answer every dialect in its own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.engine.types import EngineBusy, EngineUnavailable

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
        if dialect == "ollama":
            return {"error": self.plain_message()}
        if dialect == "anthropic":
            kind = _ANTHROPIC_TYPES.get(self.status, "invalid_request_error")
            if self.status >= 500 and self.status != 503:
                kind = "api_error"
            return {"type": "error", "error": {"type": kind, "message": self.plain_message()}}
        return self.body()

    def response(self, path: str = "") -> JSONResponse:
        """The error as the dialect of `path` writes it (OpenAI's when no path is given)."""
        body = self.body_for(dialect_of(path))
        return JSONResponse(body, status_code=self.status, headers=self.headers)


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
        return exc.response(request.url.path)

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        message, param = _validation_message(exc)
        error = APIError(400, message, param=param, code="invalid_value")
        return error.response(request.url.path)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        message = exc.detail if isinstance(exc.detail, str) else "HTTP error"
        if exc.status_code == 404:
            message = f"Unknown request URL: {request.method} {request.url.path}."
        elif exc.status_code == 405:
            message = f"Method {request.method} is not allowed on {request.url.path}."
        code = "request_too_large" if exc.status_code == 413 else None  # the body limit
        error = APIError(exc.status_code, message, code=code, headers=exc.headers)
        return error.response(request.url.path)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        error = APIError(500, "The server had an internal error.", code="internal_error")
        return error.response(request.url.path)

    async def on_engine_unavailable(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, EngineBusy):
            return unavailable(
                f"The server is busy: {exc}. Retry shortly.", "server_busy", exc.retry_after
            ).response(request.url.path)
        return unavailable(
            f"The server cannot take requests now: {exc}.", "server_unavailable", retry_after=5
        ).response(request.url.path)

    app.add_exception_handler(EngineUnavailable, on_engine_unavailable)
    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
    _document_errors(app)
