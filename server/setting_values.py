"""How a setting's text becomes its value: memory sizes, durations, comma lists, networks and
CUDA architectures, written the same way in flags and `GEMMA_SERVE_*` variables. Each parser's
ValueError names what it could not read; pydantic puts it in the one-line start-up error."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator
from pydantic_settings import NoDecode

from server.capability import parse_architectures

ChatTemplateChoice = Literal["pinned", "gguf"]
LogLevel = Literal["debug", "info", "warning", "error"]
KvCacheType = Literal["f16", "q8_0"]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KIB|MB|MIB|GB|GIB|TB|TIB)?\s*$", re.IGNORECASE)
_UNITS = {
    "B": 1,
    "KB": 10**3,
    "KIB": 1 << 10,
    "MB": 10**6,
    "MIB": 1 << 20,
    "GB": 10**9,
    "GIB": 1 << 30,
    "TB": 10**12,
    "TIB": 1 << 40,
}


def parse_size(text: str | int) -> int:
    """'24GiB' -> bytes. A bare number is GiB, as people say "a 24 GB card"."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a memory size: {text!r} (try 24GiB or 8000MiB)")
    number, unit = float(match.group(1)), (match.group(2) or "GIB").upper()
    return int(number * _UNITS[unit])


MemorySize = Annotated[int, BeforeValidator(parse_size)]


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | float | None) -> float | None:
    """Seconds from "5m", "30s", "1h", "0" or a number of seconds; None for "forever" (also a
    negative number, as Ollama's keep_alive says it)."""
    if text is None or (isinstance(text, str) and text.strip().lower() in ("forever", "never")):
        return None
    if isinstance(text, int | float):
        return None if text < 0 else float(text)
    if text.strip().startswith("-"):
        return None
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (e.g. 5m, 30s, 1h, 0, forever)")
    return float(match.group(1)) * _SECONDS[(match.group(2) or "s").lower()]


def split_list(value: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """'a, b,,c' -> ('a', 'b', 'c'): lists are comma-separated in flags and variables alike."""
    items = value.split(",") if isinstance(value, str) else value
    return tuple(item.strip() for item in items if item.strip())


# NoDecode: pydantic-settings would otherwise expect JSON in the environment variable.
Duration = Annotated[float | None, BeforeValidator(parse_duration)]
CommaList = Annotated[tuple[str, ...], NoDecode, BeforeValidator(split_list)]


def check_networks(networks: tuple[str, ...]) -> tuple[str, ...]:
    """Each item an IP address or network ('192.168.1.0/24'); a typo fails at start."""
    for network in networks:
        ipaddress.ip_network(network, strict=False)  # ValueError names the bad one
    return networks


NetworkList = Annotated[CommaList, AfterValidator(check_networks)]


def _architectures(value: str | tuple[int, ...] | list[int]) -> tuple[int, ...]:
    if isinstance(value, str):
        return parse_architectures(value)
    return tuple(sorted(int(item) for item in value))


# "61;70;86-real" (CMake's list, as the CUDA image sets it) -> (61, 70, 86).
CudaArchitectures = Annotated[tuple[int, ...], NoDecode, BeforeValidator(_architectures)]
