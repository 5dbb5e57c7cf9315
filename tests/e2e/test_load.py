"""A bounded load test on loopback: 8 concurrent streaming clients for about 15 seconds against
the shared server. Every response must be a 200 (never a 5xx), and every stream must end with a
finish_reason and `[DONE]`, with no error event. Kept short: the suite's time budget is tight."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter

import httpx

from tests.conftest import MODEL_ID, RunningServer

CLIENTS = 8
DURATION = 15.0  # seconds during which clients start new requests


async def one_stream(client: httpx.AsyncClient, index: int) -> tuple[int, str]:
    """(status, verdict): 'ok' for a complete stream, else what was wrong."""
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": f"Client {index}: name a colour."}],
        "max_tokens": 2,
        "stream": True,
    }
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            await response.aread()
            return response.status_code, response.text
        events = [line[6:] async for line in response.aiter_lines() if line.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        return 200, f"no [DONE]: {events[-2:]}"
    payloads = [json.loads(event) for event in events[:-1]]
    if any("error" in payload for payload in payloads):
        return 200, f"error event: {payloads[-1]}"
    if payloads[-1]["choices"][0]["finish_reason"] not in ("stop", "length"):
        return 200, f"no finish_reason: {payloads[-1]}"
    return 200, "ok"


async def client_loop(base_url: str, index: int, deadline: float) -> list[tuple[int, str]]:
    results = []
    async with httpx.AsyncClient(base_url=base_url, timeout=180) as client:
        while time.monotonic() < deadline:
            results.append(await one_stream(client, index))
    return results


def test_eight_streaming_clients_get_no_5xx_and_complete_streams(server: RunningServer) -> None:
    async def run() -> list[list[tuple[int, str]]]:
        deadline = time.monotonic() + DURATION
        return await asyncio.gather(
            *(client_loop(server.base_url, index, deadline) for index in range(CLIENTS))
        )

    per_client = asyncio.run(run())
    results = [result for client in per_client for result in client]
    assert all(per_client), "every client completed at least one request"
    statuses = Counter(status for status, _ in results)
    assert not [status for status in statuses if status >= 500], statuses
    problems = [verdict for _, verdict in results if verdict != "ok"]
    assert not problems, problems[:3]
    assert statuses == {200: len(results)}
