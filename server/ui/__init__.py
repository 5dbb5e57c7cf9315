"""The chat page: static files shipped inside the package, served at `/` and `/ui/`.

The page is plain HTML, CSS and JavaScript modules (no build step); its third-party libraries are
vendored under `static/vendor/` (see the README there). It talks to the server's own OpenAI API
with `fetch`, so it works wherever the API does: behind the Host allow-list, and with API keys
(the user types the key into the page's settings).

Model output is untrusted text, so every response of the page carries a strict
Content-Security-Policy: scripts, styles and connections only from this origin, no inline script
or event handler, images only from this origin or `data:`/`blob:` (pictures the user attaches),
no frames, no plugins, no form posts elsewhere. Even a sanitiser bug could then not run a script
or send the conversation away.

Only `/` and `/ui/*` belong to the page: nothing is mounted at the root, so the page can never
answer for an API path (`/v1/...`, `/health`, `/metrics`), and a wrong method on an API route is
still that route's 405.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC_DIR = Path(__file__).parent / "static"
# The paths a browser must reach without an API key to load the page (the API stays keyed).
PAGE_PATH = "/"
ASSETS_PREFIX = "/ui/"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "font-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    # Revalidate every time (a 304 is cheap): after an upgrade the page never mixes old and new
    # modules from the browser's cache.
    "Cache-Control": "no-cache",
}


class WithSecurityHeaders:
    """Pure ASGI wrapper adding SECURITY_HEADERS to every response of the wrapped app."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


# The assets folder's own address, which people type for "the UI": it leads to the page.
UI_PATHS = (ASSETS_PREFIX.rstrip("/"), ASSETS_PREFIX)


def is_page_path(path: str) -> bool:
    """True for the paths the page itself is served from (open without an API key)."""
    return path == PAGE_PATH or path in UI_PATHS or path.startswith(ASSETS_PREFIX)


async def _index(request: Request) -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", headers=SECURITY_HEADERS)


async def _to_the_page(request: Request) -> RedirectResponse:
    return RedirectResponse(PAGE_PATH, status_code=308, headers=SECURITY_HEADERS)


def add_chat_page(app: FastAPI) -> None:
    """Serve the page at `/` and its files under `/ui/`. Call after the API's routes."""
    app.add_route(PAGE_PATH, _index, methods=["GET", "HEAD"], include_in_schema=False)
    for path in UI_PATHS:  # before the mount, which would answer them with a 404
        app.add_route(path, _to_the_page, methods=["GET", "HEAD"], include_in_schema=False)
    app.mount(
        ASSETS_PREFIX.rstrip("/"),
        WithSecurityHeaders(StaticFiles(directory=STATIC_DIR, follow_symlink=False)),
        name="ui",
    )
