"""Work that is not an engine thread's own runs on a thread that ends with it."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from server.engine.compute_threads import TEAMS, LingeringThread, Teams, on_passing_thread


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


def test_a_run_of_work_shares_one_thread() -> None:
    # A linger no pause between the awaits can outlast, however slow the machine.
    worker = LingeringThread("embedding", linger=60)

    async def main() -> list[threading.Thread]:
        return [await worker.run(threading.current_thread) for _ in range(3)]

    threads = asyncio.run(main())
    assert len(set(threads)) == 1 and threads[0].name == "embedding"
    assert threads[0] is not threading.current_thread()


def test_alone_the_thread_waits_for_the_next_item_past_its_linger() -> None:
    """No other thread computes: keeping the thread (and its OpenMP team) costs nothing."""
    worker = LingeringThread("embedding", linger=0.01)
    first = worker.submit(threading.current_thread).result(30)
    time.sleep(0.3)  # thirty times the linger
    assert first.is_alive()
    assert worker.submit(threading.current_thread).result(30) is first
    on_passing_thread(lambda: None)  # ends it (below), for the tests after this one


def test_a_thread_that_starts_computing_ends_the_waiting_one() -> None:
    worker = LingeringThread("embedding", linger=60)
    first = worker.submit(threading.current_thread).result(30)
    on_passing_thread(lambda: None)  # another thread's compute
    first.join(30)
    assert not first.is_alive()
    later = worker.submit(threading.current_thread).result(30)  # a new item, a new thread
    assert later is not first and later.name == "embedding"
    on_passing_thread(lambda: None)


def test_beside_a_busy_thread_it_waits_only_its_linger() -> None:
    busy, release = threading.Event(), threading.Event()

    def computing() -> None:
        TEAMS.work()
        busy.set()
        release.wait(60)
        TEAMS.leave()

    other = threading.Thread(target=computing)
    other.start()
    try:
        assert busy.wait(30)
        worker = LingeringThread("embedding", linger=0.05)
        first = worker.submit(threading.current_thread).result(30)
        first.join(30)  # ends by itself: no item came for `linger`
        assert not first.is_alive()
        assert worker.submit(lambda: 7).result(30) == 7  # a later item, a new thread
    finally:
        release.set()
        other.join(30)
    on_passing_thread(lambda: None)


def test_teams_say_whether_a_thread_may_linger_and_dismiss_the_idle_ones() -> None:
    teams = Teams()
    first = teams.linger(threading.Condition())
    assert first.alone is True  # nobody computes
    ready, release = threading.Event(), threading.Event()

    def other() -> None:
        teams.work()  # dismisses the lingering one
        ready.set()
        release.wait(60)
        teams.leave()

    thread = threading.Thread(target=other)
    thread.start()
    assert ready.wait(30)
    assert first.dismissed is True
    second = teams.linger(threading.Condition())
    assert second.alone is False  # the other computes
    release.set()
    thread.join(30)
    teams.work()  # this thread computes: the lingering entry is its own, not dismissed
    assert second.dismissed is False


def test_an_items_exception_reaches_its_waiter_and_the_thread_goes_on() -> None:
    worker = LingeringThread("embedding", linger=0.05)

    def fail() -> None:
        raise RuntimeError("llama_decode failed")

    with pytest.raises(RuntimeError, match="llama_decode failed"):
        worker.submit(fail).result(30)
    assert worker.submit(lambda: 7).result(30) == 7


def test_a_cancelled_wait_drops_an_item_that_has_not_started() -> None:
    worker = LingeringThread("embedding", linger=0.05)
    release, ran = threading.Event(), []
    first = worker.submit(lambda: release.wait(30))
    second = worker.submit(lambda: ran.append(1))
    assert second.cancel()  # still queued behind the first
    release.set()
    assert first.result(30) is True
    assert worker.submit(lambda: 3).result(30) == 3
    assert ran == []
