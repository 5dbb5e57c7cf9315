"""Remote image URLs (server/api/remote_images.py): untouched unless turned on; when on, fetched
without redirects, within a size cap, and put back inline; failures are 400s naming the part."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from server.api.chat_protocol import ChatCompletionRequest, ImagePart
from server.api.errors import APIError
from server.api.images import ImageCollector
from server.api.remote_images import RemoteImagePolicy, inline_remote_images
from server.api.responses_protocol import ResponseRequest
from tests.images import encode, picture

PNG = encode(picture(1), "PNG")


def serve(request: httpx.Request) -> httpx.Response:
    if request.url.path == "/cat.png":
        return httpx.Response(200, content=PNG)
    if request.url.path == "/moved.png":
        return httpx.Response(302, headers={"location": "http://127.0.0.1/cat.png"})
    return httpx.Response(404)


TRANSPORT = httpx.MockTransport(serve)
ON = RemoteImagePolicy(enabled=True, max_bytes=1 << 20, timeout=5)


def chat(url: str) -> ChatCompletionRequest:
    part = {"type": "image_url", "image_url": {"url": url}}
    return ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "?"}, part]}],
        }
    )


def image_url(request: ChatCompletionRequest) -> str:
    content = request.messages[0].content
    assert isinstance(content, list) and isinstance(content[1], ImagePart)
    return str(content[1].image_url["url"])


def test_off_by_default_the_url_stays_and_is_refused_later() -> None:
    request = chat("http://nas.local/cat.png")
    asyncio.run(inline_remote_images(request, RemoteImagePolicy(), TRANSPORT))
    assert image_url(request) == "http://nas.local/cat.png"
    with pytest.raises(APIError) as caught:
        ImageCollector().add_image_url(
            {"url": image_url(request)}, "messages[0].content[1]", "user"
        )
    assert caught.value.code == "unsupported_image_url"


def test_when_on_the_image_is_fetched_and_inlined() -> None:
    request = chat("http://nas.local/cat.png")
    asyncio.run(inline_remote_images(request, ON, TRANSPORT))
    assert image_url(request).startswith("data:")
    image = ImageCollector()
    image.add_image_url({"url": image_url(request)}, "messages[0].content[1]", "user")
    assert (image.images[0].width, image.images[0].height) == (96, 64)


@pytest.mark.parametrize(
    ("url", "policy", "why"),
    [
        ("http://nas.local/missing.png", ON, "404"),
        ("http://nas.local/moved.png", ON, "302"),  # redirects are not followed
        ("http://nas.local/cat.png", RemoteImagePolicy(True, max_bytes=100), "larger than 100"),
    ],
)
def test_failures_name_the_part(url: str, policy: RemoteImagePolicy, why: str) -> None:
    with pytest.raises(APIError) as caught:
        asyncio.run(inline_remote_images(chat(url), policy, TRANSPORT))
    assert caught.value.status == 400
    assert caught.value.param == "messages[0].content[1]"
    assert why in caught.value.message


def test_responses_input_image_urls_are_fetched_too() -> None:
    request = ResponseRequest.model_validate(
        {
            "model": "m",
            "input": [
                {
                    "role": "user",
                    "content": [{"type": "input_image", "image_url": "https://x/cat.png"}],
                }
            ],
        }
    )
    asyncio.run(inline_remote_images(request, ON, TRANSPORT))
    assert isinstance(request.input, list) and isinstance(request.input[0].content, list)
    assert request.input[0].content[0].image_url.startswith("data:")
