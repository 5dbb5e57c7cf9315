"""server/progress.py with a hand-moved clock: the lines a download, a verification and a load
write off a terminal, what /health reports, and the steady interval of the reporter thread;
server/healthcheck.py's verdict on /health's answers."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable

import pytest

from server.healthcheck import verdict
from server.progress import Progress, duration_text, size_text


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.4, "0 s"), (59, "59 s"), (75, "1 min 15 s"), (3599, "59 min 59 s"), (4000, "1 h 06 min")],
)
def test_durations(seconds: float, text: str) -> None:
    assert duration_text(seconds) == text


@pytest.mark.parametrize(
    ("size", "text"), [(512, "512 B"), (1_500, "1.50 kB"), (15_908_791_488, "15.91 GB")]
)
def test_sizes(size: int, text: str) -> None:
    assert size_text(size) == text


def test_a_resumed_download_counts_only_what_this_run_moved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    progress = Progress(interval=3600, clock=clock)  # no periodic line within this test
    with caplog.at_level(logging.INFO, logger="gemma_serve.fetch"):
        progress.begin("downloading", "m.gguf", 16_000_000_000, start_at=4_000_000_000)
        clock.now += 100
        progress.advance(4_000_000_000)  # 40 MB/s since this run began
        assert progress.summary() == (
            "downloading m.gguf: 8.00 GB of 16.00 GB (50%), 40.00 MB/s, 3 min 20 s left"
        )
        snapshot = progress.snapshot()
        assert snapshot == {
            "phase": "downloading",
            "what": "m.gguf",
            "done_bytes": 8_000_000_000,
            "total_bytes": 16_000_000_000,
            "percent": 50.0,
            "bytes_per_second": 40_000_000,
            "seconds_left": 200,
            "elapsed_seconds": 100.0,
        }
        clock.now += 200
        progress.end("downloaded m.gguf")
        assert progress.snapshot() is None
        progress.close()
    assert caplog.messages == ["downloading m.gguf (16.00 GB)", "downloaded m.gguf in 5 min 00 s"]


def test_a_load_has_no_bytes_only_time(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    progress = Progress(interval=3600, clock=clock)
    with caplog.at_level(logging.INFO, logger="gemma_serve.fetch"):
        progress.begin("loading", "gemma-3-27b-it-qat", None, detail="from /m.gguf")
        clock.now += 42
        assert progress.summary() == "loading gemma-3-27b-it-qat: 42 s so far"
        snapshot = progress.snapshot()
        assert snapshot is not None and snapshot["done_bytes"] is None
        assert snapshot["elapsed_seconds"] == 42.0
        progress.end("gemma-3-27b-it-qat is loaded{took} (context 4096 tokens); ready")
        progress.close()
    assert caplog.messages == [
        "loading gemma-3-27b-it-qat from /m.gguf",
        "gemma-3-27b-it-qat is loaded in 42 s (context 4096 tokens); ready",
    ]


def eventually(condition: Callable[[], object]) -> bool:
    """Whether `condition()` comes to hold; the 60 s is a guard against a hang, not a speed
    bound."""
    deadline = time.monotonic() + 60
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(condition())


def test_off_a_terminal_a_line_comes_at_each_interval_until_the_step_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def progress_lines() -> list[str]:
        return [m for m in caplog.messages if m.startswith("verifying m.gguf: ")]

    progress = Progress(interval=0.2)
    with caplog.at_level(logging.INFO, logger="gemma_serve.fetch"):
        progress.begin("verifying", "m.gguf", 1000)
        progress.advance(100)
        assert eventually(lambda: len(progress_lines()) >= 1), caplog.messages
        progress.advance(100)
        assert eventually(lambda: len(progress_lines()) >= 2), caplog.messages
        progress.end("verified m.gguf")
        lines_then = len(caplog.messages)
        time.sleep(0.5)  # nothing between steps
        progress.close()
    assert len(caplog.messages) == lines_then


@pytest.mark.parametrize(
    ("status", "body", "healthy"),
    [
        (200, {"status": "ok"}, True),
        (503, {"status": "downloading", "progress": {"percent": 3.0}}, True),
        (503, {"status": "verifying"}, True),
        (503, {"status": "loading"}, True),
        (503, {"status": "failed"}, False),  # a failed load
        (503, {"error": {"code": "server_shutting_down"}}, False),
        (500, {}, False),
    ],
)
def test_the_health_check_passes_while_the_server_makes_progress(
    status: int, body: dict[str, object], healthy: bool
) -> None:
    assert verdict(status, json.dumps(body).encode())[0] is healthy
    assert verdict(503, b"not json") == (False, "/health answered 503 (no status)")


class ReporterReads:
    """The monotonic clock, noting the latest time it gave a thread other than the test's own
    (the reporter's)."""

    def __init__(self) -> None:
        self.test_thread = threading.current_thread()
        self.latest = float("-inf")

    def __call__(self) -> float:
        now = time.monotonic()
        if threading.current_thread() is not self.test_thread:
            self.latest = max(self.latest, now)
        return now


def test_on_a_terminal_the_download_has_its_bar_and_the_load_its_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def lines_of(start: str) -> list[str]:
        return [m for m in caplog.messages if m.startswith(start)]

    clock = ReporterReads()
    progress = Progress(interval=0.1, terminal=True, clock=clock)
    with caplog.at_level(logging.INFO, logger="gemma_serve.fetch"):
        progress.begin("downloading", "m.gguf", 1000)
        due = time.monotonic() + progress.interval
        # The reporter has read the clock at or past the download's first line: the line was due,
        # and the reporter decides under the lock that `end` takes, so any line is in by then.
        assert eventually(lambda: clock.latest >= due), "the reporter never woke"
        progress.end("downloaded m.gguf")
        progress.begin("loading", "m", None)
        assert eventually(lambda: lines_of("loading m: ")), caplog.messages
        progress.end("m is loaded{took}")
        progress.close()
    assert not lines_of("downloading m.gguf: ")
