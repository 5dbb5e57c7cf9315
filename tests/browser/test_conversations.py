"""Conversations in the page: kept in localStorage across reloads, new/switch/rename/delete,
export then import round-trips, the whole history (and the settings) sent each turn, a full
storage quota reported without losing what is on the page; pictures offered only when the
model takes them, and not kept in saved history beyond the size cap.

The replies are canned (request interception): these tests are about the page, not the model."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from playwright.sync_api import expect

from .conftest import CannedChat, Watched, canned_stream, open_chat, send, settings

STORAGE_KEY = "gemma-serve.conversations.v1"


def saved(page: Any) -> dict[str, Any]:
    return json.loads(page.evaluate(f"localStorage.getItem('{STORAGE_KEY}')"))


def titles(page: Any) -> list[str]:
    return page.locator(".conversation").all_inner_texts()


def test_conversations_survive_a_reload_and_can_be_switched_renamed_deleted(
    chat: Watched, base_url: str
) -> None:
    page = chat.page
    CannedChat(page, ["Paris.", "Blue, mostly."])
    open_chat(page, base_url)
    send(page, "Capital of France?")
    page.click("#new-chat")
    assert page.locator(".message").count() == 0
    send(page, "Colour of the sea?")
    assert titles(page) == ["Colour of the sea?", "Capital of France?"]

    page.fill("#title", "Geography")
    page.press("#title", "Enter")
    page.reload()
    open_chat(page, base_url)
    assert titles(page) == ["Geography", "Capital of France?"]
    assert page.locator(".message.assistant .body").inner_text() == "Blue, mostly."
    page.click(".conversation:has-text('Capital of France?')")
    assert page.locator(".message.assistant .body").inner_text() == "Paris."
    assert page.input_value("#title") == "Capital of France?"

    chat.accept_dialogs = True
    page.click("#delete-chat")
    assert chat.dialogs == ['confirm: Delete the conversation "Capital of France?"?']
    page.reload()
    open_chat(page, base_url)
    assert titles(page) == ["Geography"]
    assert [c["title"] for c in saved(page)["conversations"]] == ["Geography"]


def test_the_whole_history_and_the_settings_are_sent_each_turn(
    chat: Watched, base_url: str
) -> None:
    page = chat.page
    canned = CannedChat(page, ["Hello! How can I help?", "You said hi."])
    open_chat(page, base_url)
    settings(page, system="Answer briefly.", temperature="0.3", top_p="0.9", max_tokens="50")
    page.click("#open-settings")  # edited, then dismissed with Escape: nothing changes
    page.fill("#settings-form [name=system]", "Answer at length.")
    page.keyboard.press("Escape")
    send(page, "Hi")
    send(page, "What did I say?")
    second = canned.requests[1]
    assert second["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "What did I say?"},
    ]
    assert second["model"] == "gemma-3-270m"
    assert (second["temperature"], second["top_p"], second["max_tokens"]) == (0.3, 0.9, 50)
    assert second["stream"] is True and second["stream_options"] == {"include_usage": True}
    assert "authorization" not in canned.headers[1]  # no key set: none sent


def test_export_then_import_round_trips(chat: Watched, base_url: str, tmp_path: Path) -> None:
    page = chat.page
    CannedChat(page, ["Four.", "```js\nconsole.log(1)\n```", "Yes."])
    open_chat(page, base_url)
    send(page, "2+2?")
    send(page, "Print one in JS")
    page.click("#new-chat")
    send(page, "Ok?")
    before = saved(page)["conversations"]

    with page.expect_download() as download_info:
        page.click("#export")
    exported = tmp_path / "export.json"
    download_info.value.save_as(exported)
    data = json.loads(exported.read_text())
    assert data["format"] == "gemma-serve.conversations" and data["version"] == 1
    assert data["conversations"] == before

    page.evaluate("localStorage.clear()")
    page.reload()
    open_chat(page, base_url)
    assert titles(page) == ["New chat"]
    page.set_input_files("#import-file", str(exported))
    expect(page.locator(".conversation")).to_have_count(3)
    after = saved(page)["conversations"]
    by_id = {c["id"]: c for c in after}
    assert [by_id[c["id"]] for c in before] == before

    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something else"}')
    page.set_input_files("#import-file", str(bad))
    page.wait_for_selector("#notice:not([hidden])")
    assert "not a gemma-serve export" in page.inner_text("#notice")
    assert len(saved(page)["conversations"]) == 3  # nothing lost


# Installed before the page's scripts: localStorage.setItem throws as a full quota does, while
# window.storageFull is true.
FULL_STORAGE = """
const realSetItem = Storage.prototype.setItem;
Storage.prototype.setItem = function (key, value) {
    if (window.storageFull) throw new DOMException('quota', 'QuotaExceededError');
    return realSetItem.call(this, key, value);
};
"""


def test_a_full_storage_quota_is_reported_and_nothing_on_the_page_is_lost(
    chat: Watched, base_url: str
) -> None:
    page = chat.page
    page.add_init_script(FULL_STORAGE)
    CannedChat(page, ["First answer.", "Second answer.", "Third answer."])
    open_chat(page, base_url)
    send(page, "first")
    page.evaluate("window.storageFull = true")
    send(page, "second")
    assert page.is_visible("#notice")
    assert "storage is full" in page.inner_text("#notice")
    assert page.locator(".message.assistant .body").all_inner_texts() == [
        "First answer.",
        "Second answer.",
    ]
    assert len(saved(page)["conversations"][0]["messages"]) == 2  # what was saved stays
    page.evaluate("window.storageFull = false")
    send(page, "third")
    assert not page.is_visible("#notice")
    assert len(saved(page)["conversations"][0]["messages"]) == 6


def _with_vision(page: Any) -> None:
    """Answer the page's model list request as a server with a vision model would."""

    def card(route: Any) -> None:
        response = route.fetch()
        body = response.json()
        body["data"][0]["capabilities"] = {"vision": True}
        route.fulfill(response=response, json=body)

    page.route("**/v1/models", card)


def _noise_png(page: Any, side: int) -> bytes:
    """A PNG of random pixels (does not compress: large as JPEG too)."""
    data_url = page.evaluate(
        """(side) => {
        const canvas = document.createElement('canvas');
        canvas.width = canvas.height = side;
        const context = canvas.getContext('2d');
        const pixels = context.createImageData(side, side);
        crypto.getRandomValues(pixels.data.subarray(0, 65536));
        for (let i = 65536; i < pixels.data.length; i += 65536) {
            crypto.getRandomValues(pixels.data.subarray(i, i + 65536));
        }
        for (let i = 3; i < pixels.data.length; i += 4) pixels.data[i] = 255;
        context.putImageData(pixels, 0, 0);
        return canvas.toDataURL('image/png');
    }""",
        side,
    )
    return base64.b64decode(data_url.split(",", 1)[1])


def test_pictures_are_hidden_for_a_text_model(chat: Watched, base_url: str) -> None:
    page = chat.page
    open_chat(page, base_url)
    assert not page.is_visible("#attach")


def test_pictures_for_a_vision_model_are_sent_and_capped_in_saved_history(
    chat: Watched, base_url: str
) -> None:
    page = chat.page
    _with_vision(page)
    canned = CannedChat(page, ["A small picture.", "A big noisy picture."])
    open_chat(page, base_url)
    assert page.is_visible("#attach")

    small = {"name": "small.png", "mimeType": "image/png", "buffer": _noise_png(page, 32)}
    page.set_input_files("#attach-file", [small])
    page.wait_for_selector(".attachment img")
    send(page, "What is this?")
    parts = canned.requests[0]["messages"][-1]["content"]
    assert parts[0] == {"type": "text", "text": "What is this?"}
    assert parts[1]["type"] == "image_url"
    assert parts[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert page.locator(".message.user img.attached").count() == 1
    assert page.locator(".attachment").count() == 0

    big = {"name": "big.png", "mimeType": "image/png", "buffer": _noise_png(page, 1600)}
    page.set_input_files("#attach-file", [big])
    page.wait_for_selector(".attachment img")
    send(page, "And this?")
    sent = canned.requests[1]["messages"][-1]["content"][1]["image_url"]["url"]
    assert len(sent) > 256 * 1024, "the test picture should be over the cap"
    stored = saved(page)["conversations"][0]["messages"]
    assert stored[0]["content"][1] == parts[1]  # the small one is kept
    assert stored[2]["content"][1]["type"] == "text"  # the big one is not
    assert "not saved" in stored[2]["content"][1]["text"]


def test_a_failed_reply_is_shown_and_left_out_of_the_next_turn(
    chat: Watched, base_url: str
) -> None:
    page = chat.page
    error_event = {"error": {"message": "The engine stopped.", "type": "server_error"}}
    cut = canned_stream("Half a rep").removesuffix("data: [DONE]\n\n")
    canned = CannedChat(
        page,
        [f"data: {json.dumps(error_event)}\n\ndata: [DONE]\n\n", cut, "Fine now."],
    )
    open_chat(page, base_url)
    failed = send(page, "first")
    assert failed.locator(".error").inner_text() == "The engine stopped."
    cut_short = send(page, "second")
    assert cut_short.locator(".error").inner_text() == (
        "The connection closed before the reply ended."
    )
    assert cut_short.locator(".body").inner_text() == "Half a rep"
    send(page, "third")
    assert canned.requests[2]["messages"] == [
        {"role": "user", "content": "first"},
        {"role": "user", "content": "second"},
        {"role": "user", "content": "third"},
    ]
