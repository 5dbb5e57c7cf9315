"""Remote image URLs, fetched only when the operator turns them on (`--image-urls`).

Off by default: a server that fetches whatever URL a request names lets anyone who can reach it
make requests from inside the network it runs in (SSRF: a router's admin page, a NAS, a cloud
metadata address). When on:

1. the whole request is checked first (the model takes images, every image is in a user message,
   no more than the request may have): nothing is fetched for a request that would be refused;
2. each host name is resolved once, and every address it resolves to must be public (not
   loopback, link-local, private, unspecified, multicast or reserved) unless
   `--image-url-allowed-networks` names it; the connection goes to the address that was checked
   (the name is sent as Host and as TLS server name), so a DNS answer that changes between the
   check and the connection (rebinding) changes nothing;
3. redirects are not followed, at most `--image-url-max-size` bytes are read, each fetch has
   `--image-url-timeout` seconds in all (not per read: a server trickling a byte at a time is
   cut) and all of a request's fetches `--image-url-request-timeout`.

The bytes go to the decoder as they are (`ImageCollector(fetched=...)`). A failure is a 400
naming the part.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import httpx

from server.api.chat_protocol import ChatCompletionRequest, ImagePart
from server.api.error_shape import APIError
from server.api.images import ImageLimits, check_place, image_url_of, is_remote
from server.api.responses_protocol import ResponseRequest
from server.settings import Settings

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# host, port -> the addresses it resolves to (tests pass their own)
Resolver = Callable[[str, int], Awaitable[list[str]]]


@dataclass(frozen=True)
class RemoteImagePolicy:
    enabled: bool = False
    max_bytes: int = 20 << 20
    timeout: float = 10.0  # one fetch, in all
    request_timeout: float = 30.0  # every fetch of one request, in all
    allowed_networks: tuple[IPNetwork, ...] = ()  # fetched even though not public


def policy_of(settings: Settings) -> RemoteImagePolicy:
    return RemoteImagePolicy(
        enabled=settings.image_urls,
        max_bytes=settings.image_url_max_size,
        timeout=settings.image_url_timeout,
        request_timeout=settings.image_url_request_timeout,
        allowed_networks=parse_networks(settings.image_url_allowed_networks),
    )


def parse_networks(texts: Sequence[str]) -> tuple[IPNetwork, ...]:
    """'127.0.0.1', '192.168.1.0/24', '::1' -> networks (a bare address is a network of one)."""
    return tuple(ipaddress.ip_network(text, strict=False) for text in texts)


def forbidden(address: IPAddress, allowed: Sequence[IPNetwork] = ()) -> bool:
    """Whether a fetch may not go to `address`: anything but a public unicast address, unless
    an allowed network holds it."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is loopback
    if any(address in network for network in allowed):
        return False
    return (
        address.is_loopback
        or address.is_link_local
        or address.is_private
        or address.is_unspecified
        or address.is_multicast
        or address.is_reserved
        or not address.is_global
    )


def _refuse(param: str, why: str) -> APIError:
    return APIError(
        400, f"The image URL could not be used: {why}.", param=param, code="invalid_image_url"
    )


@dataclass(frozen=True)
class _ImagePart:
    role: str | None
    url: str
    param: str


def _chat_parts(body: ChatCompletionRequest) -> list[_ImagePart]:
    parts = []
    for index, message in enumerate(body.messages):
        content = message.content if isinstance(message.content, list) else []
        for part_index, part in enumerate(content):
            if isinstance(part, ImagePart):
                param = f"messages[{index}].content[{part_index}]"
                parts.append(_ImagePart(message.role, image_url_of(part.image_url, param), param))
    return parts


def _responses_parts(body: ResponseRequest) -> list[_ImagePart]:
    parts = []
    for index, item in enumerate(body.input if isinstance(body.input, list) else []):
        for part_index, part in enumerate(item.content if isinstance(item.content, list) else []):
            if part.type == "input_image" and isinstance(part.image_url, str):
                param = f"input[{index}].content[{part_index}]"
                parts.append(_ImagePart(item.role, part.image_url, param))
    return parts


async def fetch_remote_images(
    body: ChatCompletionRequest | ResponseRequest,
    policy: RemoteImagePolicy,
    limits: ImageLimits,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    resolve: Resolver | None = None,
) -> dict[str, bytes]:
    """The bytes of the request's remote images, by the part's param, if the policy allows
    fetching (otherwise none: `images.py` refuses the URLs by name). `transport` and `resolve`:
    tests only."""
    if not policy.enabled:
        return {}
    parts = _chat_parts(body) if isinstance(body, ChatCompletionRequest) else _responses_parts(body)
    remote = [part for part in parts if is_remote(part.url)]
    if not remote:
        return {}
    for index, part in enumerate(parts):  # everything refusable without a byte, first
        check_place(part.role, index, part.param, limits)
    request_deadline = time.monotonic() + policy.request_timeout
    fetched: dict[str, bytes] = {}
    # NOTE: trust_env=False: no proxy from the environment, the connection goes to the address
    # that was checked.
    async with httpx.AsyncClient(
        timeout=policy.timeout, follow_redirects=False, transport=transport, trust_env=False
    ) as client:
        for part in remote:
            left = request_deadline - time.monotonic()
            whole_request = left < policy.timeout
            try:
                fetched[part.param] = await asyncio.wait_for(
                    _fetch(client, part.url, part.param, policy, resolve or _resolve),
                    max(left, 0.0) if whole_request else policy.timeout,
                )
            except asyncio.TimeoutError as exc:
                why = (
                    f"the request's images were not all fetched within {policy.request_timeout:g} s"
                    if whole_request
                    else f"it was not fetched within {policy.timeout:g} s"
                )
                raise _refuse(part.param, why) from exc
    return fetched


async def _resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def _fetch(
    client: httpx.AsyncClient, url: str, param: str, policy: RemoteImagePolicy, resolve: Resolver
) -> bytes:
    try:
        target = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise _refuse(param, "it is not a valid URL") from exc
    host, port = target.host, target.port or (443 if target.scheme == "https" else 80)
    if not host:
        raise _refuse(param, "it names no host")
    try:
        found = await resolve(host, port)
        addresses = [ipaddress.ip_address(text.partition("%")[0]) for text in found]
    except (OSError, ValueError) as exc:
        raise _refuse(param, f"the host {host} could not be resolved") from exc
    if not addresses:
        raise _refuse(param, f"the host {host} could not be resolved")
    for address in addresses:
        if forbidden(address, policy.allowed_networks):
            raise _refuse(
                param,
                f"{host} is at {address}, a loopback, private or otherwise non-public address, "
                "which this server does not fetch from (--image-url-allowed-networks allows it)",
            )
    # NOTE: connect to the address checked above; the name goes in the Host header and as the
    # TLS server name (certificate checked against it).
    pinned = target.copy_with(host=str(addresses[0]))
    headers = {"Host": target.netloc.decode("ascii")}
    extensions = {"sni_hostname": host} if target.scheme == "https" else {}
    try:
        request = client.build_request("GET", pinned, headers=headers, extensions=extensions)
        response = await client.send(request, stream=True)
        try:
            if response.status_code != 200:
                moved = " (redirects are not followed)" if response.is_redirect else ""
                raise _refuse(param, f"the server answered {response.status_code}{moved}")
            data = bytearray()
            async for piece in response.aiter_bytes():
                data += piece
                if len(data) > policy.max_bytes:
                    raise _refuse(param, f"it is larger than {policy.max_bytes} bytes")
        finally:
            await response.aclose()
    except httpx.HTTPError as exc:
        raise _refuse(param, type(exc).__name__) from exc
    return bytes(data)
