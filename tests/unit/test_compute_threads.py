"""Work that is not an engine thread's own runs on a thread that ends with it."""

from __future__ import annotations

import asyncio
import threading

import pytest

from server.engine.compute_threads import on_passing_thread, on_passing_thread_async


def test_the_work_runs_on_a_new_thread_that_has_ended_when_it_returns() -> None:
    ran_on: list[threading.Thread] = []

    def work() -> int:
        ran_on.append(threading.current_thread())
        return 42

    assert on_passing_thread(work, "calibration") == 42
    assert ran_on[0] is not threading.current_thread()
    assert ran_on[0].name == "calibration"
    assert not ran_on[0].is_alive()


def test_the_works_exception_reaches_the_caller() -> None:
    def work() -> None:
        raise ValueError("no such batch")

    with pytest.raises(ValueError, match="no such batch"):
        on_passing_thread(work)


def test_the_async_form_leaves_the_loop_free_meanwhile() -> None:
    release = threading.Event()

    async def main() -> tuple[str, int]:
        waiting = asyncio.ensure_future(on_passing_thread_async(lambda: release.wait(30) and 7))
        await asyncio.sleep(0)  # the loop runs while the work waits
        release.set()
        return "free", await waiting

    assert asyncio.run(main()) == ("free", 7)
