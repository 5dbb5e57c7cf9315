"""The chat page is safe with untrusted model output and works behind API keys: hostile HTML and
`javascript:` links in a reply are shown inert (no script runs, nothing is fetched), the page's
CSP blocks inline script even if something slipped through, and a keyed server works once the
key is typed into the settings (the page itself loads without one)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RunningServer, serving

from .conftest import (
    CannedChat,
    Watched,
    model_line_says,
    new_page,
    open_chat,
    send,
    settings,
)

HOSTILE = (
    "Look: <img src=x onerror=alert(1)> and <script>alert(2)</script>\n\n"
    '[click me](javascript:alert(3)) or <a href="javascript:alert(4)">this</a>\n\n'
    '![tracker](http://198.51.100.7/pixel.png) <iframe src="/"></iframe>\n\n'
    '<svg onload=alert(5)></svg> <div style="position:fixed;inset:0" onclick=alert(6)>x</div>'
)


def test_hostile_markup_in_a_reply_is_shown_inert(chat: Watched, base_url: str) -> None:
    page = chat.page
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    CannedChat(page, [HOSTILE], pieces=7)
    open_chat(page, base_url)
    reply = send(page, "say something nasty")
    body = reply.locator(".body")
    # The raw HTML is shown as text, for the user to see what the model wrote.
    text = body.inner_text()
    assert "<img src=x onerror=alert(1)>" in text
    assert "<script>alert(2)</script>" in text
    for tag in ("img", "script", "iframe", "svg", "div", "style"):
        assert body.locator(tag).count() == 0, f"a <{tag}> from the reply reached the page"
    assert page.locator("[onerror], [onload], [onclick], [style]").count() == 0
    link = body.locator("a", has_text="click me")
    assert link.count() == 1
    assert not (link.get_attribute("href") or "").lower().startswith("javascript")
    link.click()  # inert: no href, nothing happens
    page.wait_for_timeout(300)
    assert chat.dialogs == [], "model output ran script"
    assert not any("198.51.100.7" in url for url in requested), "a reply's picture was fetched"
    assert page.evaluate("window.length") == 0, "a frame was created"


# An inline handler slipped into the page. Chromium checks it against the CSP when its event
# fires (once the picture has loaded), so this resolves after both the load and the violation,
# and a task more for any handler to have run; the guard only stops a hang.
SLIPPED_THROUGH = """() => new Promise((resolve) => {
    window.ran = false;
    const seen = {loaded: false, violation: null};
    const finish = () => setTimeout(() => resolve({...seen, ran: window.ran}), 0);
    const check = () => { if (seen.loaded && seen.violation) finish(); };
    document.addEventListener('securitypolicyviolation', (event) => {
        seen.violation = event.violatedDirective;
        check();
    });
    const box = document.createElement('div');
    box.innerHTML = '<img src="/ui/favicon.svg" onload="window.ran = true">';
    box.firstChild.addEventListener('load', () => { seen.loaded = true; check(); });
    document.body.append(box);
    setTimeout(finish, 20000);
})"""


def test_the_pages_csp_blocks_inline_script_even_if_markup_slipped_through(
    chat: Watched, base_url: str
) -> None:
    page = chat.page
    open_chat(page, base_url)
    # Also waits for the console error that the test takes out of the teardown check.
    with page.expect_console_message(lambda message: "script-src" in message.text):
        seen = page.evaluate(SLIPPED_THROUGH)
        assert seen["loaded"], f"the picture did not load: {seen}"
        assert seen["violation"], f"no CSP violation was reported for an inline handler: {seen}"
        assert seen["ran"] is False, seen
    blocked = chat.expect_errors(lambda error: "script-src" in error or "inline" in error)
    assert blocked, "no CSP violation was reported for an inline handler"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serving(
        tmp_path_factory.mktemp("keyed"), "--ctx", "2048", "--api-keys", "page-test-key"
    ) as running:
        yield running


def test_the_api_key_field_makes_a_keyed_server_work(
    browser: Any, keyed_server: RunningServer
) -> None:
    base = keyed_server.base_url
    # The page and its files load without a key; the API does not answer without one.
    assert httpx.get(f"{base}/").status_code == 200
    assert httpx.get(f"{base}/ui/app.js").status_code == 200
    assert httpx.get(f"{base}/v1/models").status_code == 401
    context, chat = new_page(browser)
    page = chat.page
    try:
        page.goto(f"{base}/")
        model_line_says(page, "API key")
        # The page's own request for /v1/models got 401: Chromium logs that as a console error.
        chat.expect_errors(lambda error: "401" in error)
        settings(page, api_key="page-test-key", max_tokens="8")
        model_line_says(page, "context")
        reply = send(page, "Say hello.")
        assert reply.locator(".body").inner_text().strip()
        assert reply.locator(".error").count() == 0
        # Kept in this browser: a reload still works without typing it again.
        page.reload()
        model_line_says(page, "context")
        stored = page.evaluate("JSON.parse(localStorage.getItem('gemma-serve.settings.v1'))")
        assert stored["api_key"] == "page-test-key"
    finally:
        context.close()
    assert chat.errors == []


def test_a_wrong_key_is_reported_on_the_page(browser: Any, keyed_server: RunningServer) -> None:
    context, chat = new_page(browser)
    page = chat.page
    try:
        page.goto(f"{keyed_server.base_url}/")
        settings(page, api_key="wrong")
        model_line_says(page, "Incorrect API key")
        chat.expect_errors(lambda error: "401" in error)
    finally:
        context.close()
    assert chat.errors == []


def test_no_file_of_the_page_is_fetched_from_elsewhere() -> None:
    static = Path(__file__).resolve().parents[2] / "server" / "ui" / "static"
    for path in static.glob("*.*"):
        text = path.read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "")
        assert "https://" not in text, f"{path.name} names a remote origin"
