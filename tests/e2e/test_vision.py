"""Images over the OpenAI API, end to end: a real server with the bundled model and the tiny random
projector (`--mmproj`), the official SDK's documented image call, Responses `input_image`, images
in earlier turns, the 400s that name the part, and a client leaving during an image step.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import (
    MODEL_ID,
    NEVER_END,
    RunningServer,
    serving,
    start_server,
    stop_server,
)
from tests.images import data_url, encode, picture_url
from tests.projector import IMAGE_TOKENS, write_tiny_projector


@pytest.fixture(scope="module")
def vision_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    tmp = tmp_path_factory.mktemp("vision")
    projector = write_tiny_projector(tmp / "mmproj-tiny.gguf")
    with serving(tmp, "--ctx", "4096", "--parallel", "2", "--mmproj", str(projector)) as running:
        yield running


@pytest.fixture
def client(vision_server: RunningServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=vision_server.base_url, timeout=120) as http:
        yield http


def image_message(*urls: str, text: str = "What is in this picture?") -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return {"role": "user", "content": parts}


def chat(client: httpx.Client, messages: list[dict[str, Any]], **extra: Any) -> httpx.Response:
    # A seed: a repeated request then decodes its prompt's last token alone, so the same picture
    # gives the same text cold or from the prompt cache (llama.cpp's numerics follow the batch).
    body = {
        "model": MODEL_ID,
        "messages": messages,
        "max_tokens": 10,
        "temperature": 0,
        "seed": 1,
        **extra,
    }
    return client.post("/v1/chat/completions", json=body)


def test_the_model_card_says_it_takes_images(client: httpx.Client) -> None:
    card = client.get(f"/v1/models/{MODEL_ID}").json()
    assert card["capabilities"] == {"vision": True}


def test_the_sdk_image_call(vision_server: RunningServer) -> None:
    from openai import OpenAI

    sdk = OpenAI(base_url=f"{vision_server.base_url}/v1", api_key="x", max_retries=0)

    def describe(url: str) -> tuple[str, int]:
        answer = sdk.chat.completions.create(
            model=MODEL_ID,
            temperature=0,
            seed=1,
            max_tokens=10,
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in this picture?"},
                        {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
                    ],
                }
            ],
        )
        assert answer.usage is not None
        return answer.choices[0].message.content or "", answer.usage.prompt_tokens

    first, prompt_tokens = describe(picture_url(1, "JPEG"))
    assert describe(picture_url(1, "JPEG")) == (first, prompt_tokens)
    assert describe(picture_url(2, "JPEG"))[0] != first
    assert prompt_tokens > IMAGE_TOKENS


def test_every_format_is_answered(client: httpx.Client) -> None:
    for fmt in ("PNG", "WEBP", "GIF"):
        answer = chat(client, [image_message(picture_url(3, fmt))])
        assert answer.status_code == 200, answer.text


def test_responses_input_image(client: httpx.Client) -> None:
    def respond(url: str) -> dict[str, Any]:
        body = {
            "model": MODEL_ID,
            "temperature": 0,
            "seed": 1,
            "max_output_tokens": 10,
            "input": [
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": "What is in this picture?"},
                        {"type": "input_image", "image_url": url, "detail": "auto"},
                    ],
                }
            ],
        }
        answer = client.post("/v1/responses", json=body)
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def text(response: dict[str, Any]) -> str:
        return "".join(part["text"] for part in response["output"][0]["content"])

    first = respond(picture_url(4))
    assert first["usage"]["input_tokens"] > IMAGE_TOKENS
    assert text(respond(picture_url(4))) == text(first)


def test_an_image_in_an_earlier_turn(client: httpx.Client) -> None:
    first = chat(client, [image_message(picture_url(5))]).json()
    history = [
        image_message(picture_url(5)),
        {"role": "assistant", "content": first["choices"][0]["message"]["content"]},
        {"role": "user", "content": "Say it again."},
    ]
    answer = chat(client, history)
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"]


BOMB = data_url(encode(Image.new("1", (10_000, 10_000)), "PNG"))


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("data:image/png;base64,not*base64", "invalid_image"),
        (data_url(b"GIF89a but not really"), "invalid_image"),
        (BOMB, "image_too_large"),
        ("http://192.168.1.1/router.png", "unsupported_image_url"),
    ],
    ids=["not-base64", "not-an-image", "too-many-pixels", "remote-url"],
)
def test_a_bad_image_is_a_400_naming_the_part(client: httpx.Client, url: str, code: str) -> None:
    answer = chat(client, [image_message(url)])
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "messages[0].content[1]"
    assert error["code"] == code


def test_too_many_images(client: httpx.Client) -> None:
    answer = chat(client, [image_message(*[picture_url(seed) for seed in range(9)])])
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "messages[0].content[9]"


def test_an_image_part_on_completions_is_a_400(client: httpx.Client) -> None:
    body = {
        "model": MODEL_ID,
        "prompt": [{"type": "image_url", "image_url": {"url": picture_url(1)}}],
    }
    answer = client.post("/v1/completions", json=body)
    assert answer.status_code == 400
    assert answer.json()["error"]["param"].startswith("prompt")


def test_a_model_without_projector_says_so(http: httpx.Client) -> None:
    # (its 400 for an image: tests/e2e/test_errors.py)
    assert http.get(f"/v1/models/{MODEL_ID}").json()["capabilities"] == {"vision": False}


def test_leaving_during_an_image_step_frees_the_slot(
    client: httpx.Client, vision_server: RunningServer
) -> None:
    urls = [picture_url(seed) for seed in range(40, 48)]
    body = {
        "model": MODEL_ID,
        "stream": True,
        "max_tokens": 2000,
        "logit_bias": NEVER_END,  # it cannot end before 2000 tokens unless cancelled
        "messages": [image_message(*urls)],
    }
    agent = {"user-agent": "leaves-during-images"}
    with (
        httpx.Client(base_url=vision_server.base_url, timeout=60) as other,
        other.stream("POST", "/v1/chat/completions", json=body, headers=agent) as response,
    ):
        assert response.status_code == 200
        lines = response.iter_lines()
        assert next(lines).startswith("data:")  # the role chunk: the job is being submitted
        time.sleep(0.3)  # the engine is in the eight images' steps; then the client leaves
    deadline = time.monotonic() + 30  # freed after the image step under way
    while client.get("/health").json()["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.get("/health").json()["active"] == 0
    assert chat(client, [image_message(picture_url(1))]).status_code == 200
    assert vision_server.completion_tokens('agent="leaves-during-images"') < 2000


def test_a_file_that_is_not_a_projector_stops_the_server(tmp_path: Path) -> None:
    """It is refused before llama.cpp parses it, with one line."""
    bogus = tmp_path / "not-a-projector.gguf"
    bogus.write_bytes(b"GGUF" + b"\0" * 64)
    running = start_server(tmp_path, "--ctx", "1024", "--mmproj", str(bogus))
    try:
        running.process.wait(timeout=120)
        assert running.process.returncode != 0
        assert "projector" in running.log()
    finally:
        stop_server(running)
