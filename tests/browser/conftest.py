"""Fixtures for the chat page's tests in a real browser: Debian's Chromium, driven by Playwright.

Playwright's own browser download cannot work offline, so the system's `chromium` is launched by
path. Where it is missing the browser tests skip with one line, except in CI (`CI=true`), where
they fail: `.ci/run` installs it, so a skip there would hide a broken set-up.

Every page records console errors, uncaught exceptions, CSP violations and dialogs (an `alert`
from model output would be one); a test fails at teardown if any appeared that it did not expect.
Screenshots go to `tmp/artifacts/browser/` (or $GEMMA_SERVE_ARTIFACTS), printed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect, sync_playwright

from tests.conftest import MODEL_ID

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DESKTOP = {"width": 1280, "height": 800}
REPLY_TIMEOUT_MS = 300_000
PHONE = {"width": 390, "height": 844}
ARTIFACTS = (
    Path(
        os.environ.get("GEMMA_SERVE_ARTIFACTS")
        or Path(__file__).resolve().parents[2] / "tmp" / "artifacts"
    )
    / "browser"
)


def chromium_path() -> str | None:
    """$GEMMA_SERVE_CHROMIUM if set (absent if no such file), else Debian's chromium."""
    chosen = os.environ.get("GEMMA_SERVE_CHROMIUM")
    if chosen:
        return chosen if Path(chosen).is_file() else None
    if Path("/usr/bin/chromium").is_file():
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


# NOTE: package scope, not session: sync Playwright keeps an asyncio event loop running on the
# main thread while it is open, and every later test that calls asyncio.run() would then fail
# ("cannot be called from a running event loop"). The browser closes after tests/browser/.
@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    path = chromium_path()
    if path is None:
        reason = "chromium is not installed (apt-get install chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI must run the browser tests", pytrace=False)
        pytest.skip(f"{reason}: browser tests skipped")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@dataclass
class Watched:
    """A page and what went wrong in it."""

    page: Any
    errors: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    accept_dialogs: bool = False

    def expect_errors(self, predicate: Callable[[str], bool]) -> list[str]:
        """Take the errors a test provoked on purpose out of the list checked at teardown."""
        expected = [error for error in self.errors if predicate(error)]
        self.errors = [error for error in self.errors if not predicate(error)]
        return expected


def watch(page: Any) -> Watched:
    watched = Watched(page)

    def on_console(message: Any) -> None:
        if message.type == "error":
            watched.errors.append(f"console: {message.text}")

    def on_dialog(dialog: Any) -> None:
        watched.dialogs.append(f"{dialog.type}: {dialog.message}")
        if watched.accept_dialogs and dialog.type == "confirm":
            dialog.accept()
        else:
            dialog.dismiss()

    page.on("console", on_console)
    page.on("pageerror", lambda error: watched.errors.append(f"exception: {error}"))
    page.on("dialog", on_dialog)
    # CSP violations also show as console errors; this names the directive too.
    page.add_init_script(
        "document.addEventListener('securitypolicyviolation', (e) => "
        "console.error(`CSP violation: ${e.violatedDirective} ${e.blockedURI}`));"
    )
    return watched


def new_page(browser: Any, **context_options: Any) -> tuple[Any, Watched]:
    context = browser.new_context(viewport=DESKTOP, **context_options)
    return context, watch(context.new_page())


@pytest.fixture
def chat(browser: Any) -> Iterator[Watched]:
    """A fresh browser profile (empty localStorage) with one watched page."""
    context, watched = new_page(browser)
    try:
        yield watched
    finally:
        context.close()
    assert watched.errors == [], "errors in the page"
    unexpected = [d for d in watched.dialogs if not d.startswith("confirm")]
    assert unexpected == [], "a dialog opened (model output ran script?)"


def canned_stream(text: str, pieces: int = 1, usage: dict[str, int] | None = None) -> str:
    """An OpenAI chat stream saying `text`, cut into `pieces` deltas, with a usage chunk."""
    size = max(1, -(-len(text) // pieces))
    parts = [text[i : i + size] for i in range(0, len(text), size)]
    base = {"id": "chatcmpl-canned", "object": "chat.completion.chunk", "created": 0}
    events = []
    for index, part in enumerate(parts):
        delta = {"role": "assistant", "content": part} if index == 0 else {"content": part}
        choice = {"index": 0, "delta": delta, "finish_reason": None}
        events.append({**base, "model": MODEL_ID, "choices": [choice]})
    events.append(
        {
            **base,
            "model": MODEL_ID,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
    )
    usage = usage or {"prompt_tokens": 12, "completion_tokens": len(parts), "total_tokens": 0}
    events.append({**base, "model": MODEL_ID, "choices": [], "usage": usage})
    return "".join(f"data: {json.dumps(event)}\n\n" for event in events) + "data: [DONE]\n\n"


class CannedChat:
    """Answers the page's chat requests with canned streams (the real model cannot be made to
    write hostile HTML on request); records every request body the page sent."""

    def __init__(
        self,
        page: Any,
        replies: list[str],
        pieces: int = 1,
        usage: dict[str, int] | None = None,
    ) -> None:
        self.replies = list(replies)
        self.pieces = pieces
        self.usage = usage
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        page.route("**/v1/chat/completions", self._answer)

    def _answer(self, route: Any) -> None:
        self.requests.append(route.request.post_data_json)
        self.headers.append(route.request.headers)
        text = self.replies.pop(0) if self.replies else "(no more canned replies)"
        # A reply that already is an event stream (an error event, a cut stream) is sent as is.
        body = text if text.startswith("data:") else canned_stream(text, self.pieces, self.usage)
        route.fulfill(
            status=200,
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
            body=body,
        )


def model_line_says(page: Any, text: str) -> None:
    """Wait until the model line shows `text`. (Playwright's `expect`, not `wait_for_function`:
    a string predicate is evaluated with eval, which the page's CSP rightly refuses.)"""
    expect(page.locator("#model-info")).to_contain_text(text, timeout=30_000)


def open_chat(page: Any, base_url: str) -> None:
    """Load the page and wait until it shows the served model."""
    page.goto(f"{base_url}/")
    model_line_says(page, "context")


def settings(page: Any, **fields: str) -> None:
    """Fill the settings dialog's fields (system, temperature, top_p, max_tokens, api_key)
    and save."""
    page.click("#open-settings")
    for name, value in fields.items():
        page.fill(f"#settings-form [name={name}]", value)
    page.click("#save-settings")


def send(page: Any, text: str) -> Any:
    """Type a message, press Enter, wait for the reply to finish; the reply's element."""
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")
    # A guard against a hang, not a speed bound: the other tests share the 2 cores.
    page.wait_for_selector("#send:not([hidden])", timeout=REPLY_TIMEOUT_MS)
    return page.locator(".message.assistant").last


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path))
    return path


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if ARTIFACTS.is_dir() and any(ARTIFACTS.iterdir()):
        terminalreporter.write_line(f"browser screenshots: {ARTIFACTS}")
