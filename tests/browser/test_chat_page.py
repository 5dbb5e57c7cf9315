"""The chat page in a real Chromium against the real server and the bundled model: a reply
streams in and renders, Stop (button or Escape) frees the server's sequence, the keyboard alone
works, the page holds no console error; phone and desktop screenshots are saved."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import expect

from .conftest import (
    DESKTOP,
    PHONE,
    REPLY_TIMEOUT_MS,
    CannedChat,
    Watched,
    model_line_says,
    open_chat,
    screenshot,
    send,
    settings,
)

LONG_PROMPT = "Write a very long story about a dragon and a lighthouse keeper, in ten chapters."
LONG_REPLY_TOKENS = 100


def test_a_message_streams_in_and_renders_with_live_speed_and_usage(
    chat: Watched, base_url: str
) -> None:
    page = chat.page
    open_chat(page, base_url)
    assert "gemma-3-270m" in page.text_content("#model-info")
    assert "CPU" in page.text_content("#model-info")
    # Record what the stats line shows while the reply streams.
    page.evaluate(
        """() => {
        window.statsSeen = [];
        new MutationObserver(() => window.statsSeen.push(
            document.getElementById('stats').textContent)
        ).observe(document.getElementById('stats'), {childList: true, subtree: true,
                                                     characterData: true});
    }"""
    )
    # Long enough for both rates at any speed the model reaches (25-75 tokens/s, faster later):
    # the live one shows once a delta comes 0.2 s after the first, the one under the reply needs
    # 0.25 s of stream. Greedy, so the reply is the same each run (here it runs to the limit);
    # bounded, since the small model may otherwise ramble for minutes.
    settings(page, temperature="0", max_tokens=str(LONG_REPLY_TOKENS))
    reply = send(page, "Tell me a long story about the sea.")
    body = reply.locator(".body")
    assert body.inner_text().strip(), "the reply is empty"
    assert body.locator("p").count() >= 1, "the reply was not rendered as Markdown"
    seen = page.evaluate("window.statsSeen")
    assert any("tokens/s" in text and "completion" not in text for text in seen), seen
    usage = reply.locator(".meta").inner_text()
    shown = re.fullmatch(
        r"\d+ prompt tokens( \(\d+ cached\))? · (\d+) completion tokens · [\d.]+ tokens/s", usage
    )
    assert shown, usage
    # The premise of the rate checks: a reply this long lasts over 0.85 s even at 75 tokens/s.
    assert int(shown[2]) >= 64, f"the reply is too short to time at every speed: {usage}"
    assert page.text_content("#stats") == ""  # the live figures are gone with the stream
    assert page.title() == "gemma-serve chat"
    assert page.locator(".conversation").first.inner_text().startswith("Tell me a long story")


def _active(base_url: str) -> int:
    return int(httpx.get(f"{base_url}/health", timeout=10).json()["active"])


def _stop_while_streaming(page: Any, base_url: str, how: str) -> None:
    page.fill("#prompt", LONG_PROMPT)
    page.press("#prompt", "Enter")
    # Streaming: some text has arrived and the Stop button shows.
    streamed = page.locator(".message.assistant .body").last
    expect(streamed).to_have_text(re.compile(r"\S.{20}", re.DOTALL), timeout=REPLY_TIMEOUT_MS)
    assert page.is_visible("#stop") and not page.is_visible("#send")
    assert _active(base_url) == 1
    if how == "button":
        page.click("#stop")
    else:
        page.keyboard.press("Escape")
    page.wait_for_selector("#send:not([hidden])", timeout=30_000)  # a guard against a hang
    assert "stopped" in page.locator(".message.assistant").last.locator(".meta").inner_text()
    deadline = time.monotonic() + 30
    while _active(base_url) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _active(base_url) == 0, "the server still generates for a stopped reply"


def test_stop_button_ends_the_stream_and_the_server_frees_the_sequence(
    chat: Watched, base_url: str
) -> None:
    open_chat(chat.page, base_url)
    _stop_while_streaming(chat.page, base_url, "button")


def test_keyboard_alone_enter_sends_shift_enter_newlines_escape_stops(
    chat: Watched, base_url: str
) -> None:
    page = chat.page
    open_chat(page, base_url)
    assert page.evaluate("document.activeElement.id") == "prompt"
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    assert page.input_value("#prompt") == "first line\nsecond line"
    assert page.locator(".message").count() == 0, "Shift+Enter sent the message"
    page.fill("#prompt", "")
    _stop_while_streaming(page, base_url, "escape")
    user = page.locator(".message.user").first.inner_text()
    assert user == LONG_PROMPT


def test_markdown_code_is_highlighted_and_copied_and_rendering_is_throttled(
    chat: Watched, base_url: str
) -> None:
    page = chat.page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    text = "# Plan\n\nSome **bold** text.\n\n```python\ndef add(a, b):\n    return a + b\n```\n"
    CannedChat(page, [text], pieces=len(text))  # one delta per character: ~80 deltas at once
    open_chat(page, base_url)
    page.evaluate(
        """() => {
        window.renders = 0;
        new MutationObserver((records) => {
            for (const r of records) {
                if (r.target.classList?.contains('body') && r.addedNodes.length) window.renders++;
            }
        }).observe(document.getElementById('messages'), {childList: true, subtree: true});
    }"""
    )
    reply = send(page, "Show me code")
    assert reply.locator("h1").inner_text() == "Plan"
    assert reply.locator("strong").inner_text() == "bold"
    code = reply.locator("pre code.hljs")
    assert code.locator("span.hljs-keyword").first.inner_text() == "def"
    renders = page.evaluate("window.renders")
    assert 1 <= renders <= 10, f"{renders} renders for {len(text)} deltas: not throttled"
    button = reply.locator("button.copy-code")
    # "Copied" shows for 1.5 s: a stall between the click and a poll could miss it, so every
    # label the button shows is recorded from before the click until it reverts (or a guard).
    button.evaluate(
        """(button) => {
        window.copyLabels = [];
        window.copyReverted = new Promise((resolve) => {
            new MutationObserver(() => {
                window.copyLabels.push(button.textContent);
                if (button.textContent === 'Copy') resolve();
            }).observe(button, {childList: true, characterData: true, subtree: true});
            setTimeout(resolve, 30000);
        });
    }"""
    )
    button.click()
    labels = page.evaluate("window.copyReverted.then(() => window.copyLabels)")
    assert labels == ["Copied", "Copy"], labels
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied == "def add(a, b):\n    return a + b\n"


SCREENSHOT_REPLY = """Use a **slice** with a step of -1:

```python
def reverse(text: str) -> str:
    return text[::-1]

print(reverse("gemma"))  # ammeg
```

- `text[::-1]` walks the string from its end to its start.
- Strings are immutable, so this builds a new one.
"""


def test_phone_and_desktop_in_light_and_dark(chat: Watched, base_url: str) -> None:
    page = chat.page
    usage = {"prompt_tokens": 48, "completion_tokens": 71, "total_tokens": 119}
    CannedChat(page, ["Paris.", SCREENSHOT_REPLY], usage=usage)
    open_chat(page, base_url)
    send(page, "What is the capital of France?")
    page.click("#new-chat")
    send(page, "How do I reverse a string in Python?")
    saved = [screenshot(page, "desktop-light")]
    page.emulate_media(color_scheme="dark")
    background = page.evaluate("getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(22, 24, 28)", background
    saved.append(screenshot(page, "desktop-dark"))
    page.emulate_media(color_scheme="light")
    assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(255, 255, 255)"

    page.set_viewport_size(PHONE)
    sidebar = page.locator("#sidebar")
    expect(sidebar).not_to_be_in_viewport()  # the drawer slides away (0.15 s)
    assert page.evaluate("document.scrollingElement.scrollWidth") <= PHONE["width"]
    send_box = page.locator("#send").bounding_box()
    assert send_box is not None and send_box["x"] + send_box["width"] <= PHONE["width"]
    saved.append(screenshot(page, "phone-light"))
    page.click("#open-sidebar")
    expect(sidebar).to_be_in_viewport(ratio=1)  # wholly on screen once it has slid in
    saved.append(screenshot(page, "phone-conversations"))
    page.click("#close-sidebar")
    expect(sidebar).not_to_be_in_viewport()
    page.click("#open-settings")
    dialog = page.locator("#settings").bounding_box()
    assert dialog is not None and dialog["x"] >= 0
    assert dialog["x"] + dialog["width"] <= PHONE["width"]
    saved.append(screenshot(page, "phone-settings"))
    page.keyboard.press("Escape")  # closes the dialog, saves nothing
    expect(page.locator("#settings")).to_be_hidden()
    page.emulate_media(color_scheme="dark")
    saved.append(screenshot(page, "phone-dark"))
    assert all(path.stat().st_size > 5_000 for path in saved)
    print(f"screenshots: {', '.join(str(path) for path in saved)}")

    if os.environ.get("GEMMA_SERVE_UPDATE_SCREENSHOT"):
        page.set_viewport_size(DESKTOP)
        page.emulate_media(color_scheme="light")
        page.screenshot(path=str(Path(__file__).resolve().parents[2] / "docs" / "chat-page.png"))


def test_a_page_opened_while_the_model_loads_shows_it_when_ready(
    chat: Watched, base_url: str
) -> None:
    page = chat.page
    calls = {"card": 0, "health": 0}

    def card(route: Any) -> None:  # the first list is the one a loading server answers
        calls["card"] += 1
        response = route.fetch()
        body = response.json()
        if calls["card"] == 1:
            body["data"][0].update(context_length=None, device=None, state="loading")
        route.fulfill(response=response, json=body)

    def health(route: Any) -> None:
        calls["health"] += 1
        if calls["health"] == 1:
            route.fulfill(status=503, json={"error": {"message": "loading", "code": "loading"}})
        else:
            route.continue_()

    page.route("**/v1/models", card)
    page.route("**/health", health)
    page.goto(f"{base_url}/")
    model_line_says(page, "loading the model")
    model_line_says(page, "context 4096 tokens")
    assert calls == {"card": 2, "health": 2}
    chat.expect_errors(lambda error: "503" in error)
