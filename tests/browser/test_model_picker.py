"""The chat page's model picker (issue 20): any installed model per conversation, against a
real server holding the bundled model and the same file brought again under another id."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tests.conftest import RunningServer
from tests.e2e.test_models import SECOND, serve_two_models

from .conftest import Watched, model_line_says, open_chat, send, settings


@pytest.fixture
def two_models(tmp_path: Path, model_path: Path) -> Iterator[RunningServer]:
    yield from serve_two_models(tmp_path, model_path, "forever")


def test_a_conversation_uses_the_model_picked_for_it(
    chat: Watched, two_models: RunningServer
) -> None:
    page = chat.page
    open_chat(page, two_models.base_url)
    picker = page.locator("#model-picker")
    expect(picker).to_be_visible()
    assert picker.locator("option").all_inner_texts() == [
        "gemma-3-270m",
        f"{SECOND} (unloaded)",
    ]
    picker.select_option(SECOND)
    model_line_says(page, f"{SECOND} · ")
    model_line_says(page, "not loaded: sending loads it")
    settings(page, max_tokens="8")
    reply = send(page, "Hello")
    assert reply.locator(".body").inner_text().strip()
    model_line_says(page, "context 1024 tokens")  # loaded by the message
    cards = httpx.get(f"{two_models.base_url}/v1/models").json()["data"]
    assert {card["id"]: card["state"] for card in cards}[SECOND] == "loaded"
    # The pick is the conversation's: kept across a reload, and a new chat starts with it.
    page.reload()
    model_line_says(page, SECOND)
    assert picker.input_value() == SECOND
    page.click("#new-chat")
    assert picker.input_value() == SECOND
    picker.select_option("gemma-3-270m")
    model_line_says(page, "gemma-3-270m · ")
    page.locator(".conversation", has_text="Hello").click()  # back to the first conversation
    assert picker.input_value() == SECOND
    model_line_says(page, f"{SECOND} · ")
