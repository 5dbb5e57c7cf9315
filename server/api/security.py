"""Safe defaults in front of the API, as pure ASGI middleware: Host allow-list, API keys, a
request body limit. Each refusal is an OpenAI-shaped error, so SDKs show its message.

Pure ASGI (not Starlette's `BaseHTTPMiddleware`) so that streamed responses pass through
untouched and the body limit can be enforced while the body arrives, chunk by chunk.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.api.errors import APIError, json_response

# Paths any client may read without a key: supervisors (Docker's HEALTHCHECK, systemd, a load
# balancer) probe /health with no credentials, and it tells nothing about the model's use.
OPEN_PATHS = frozenset({"/health"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


class SecurityConfigError(ValueError):
    """A security setting cannot be used (unreadable key file, ...); one line for the user."""


def load_api_keys(keys: Iterable[str], keys_file: Path | None) -> tuple[str, ...]:
    """The keys from the setting plus those in `keys_file` (one a line, '#' comments)."""
    found = [key for key in keys if key]
    if keys_file is not None:
        try:
            lines = keys_file.read_text("utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise SecurityConfigError(f"cannot read the API key file {keys_file}: {exc}") from exc
        found += [line.split("#", 1)[0].strip() for line in lines]
    result = tuple(dict.fromkeys(key for key in found if key))
    if keys_file is not None and not result:
        raise SecurityConfigError(f"the API key file {keys_file} holds no key")
    for key in result:
        if not key.isascii() or not key.isprintable() or " " in key:
            raise SecurityConfigError("an API key may hold only printable ASCII, without spaces")
    return result


def _refuse(error: APIError) -> ASGIApp:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await json_response(error, scope["path"])(scope, receive, send)

    return app


class APIKeyMiddleware:
    """Require `Authorization: Bearer <key>` (or Anthropic's `x-api-key: <key>`) matching one of
    `keys` on every path but /health
    and, for GET and HEAD only, the paths `public_page` accepts (the chat page's static files:
    a browser cannot send a key before the page that asks for it has loaded).

    Every key is compared (hmac.compare_digest, no early exit), so the time taken does not tell
    which key, or how much of one, matched. With no keys configured this middleware is not
    installed at all.
    """

    def __init__(
        self,
        app: ASGIApp,
        keys: tuple[str, ...],
        public_page: Callable[[str], bool] | None = None,
    ) -> None:
        if not keys:
            raise ValueError("APIKeyMiddleware needs at least one key")
        self.app = app
        self.keys = [key.encode() for key in keys]
        self.public_page = public_page

    def _open(self, scope: Scope) -> bool:
        path = scope["path"]
        if path in OPEN_PATHS:
            return True
        return (
            self.public_page is not None
            and scope["method"] in ("GET", "HEAD")
            and self.public_page(path)
        )

    def _valid(self, given: bytes) -> bool:
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(given, key)
        return matched

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._open(scope):
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        header = headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header and headers.get("x-api-key"):  # Anthropic's SDKs send the key so
            scheme, token = "bearer", headers["x-api-key"]
        if scheme.lower() != "bearer" or not token.strip():
            message = (
                "You didn't provide an API key. Send it in an Authorization header using Bearer "
                "auth (Authorization: Bearer YOUR_KEY), or in an x-api-key header."
            )
        elif not self._valid(token.strip().encode("latin-1")):
            message = "Incorrect API key provided."
        else:
            await self.app(scope, receive, send)
            return
        error = APIError(
            401,
            message,
            type="authentication_error",
            code="invalid_api_key",
            headers={"WWW-Authenticate": 'Bearer realm="gemma-serve"'},
        )
        await _refuse(error)(scope, receive, send)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """'Example.COM.:8000' -> 'example.com'; '[::1]:8000' -> '::1'."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].partition("]")[0]
    if header.count(":") > 1:  # a bare IPv6 address (not valid in Host, but unambiguous)
        return header
    return header.partition(":")[0].rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostPolicy:
    """Which Host header values are accepted, against DNS rebinding (Ollama CVE-2024-28224).

    A rebinding page makes the browser send the attacker's *name* in Host; an IP address or
    `localhost` cannot be rebound. So: listening on loopback, only localhost and the loopback
    addresses are accepted; listening beyond loopback (0.0.0.0, a LAN address, in a container),
    any IP address too, since LAN and container clients use one. Names (the machine's LAN
    name, a reverse proxy's public name) must be listed in `extra`; '*' turns the check off.
    """

    def __init__(self, bind_host: str, extra: Iterable[str] = ()) -> None:
        extra_names = {host_name(name) for name in extra}
        self.any_host = "*" in extra_names
        self.any_ip = not is_loopback(bind_host)
        self.names = LOOPBACK_NAMES | extra_names | {host_name(bind_host)}

    def allows(self, header: str | None) -> bool:
        if self.any_host or header is None:  # no Host at all: not a browser (HTTP/1.0)
            return True
        name = host_name(header)
        return name in self.names or (self.any_ip and _is_ip(name))


def refused_host_message(header: str) -> str:
    """The 421's message: the name refused and the setting that admits it. The name is shown
    only when it is a plain host name (letters, digits, dots, dashes, an IPv6 address), so the
    answer never repeats arbitrary text from the request."""
    name = host_name(header)
    shown = name if re.fullmatch(r"[a-z0-9.:_-]{1,253}", name) else None
    if shown is None:
        return (
            "This server does not answer to that Host name (against DNS rebinding); add the "
            "name clients use with --allowed-hosts (GEMMA_SERVE_ALLOWED_HOSTS)."
        )
    return (
        f"This server does not answer to the Host name '{shown}' (against DNS rebinding). To "
        f"admit it, start the server with --allowed-hosts {shown} (or "
        f"GEMMA_SERVE_ALLOWED_HOSTS={shown}; comma-separated with other names)."
    )


class HostCheckMiddleware:
    """Answer 421 (Misdirected Request) when the Host header is not allowed by `policy`."""

    def __init__(self, app: ASGIApp, policy: HostPolicy) -> None:
        self.app = app
        self.policy = policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.policy.allows(
            Headers(scope=scope).get("host")
        ):
            await self.app(scope, receive, send)
            return
        error = APIError(
            421,
            refused_host_message(Headers(scope=scope).get("host") or ""),
            type="invalid_request_error",
            code="invalid_host",
        )
        await _refuse(error)(scope, receive, send)


def _too_large_message(limit: int) -> str:
    return (
        f"The request body is larger than this server accepts ({limit} bytes); send a shorter "
        "conversation or raise --max-body-size."
    )


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a body passes the limit; FastAPI re-raises HTTPExceptions from
    body reading, and the API's handler turns it into the 413 error."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large_message(limit))


class BodyLimitMiddleware:
    """413 for a body over `limit` bytes: at once from Content-Length, or as soon as the bytes
    read pass the limit (a chunked body, or a Content-Length that lies). Starlette has no limit
    of its own, so without this a client could make the server buffer any amount of memory.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    def _error(self) -> APIError:
        return APIError(413, _too_large_message(self.limit), code="request_too_large")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _refuse(self._error())(scope, receive, send)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except BodyTooLarge:
            # Only reached when nothing inside turned it into a response (not a FastAPI route).
            if started:
                raise
            await _refuse(self._error())(scope, receive, send)


class StrictCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, except that a preflight from an origin not allowed gets no CORS headers
    at all (Starlette answers it 400 with the allowed methods and headers): it goes on to the
    API like any request, which refuses it (401 or 405) with nothing a browser could act on."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "OPTIONS":
            origin = Headers(scope=scope).get("origin")
            if origin is not None and not self.is_allowed_origin(origin):
                await self.app(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
