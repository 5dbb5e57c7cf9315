"""The load generator: OpenAI streaming chat completions over HTTP, timed per stream.

Every system under test gets the same request body (see `chat_body`), so a difference in the
figures is the server's, not the client's. A round starts `clients` streams at the same instant
(one `asyncio.gather`, one shared `httpx.AsyncClient` with a connection per stream) and records,
per stream, when it was sent, when the first and last non-empty content deltas arrived, the text,
and the server's own usage figure when it sends one.

Token counts are *not* taken from the servers: llama-cpp-python's server ignores
`stream_options.include_usage`, and a streamed chunk may hold more than one token (servers hold
back text that could be the start of a stop string or an incomplete UTF-8 character). Instead the
caller counts the tokens of each streamed text with the model's own tokenizer, the same way for
every system (see `bench.py`); usage, where sent, is kept beside it as a check.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

# A fixed, neutral prompt: the bundled model is a base model, so any text will do; what matters is
# that every system gets the same prompt tokens and, at temperature 0, produces the same text.
DEFAULT_PROMPT = (
    "Write a short story about a lighthouse keeper who finds a message in a bottle. "
    "Describe the sea, the weather and the keeper's thoughts."
)


def numbered_prompt(prompt: str, request_number: int) -> str:
    """The prompt behind a request number ("Story 007: ..."), so no two requests share a prefix.

    Servers that reuse a cached prompt prefix (the peer does: llama-cpp-python keeps the last
    prompt's KV and evaluates only what differs) would otherwise answer a repeated prompt without
    any prefill, and time-to-first-token would measure a cache hit. The number is the request's
    position in a system's sequence of requests, which is the same for every system, so request k
    gets the same prompt everywhere; three digits keep the token count fixed.
    """
    return f"Story {request_number % 1000:03d}: {prompt}"


# How a client treats `503` + `Retry-After` (back-pressure): the OpenAI SDK retries twice.
MAX_RETRIES = 2
MAX_RETRY_WAIT_S = 10.0


@dataclass
class StreamResult:
    """One streamed completion, timed with `time.perf_counter()` in this process."""

    sent_at: float
    first_token_at: float | None = None
    last_token_at: float | None = None
    done_at: float | None = None
    text: str = ""
    content_chunks: int = 0
    usage_completion_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None
    tokens: int = 0  # filled in by the caller with the tokenizer's count of `text`
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ttft(self) -> float | None:
        if self.first_token_at is None:
            return None
        return self.first_token_at - self.sent_at

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens after the first over the time after the first (the steady decode rate)."""
        if self.first_token_at is None or self.last_token_at is None or self.tokens < 2:
            return None
        span = self.last_token_at - self.first_token_at
        return (self.tokens - 1) / span if span > 0 else None


@dataclass
class RoundResult:
    """`clients` streams started together; wall time from the first send to the last byte."""

    clients: int
    streams: list[StreamResult]

    @property
    def wall_s(self) -> float:
        start = min(s.sent_at for s in self.streams)
        end = max(s.done_at or s.sent_at for s in self.streams)
        return end - start

    @property
    def total_tokens(self) -> int:
        return sum(s.tokens for s in self.streams)

    @property
    def aggregate_tokens_per_s(self) -> float:
        return self.total_tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def errors(self) -> list[str]:
        return [s.error for s in self.streams if s.error]


def chat_body(model: str, prompt: str, max_tokens: int) -> dict[str, Any]:
    """The one request every HTTP system gets: greedy, fixed length, streamed, usage asked for."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


async def stream_once(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> StreamResult:
    """Send one streaming chat completion and time it; errors are recorded, never raised.

    A `503` with `Retry-After` (a server shedding load) is retried after the delay it asks for,
    up to `MAX_RETRIES` times, as the official OpenAI client does; the stream's timings still
    start at the first attempt, so the wait counts in its time to first token.
    """
    result = StreamResult(sent_at=time.perf_counter())
    try:
        for attempt in range(MAX_RETRIES + 1):
            async with client.stream("POST", url, json=body) as response:
                retry_after = response.headers.get("retry-after")
                if response.status_code == 503 and retry_after and attempt < MAX_RETRIES:
                    await response.aread()
                    result.extra["retries"] = attempt + 1
                    await asyncio.sleep(min(float(retry_after), MAX_RETRY_WAIT_S))
                    continue
                if response.status_code != 200:
                    detail = (await response.aread()).decode(errors="replace")[:300]
                    result.error = f"HTTP {response.status_code}: {detail}"
                    return result
                await _read_events(response, result)
                return result
    except (httpx.HTTPError, json.JSONDecodeError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        result.done_at = time.perf_counter()
    return result


async def _read_events(response: httpx.Response, result: StreamResult) -> None:
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue  # blank separators, comments and keep-alive pings
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            return
        _absorb_chunk(result, json.loads(data), time.perf_counter())
    result.error = "stream ended without data: [DONE]"


def _absorb_chunk(result: StreamResult, chunk: dict[str, Any], now: float) -> None:
    usage = chunk.get("usage")
    if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
        result.usage_completion_tokens = int(usage["completion_tokens"])
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        if cached is not None:
            result.extra["cached_tokens"] = int(cached)
    timings = chunk.get("timings")  # llama-server's own figures: prompt tokens from its cache
    if isinstance(timings, dict) and timings.get("cache_n") is not None:
        result.extra["cached_tokens"] = int(timings["cache_n"])
    for choice in chunk.get("choices") or []:
        content = (choice.get("delta") or {}).get("content")
        if content:
            if result.first_token_at is None:
                result.first_token_at = now
            result.last_token_at = now
            result.text += content
            result.content_chunks += 1
        if choice.get("finish_reason"):
            result.finish_reason = choice["finish_reason"]


async def run_round(
    base_url: str, bodies: list[dict[str, Any]], timeout_s: float = 900
) -> RoundResult:
    """Start one stream per body, all at once, and wait for all of them."""
    clients = len(bodies)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        url = f"{base_url}/v1/chat/completions"
        streams = await asyncio.gather(*(stream_once(client, url, body) for body in bodies))
    return RoundResult(clients=clients, streams=list(streams))
