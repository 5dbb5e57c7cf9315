"""Remote image URLs (server/api/remote_images.py): untouched unless turned on; when on, the whole
request is checked before any fetch, only public addresses are fetched from (unless allowed),
the connection goes to the address checked, each fetch and the request have one deadline in all,
no redirects are followed, the size is capped, and the bytes reach the decoder as they are;
failures are 400s naming the part."""

from __future__ import annotations

import asyncio
import ipaddress
from typing import Any

import httpx
import pytest

from server.api.chat_protocol import ChatCompletionRequest
from server.api.errors import APIError
from server.api.images import ImageCollector, ImageLimits
from server.api.remote_images import (
    RemoteImagePolicy,
    fetch_remote_images,
    forbidden,
    parse_networks,
)
from server.api.responses_protocol import ResponseRequest
from tests.images import encode, picture, picture_url

PNG = encode(picture(1), "PNG")
PUBLIC = "93.184.215.14"  # a public address (the resolver below answers it for every name)
PARAM = "messages[0].content[1]"


class Recorder:
    """A MockTransport handler that records what it was asked."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path == "/cat.png":
            return httpx.Response(200, content=PNG)
        if request.url.path == "/moved.png":
            return httpx.Response(302, headers={"location": "http://127.0.0.1/cat.png"})
        return httpx.Response(404)


def resolver(*addresses: str) -> Any:
    async def resolve(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolve


ON = RemoteImagePolicy(enabled=True, max_bytes=1 << 20, timeout=5)


def chat(*urls: str, role: str = "user") -> ChatCompletionRequest:
    parts: list[dict[str, Any]] = [{"type": "text", "text": "?"}]
    parts += [{"type": "image_url", "image_url": {"url": url}} for url in urls]
    return ChatCompletionRequest.model_validate(
        {"model": "m", "messages": [{"role": role, "content": parts}]}
    )


def fetch(
    body: ChatCompletionRequest | ResponseRequest,
    policy: RemoteImagePolicy = ON,
    *addresses: str,
    limits: ImageLimits | None = None,
) -> tuple[dict[str, bytes], Recorder]:
    recorder = Recorder()
    fetched = asyncio.run(
        fetch_remote_images(
            body,
            policy,
            limits or ImageLimits(),
            transport=httpx.MockTransport(recorder),
            resolve=resolver(*(addresses or (PUBLIC,))),
        )
    )
    return fetched, recorder


def refusal(
    body: ChatCompletionRequest, *addresses: str, **options: Any
) -> tuple[APIError, Recorder]:
    recorder = Recorder()
    policy = options.pop("policy", ON)
    with pytest.raises(APIError) as caught:
        asyncio.run(
            fetch_remote_images(
                body,
                policy,
                options.pop("limits", ImageLimits()),
                transport=httpx.MockTransport(recorder),
                resolve=resolver(*(addresses or (PUBLIC,))),
            )
        )
    assert caught.value.status == 400
    return caught.value, recorder


def test_off_by_default_nothing_is_fetched_and_the_url_is_refused_later() -> None:
    fetched, recorder = fetch(chat("http://nas.local/cat.png"), RemoteImagePolicy())
    assert fetched == {} and recorder.requests == []
    with pytest.raises(APIError) as caught:
        ImageCollector().add_image_url({"url": "http://nas.local/cat.png"}, PARAM, "user")
    assert caught.value.code == "unsupported_image_url"


def test_the_bytes_reach_the_decoder_as_they_are() -> None:
    fetched, _ = fetch(chat("http://nas.example/cat.png"))
    assert fetched == {PARAM: PNG}
    images = ImageCollector(fetched=fetched)
    images.add_image_url({"url": "http://nas.example/cat.png"}, PARAM, "user")
    assert (images.images[0].width, images.images[0].height) == (96, 64)


def test_the_connection_goes_to_the_address_checked_with_the_name_as_host() -> None:
    _, recorder = fetch(chat("https://images.example:8443/cat.png"))
    (sent,) = recorder.requests
    assert sent.url.host == PUBLIC and sent.url.port == 8443
    assert sent.headers["host"] == "images.example:8443"
    assert sent.extensions["sni_hostname"] == "images.example"


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "100.64.0.1",  # carrier-grade NAT
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::",
        "ff02::1",
    ],
)
def test_non_public_destinations_are_refused_after_resolution(address: str) -> None:
    assert forbidden(ipaddress.ip_address(address))
    error, recorder = refusal(chat("http://innocent.example/cat.png"), address)
    assert recorder.requests == []
    assert error.param == PARAM and error.code == "invalid_image_url"
    assert "--image-url-allowed-networks" in error.message


def test_one_bad_address_among_the_answers_is_enough_to_refuse() -> None:
    _, recorder = refusal(chat("http://rebind.example/cat.png"), PUBLIC, "127.0.0.1")
    assert recorder.requests == []


def test_an_allowed_network_is_fetched_from() -> None:
    assert not forbidden(ipaddress.ip_address(PUBLIC))
    policy = RemoteImagePolicy(
        enabled=True, allowed_networks=parse_networks(["192.168.1.0/24", "::1"])
    )
    fetched, _ = fetch(chat("http://nas.local/cat.png"), policy, "192.168.1.20")
    assert fetched == {PARAM: PNG}
    refusal(chat("http://nas.local/cat.png"), "192.168.2.20", policy=policy)


def test_the_whole_request_is_checked_before_any_fetch() -> None:
    nine = chat(*[f"http://img.example/{i}.png" for i in range(8)], picture_url(1))
    error, recorder = refusal(nine)
    assert (error.code, error.param) == ("too_many_images", "messages[0].content[9]")
    assert recorder.requests == []
    error, recorder = refusal(chat("http://img.example/cat.png", role="system"))
    assert error.param == PARAM and recorder.requests == []
    error, recorder = refusal(
        chat("http://img.example/cat.png"), limits=ImageLimits(accepted=False)
    )
    assert error.code == "image_input_not_supported" and recorder.requests == []


@pytest.mark.parametrize(
    ("url", "policy", "why"),
    [
        ("http://img.example/missing.png", ON, "404"),
        ("http://img.example/moved.png", ON, "redirects are not followed"),
        ("http://img.example/cat.png", RemoteImagePolicy(True, max_bytes=100), "larger than 100"),
    ],
)
def test_failures_name_the_part(url: str, policy: RemoteImagePolicy, why: str) -> None:
    error, recorder = refusal(chat(url), policy=policy)
    assert error.param == PARAM
    assert why in error.message
    assert len(recorder.requests) == 1


def test_responses_input_image_urls_are_fetched_too() -> None:
    request = ResponseRequest.model_validate(
        {
            "model": "m",
            "input": [
                {
                    "role": "user",
                    "content": [{"type": "input_image", "image_url": "https://x.example/cat.png"}],
                }
            ],
        }
    )
    fetched, _ = fetch(request)
    assert fetched == {"input[0].content[0]": PNG}


async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """An HTTP server that sends its body a byte every 0.2 s (every read is quick, the whole
    never ends in time)."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
    try:
        for _ in range(1000):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.2)
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


@pytest.mark.parametrize(
    ("policy", "why"),
    [
        (RemoteImagePolicy(True, timeout=1.0, allowed_networks=parse_networks(["127.0.0.1"])),
         "not fetched within 1 s"),
        (RemoteImagePolicy(True, timeout=5.0, request_timeout=1.0,
                           allowed_networks=parse_networks(["127.0.0.1"])),
         "request's images were not all fetched within 1 s"),
    ],
    ids=["one-fetch", "whole-request"],
)  # fmt: skip
def test_a_trickling_server_is_cut_at_the_deadline(policy: RemoteImagePolicy, why: str) -> None:
    async def run() -> APIError:
        server = await asyncio.start_server(trickle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(APIError) as caught:
                await fetch_remote_images(
                    chat(f"http://127.0.0.1:{port}/slow.png"), policy, ImageLimits()
                )
            return caught.value
        finally:
            server.close()

    error = asyncio.run(run())
    assert error.param == PARAM
    assert why in error.message
