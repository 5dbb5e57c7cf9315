"""Remote image URLs, fetched only when the operator turns them on (`--image-urls`).

Off by default: a server that fetches whatever URL a request names lets anyone who can reach it
make requests from inside the network it runs in (SSRF: a router's admin page, a NAS, a cloud
metadata address). When on, each `http(s)` image URL of a request is fetched before the request
is converted (no redirects followed, at most `--image-url-max-size` bytes, within
`--image-url-timeout` seconds) and put back inline as a data: URL, so `images.py` decodes it
like any other. A failure is a 400 naming the part.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import httpx

from server.api.chat_protocol import ChatCompletionRequest, ImagePart
from server.api.errors import APIError
from server.api.responses_protocol import ResponseRequest
from server.settings import Settings


@dataclass(frozen=True)
class RemoteImagePolicy:
    enabled: bool = False
    max_bytes: int = 20 << 20
    timeout: float = 10.0


def policy_of(settings: Settings) -> RemoteImagePolicy:
    return RemoteImagePolicy(
        settings.image_urls, settings.image_url_max_size, settings.image_url_timeout
    )


def _is_remote(url: object) -> bool:
    return isinstance(url, str) and url[:8].lower().startswith(("http://", "https://"))


async def _fetch(client: httpx.AsyncClient, url: str, param: str, policy: RemoteImagePolicy) -> str:
    def refuse(why: str) -> APIError:
        return APIError(
            400, f"The image URL could not be used: {why}.", param=param, code="invalid_image_url"
        )

    try:
        async with client.stream("GET", url) as response:
            if response.status_code != 200:
                raise refuse(f"the server answered {response.status_code}")
            data = bytearray()
            async for piece in response.aiter_bytes():
                data += piece
                if len(data) > policy.max_bytes:
                    raise refuse(f"it is larger than {policy.max_bytes} bytes")
    except httpx.TimeoutException as exc:
        raise refuse(f"no answer within {policy.timeout:g} s") from exc
    except httpx.HTTPError as exc:
        raise refuse(type(exc).__name__) from exc
    return "data:application/octet-stream;base64," + base64.b64encode(bytes(data)).decode()


def _chat_slots(body: ChatCompletionRequest) -> list[tuple[Any, str, str]]:
    """(holder, key, param) of every remote image URL in a chat request."""
    slots: list[tuple[Any, str, str]] = []
    for index, message in enumerate(body.messages):
        if not isinstance(message.content, list):
            continue
        for part_index, part in enumerate(message.content):
            value = part.image_url if isinstance(part, ImagePart) else None
            param = f"messages[{index}].content[{part_index}]"
            if _is_remote(value):
                slots.append((part, "image_url", param))
            elif isinstance(value, dict) and _is_remote(value.get("url")):
                slots.append((value, "url", param))
    return slots


def _responses_slots(body: ResponseRequest) -> list[tuple[Any, str, str]]:
    slots: list[tuple[Any, str, str]] = []
    for index, item in enumerate(body.input if isinstance(body.input, list) else []):
        for part_index, part in enumerate(item.content if isinstance(item.content, list) else []):
            if part.type == "input_image" and _is_remote(part.image_url):
                slots.append((part, "image_url", f"input[{index}].content[{part_index}]"))
    return slots


async def inline_remote_images(
    body: ChatCompletionRequest | ResponseRequest,
    policy: RemoteImagePolicy,
    transport: httpx.AsyncBaseTransport | None = None,
) -> None:
    """Replace the request's remote image URLs by their content, if the policy allows fetching
    (otherwise they stay, and `images.py` refuses them by name). `transport`: tests only."""
    if not policy.enabled:
        return
    slots = _chat_slots(body) if isinstance(body, ChatCompletionRequest) else _responses_slots(body)
    if not slots:
        return
    async with httpx.AsyncClient(
        timeout=policy.timeout, follow_redirects=False, transport=transport
    ) as client:
        for holder, key, param in slots:
            url = holder[key] if isinstance(holder, dict) else getattr(holder, key)
            inline = await _fetch(client, url, param, policy)
            if isinstance(holder, dict):
                holder[key] = inline
            else:
                setattr(holder, key, inline)
