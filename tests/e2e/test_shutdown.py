"""Graceful shutdown of a real server: on SIGTERM a new request gets 503, a short stream already
running finishes normally, a long one is ended after the grace period with an error event and
`[DONE]`, and the process exits 0 (with the default 10-second grace period, before Docker's or
systemd's 30-second kill; the tests bound no elapsed time but the grace period's lower bound)."""

from __future__ import annotations

import json
import re
import signal
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import (
    MODEL_ID,
    NEVER_END,
    RunningServer,
    start_server,
    stop_server,
    wait_healthy,
)

from .test_errors import assert_error

# Long enough for the short stream to finish on a loaded 2-core machine (seconds a token).
GRACE = 12.0


class Stream(threading.Thread):
    """Reads one streamed chat completion in the background, noting when text first came."""

    def __init__(self, server: RunningServer, max_tokens: int) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.max_tokens = max_tokens
        self.events: list[str] = []
        self.first_text = threading.Event()
        self.ended_at: float | None = None
        self.failure: BaseException | None = None

    def run(self) -> None:
        body = {
            "model": MODEL_ID,
            "messages": [{"role": "user", "content": "Tell me a long story."}],
            "max_tokens": self.max_tokens,
            "logit_bias": NEVER_END,
            "stream": True,
        }
        try:
            with httpx.stream(
                "POST", f"{self.server.base_url}/v1/chat/completions", json=body, timeout=120
            ) as response:
                assert response.status_code == 200
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(line[6:])
                        if '"content":"' in line and '"content":""' not in line:
                            self.first_text.set()
        except BaseException as exc:
            self.failure = exc
        finally:
            self.ended_at = time.monotonic()
            self.first_text.set()

    def payloads(self) -> list[dict[str, object]]:
        return [json.loads(event) for event in self.events if event != "[DONE]"]


def test_sigterm_drains_then_ends_streams_and_exits_0(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--ctx", "4096", "--shutdown-grace", str(GRACE))
    try:
        wait_healthy(server)
        # `long` outlasts the grace period at any speed the 270M reaches (3900 tokens: 50 s at
        # 75 tokens/s; 900 were 12 s).
        short, long = Stream(server, max_tokens=4), Stream(server, max_tokens=3900)
        short.start()
        long.start()
        # SIGTERM only once both are generating: a request still on its way would meet the
        # drain's 503 instead. (Counting them on /health raced: `short` could end between polls,
        # and `long` could end before the guard did.) `short` may end before the signal, or
        # after it within the grace period: either way it ends normally.
        for stream in (short, long):
            assert stream.first_text.wait(120) and stream.failure is None, stream.failure
        server.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()

        # While draining, the port still answers: new requests get 503.
        refused = httpx.get(f"{server.base_url}/v1/models", timeout=10)
        assert_error(refused, 503, code="server_shutting_down")
        assert refused.headers["retry-after"]

        short.join(60)
        long.join(GRACE + 60)
        assert short.failure is None and long.failure is None, (short.failure, long.failure)
        # The short stream finished normally within the grace period.
        assert short.events[-1] == "[DONE]"
        assert short.payloads()[-1]["choices"][0]["finish_reason"] == "length"  # type: ignore[index]
        # The long one was ended after the grace period: an error event, then [DONE].
        assert long.events[-1] == "[DONE]"
        last = long.payloads()[-1]
        assert set(last) == {"error"}, last
        assert last["error"]["code"] == "server_shutting_down"  # type: ignore[index]
        assert long.ended_at is not None
        assert long.ended_at - signalled >= GRACE - 1  # not before the grace period ended

        assert server.process.wait(timeout=GRACE + 90) == 0
        log = server.log()
        assert "shutting down: new requests get 503" in log
        assert "still running after" in log
        assert "Traceback" not in log  # the shutdown is expected, not a bug
        # The access log counts the tokens the cut stream really sent (it logged 0).
        chat_lines = [line for line in log.splitlines() if '"POST /v1/chat/completions' in line]
        logged = re.search(r"completion_tokens=(\d+)", chat_lines[-1])  # the long stream's
        assert logged is not None, chat_lines
        content_chunks = sum(1 for payload in long.payloads() if _text_of(payload))
        assert 0 < content_chunks <= int(logged.group(1)), (chat_lines[-1], content_chunks)
    finally:
        if server.process.poll() is None:
            stop_server(server)


def _text_of(payload: dict[str, object]) -> str:
    choices = payload.get("choices") or []
    delta = choices[0].get("delta", {}) if choices else {}  # type: ignore[index, union-attr]
    return str(delta.get("content") or "")  # type: ignore[union-attr]


def test_sigterm_when_idle_exits_0_at_once(tmp_path: Path) -> None:
    # A grace period far longer than the guard: exiting within it shows none was spent.
    server = start_server(tmp_path, "--ctx", "1024", "--shutdown-grace", "600")
    try:
        wait_healthy(server)
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=120) == 0  # nothing to drain: no grace period spent
        assert "still running after" not in server.log()
    finally:
        if server.process.poll() is None:
            stop_server(server)
