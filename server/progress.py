"""What the server does before it can serve: downloading, verifying or loading the model, and how
far it has got. Read by `/health` and written to the log.

A first start can download 16 GB. On a terminal the download draws a progress bar; a container
or a service has no terminal, so there the log gets a line when each step starts (what, how big,
from where), then one every `interval` seconds (bytes, rate, percent, time left) and one when it
ends. A stalled transfer keeps logging (its rate falls), so `docker compose logs -f` never goes
quiet while the server works. The loader thread reports; `/health` and the reporter thread read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

log = logging.getLogger("gemma_serve.fetch")

Phase = Literal["downloading", "verifying", "loading"]


def size_text(n: float) -> str:
    """1_500_000_000 -> '1.50 GB' (decimal units, as the hub and download tools show sizes)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def duration_text(seconds: float) -> str:
    """75 -> '1 min 15 s'; 4000 -> '1 h 06 min'."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


@dataclass(frozen=True)
class Step:
    """One step as it stands: `done` of `total` bytes (total None: not known, or not counted in
    bytes, as loading), since `started` (monotonic seconds); `start_at` bytes were there already
    (a resumed download), so the rate counts only what this run moved."""

    phase: Phase
    what: str
    total: int | None
    done: int
    start_at: int
    started: float

    def rate(self, now: float) -> float | None:
        elapsed = now - self.started
        return (self.done - self.start_at) / elapsed if elapsed > 0 else None

    def seconds_left(self, now: float) -> float | None:
        rate = self.rate(now)
        if self.total is None or not rate:
            return None
        return max(0.0, (self.total - self.done) / rate)

    def line(self, now: float) -> str:
        """'downloading x.gguf: 3.20 GB of 15.90 GB (20%), 41.00 MB/s, 5 min 10 s left'"""
        elapsed = duration_text(now - self.started)
        if self.phase == "loading" or (self.total is None and self.done == 0):
            return f"{self.phase} {self.what}: {elapsed} so far"
        rate, left = self.rate(now), self.seconds_left(now)
        text = f"{self.phase} {self.what}: {size_text(self.done)}"
        if self.total:
            text += f" of {size_text(self.total)} ({100 * self.done // self.total}%)"
        text += f", {size_text(rate or 0)}/s"
        return text + (f", {duration_text(left)} left" if left is not None else f", {elapsed}")

    def as_json(self, now: float) -> dict[str, Any]:
        rate, left = self.rate(now), self.seconds_left(now)
        counted = self.phase != "loading"  # llama.cpp's load is not counted in bytes here
        return {
            "phase": self.phase,
            "what": self.what,
            "done_bytes": self.done if counted else None,
            "total_bytes": self.total,
            "percent": round(100 * self.done / self.total, 1) if self.total else None,
            "bytes_per_second": round(rate)
            if rate is not None and self.phase != "loading"
            else None,
            "seconds_left": round(left) if left is not None else None,
            "elapsed_seconds": round(now - self.started, 1),
        }


class Progress:
    """The step in progress, logged at a steady interval off a terminal.

    `terminal`: the download draws a progress bar there instead of its periodic lines (the
    verification and the load, which have no bar, keep theirs; start and end lines are logged
    either way). `clock` is for tests."""

    def __init__(
        self,
        interval: float = 10.0,
        terminal: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval = interval
        self.terminal = terminal
        self._clock = clock
        self._lock = threading.Condition()
        self._step: Step | None = None
        self._logged = 0.0  # when the step in progress was last logged
        self._reporter: threading.Thread | None = None
        self._closed = False

    def begin(
        self, phase: Phase, what: str, total: int | None, start_at: int = 0, detail: str = ""
    ) -> None:
        """Log the start of a step (with `detail`: where from, resumed where) and track it."""
        size = f" ({size_text(total)})" if total else ""
        log.info("%s %s%s%s", phase, what, size, f" {detail}" if detail else "")
        with self._lock:
            now = self._clock()
            self._step = Step(phase, what, total, start_at, start_at, now)
            self._logged = now
            if self._reporter is None and not self._closed:
                self._reporter = threading.Thread(
                    target=self._report, name="gemma-serve-progress", daemon=True
                )
                self._reporter.start()
            self._lock.notify_all()

    def advance(self, n: int) -> None:
        with self._lock:
            if self._step is not None:
                self._step = replace(self._step, done=self._step.done + n)

    def position(self, done: int) -> None:
        """The step is at byte `done` (a transfer that restarted, or resumed elsewhere)."""
        with self._lock:
            if self._step is not None:
                start_at = min(self._step.start_at, done)
                self._step = replace(self._step, done=done, start_at=start_at)

    def drop(self) -> None:
        """Stop tracking the step without a line (it failed or was cancelled: the caller says
        so)."""
        with self._lock:
            self._step = None

    def end(self, message: str) -> None:
        """Log the end of the step and stop tracking it: `message` with how long it took in
        place of `{took}` (" in 4 s"), or after it."""
        with self._lock:
            step, self._step = self._step, None
        took = f" in {duration_text(self._clock() - step.started)}" if step else ""
        log.info("%s", message.replace("{took}", took) if "{took}" in message else message + took)

    def snapshot(self) -> dict[str, Any] | None:
        """The step in progress for /health, None when there is none."""
        with self._lock:
            step = self._step
        return step.as_json(self._clock()) if step else None

    def summary(self) -> str | None:
        """The step in progress as one line, None when there is none."""
        with self._lock:
            step = self._step
        return step.line(self._clock()) if step else None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._step = None
            self._lock.notify_all()
            reporter = self._reporter
        if reporter is not None and reporter is not threading.current_thread():
            reporter.join(timeout=5)

    def _report(self) -> None:
        """A line for the step in progress each `interval` seconds after its start or its last
        line (nothing between two steps)."""
        with self._lock:
            while not self._closed:
                if self._step is None:
                    self._lock.wait()
                    continue
                due = self._logged + self.interval - self._clock()
                if due > 0:
                    self._lock.wait(due)
                    continue
                self._logged = self._clock()
                if not (self.terminal and self._step.phase == "downloading"):
                    log.info("%s", self._step.line(self._logged))
