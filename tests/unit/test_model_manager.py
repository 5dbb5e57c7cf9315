"""The model manager over scripted loaders: loads on demand, one load per model, idle unload,
LRU eviction against the memory free at load time, disconnects and shutdown during a load."""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from server.cancellation import Cancelled
from server.memory import GiB
from server.models.fit import CannotFit
from server.models.manager import Installed, ModelManager, NotInstalled

T = TypeVar("T")


class Weights:
    """A loaded model: `closed` once its memory is given back."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def close(self) -> None:
        self.closed = True


class Loader:
    """Counts loads; with `gate`, each load waits for it (or for the manager's `stopping`)."""

    def __init__(self, name: str, gate: threading.Event | None = None, fail: str = "") -> None:
        self.name = name
        self.gate = gate
        self.fail = fail
        self.calls = 0
        self.started = threading.Event()
        self.loaded: list[Weights] = []

    def __call__(self, stopping: threading.Event, free: int | None) -> Weights:
        self.calls += 1
        self.started.set()
        while self.gate is not None and not self.gate.wait(0.01):
            if stopping.is_set():
                raise Cancelled(self.name)
        if self.fail:
            raise RuntimeError(self.fail)
        weights = Weights(self.name)
        self.loaded.append(weights)
        return weights


def run(test: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(asyncio.wait_for(test(), 10))


def installed(loader: Loader, need: int = GiB) -> Installed:
    return Installed(loader.name, loader, need=need, file_size=need)


def test_a_model_loads_on_the_first_request_and_stays_while_leased() -> None:
    async def scenario() -> None:
        manager = ModelManager(keep_alive=None)
        loader = Loader("a")
        manager.register(installed(loader))
        assert manager.state("a").state == "unloaded"
        lease = await manager.acquire("a")
        assert isinstance(lease.model, Weights) and lease.model.name == "a"
        state = manager.state("a")
        assert (state.state, state.loads, state.busy, state.holds) == ("loaded", 1, True, GiB)
        lease.release()
        again = await manager.acquire("a")
        assert loader.calls == 1 and again.model is lease.model
        again.release()
        await manager.close()
        assert lease.model.closed

    run(scenario)


def test_an_unknown_model_is_not_installed() -> None:
    async def scenario() -> None:
        with pytest.raises(NotInstalled):
            await ModelManager().acquire("nope")

    run(scenario)


def test_concurrent_requests_during_a_load_start_one_load() -> None:
    async def scenario() -> None:
        gate = threading.Event()
        loader = Loader("a", gate)
        manager = ModelManager(keep_alive=None)
        manager.register(installed(loader))
        waiting = [asyncio.ensure_future(manager.acquire("a")) for _ in range(5)]
        await asyncio.to_thread(loader.started.wait, 5)
        assert manager.state("a").state == "loading"
        gate.set()
        leases = await asyncio.gather(*waiting)
        assert loader.calls == 1
        assert {id(lease.model) for lease in leases} == {id(loader.loaded[0])}
        for lease in leases:
            lease.release()
        await manager.close()

    run(scenario)


def test_a_request_that_leaves_during_a_load_does_not_cancel_it_for_the_others() -> None:
    async def scenario() -> None:
        gate = threading.Event()
        loader = Loader("a", gate)
        manager = ModelManager(keep_alive=None)
        manager.register(installed(loader))
        leaving = asyncio.ensure_future(manager.acquire("a"))
        staying = asyncio.ensure_future(manager.acquire("a"))
        await asyncio.to_thread(loader.started.wait, 5)
        leaving.cancel()  # the client hung up: its request is freed at once
        with pytest.raises(asyncio.CancelledError):
            await leaving
        assert manager.state("a").state == "loading"
        gate.set()
        lease = await staying
        assert loader.calls == 1 and manager.state("a").state == "loaded"
        lease.release()
        await manager.close()

    run(scenario)


def test_a_load_every_waiter_left_still_ends_and_unloads_after_its_keep_alive() -> None:
    async def scenario() -> None:
        gate = threading.Event()
        loader = Loader("a", gate)
        manager = ModelManager(keep_alive=0.05)
        manager.register(installed(loader))
        leaving = asyncio.ensure_future(manager.acquire("a"))
        await asyncio.to_thread(loader.started.wait, 5)
        leaving.cancel()
        gate.set()
        while manager.state("a").unloads == 0:
            await asyncio.sleep(0.01)
        assert loader.loaded[0].closed and manager.state("a").state == "unloaded"
        await manager.close()

    run(scenario)


def test_an_idle_model_unloads_after_its_keep_alive_and_reloads_on_the_next_request() -> None:
    async def scenario() -> None:
        manager = ModelManager(keep_alive=0.1)
        loader = Loader("a")
        manager.register(installed(loader))
        lease = await manager.acquire("a")
        await asyncio.sleep(0.2)
        assert manager.state("a").state == "loaded"  # leased: busy, never unloaded
        assert manager.state("a").expires_at is None
        lease.release()
        assert manager.state("a").expires_at is not None
        while manager.state("a").state != "unloaded":
            await asyncio.sleep(0.01)
        assert loader.loaded[0].closed
        again = await manager.acquire("a")
        assert loader.calls == 2 and again.model is loader.loaded[1]
        state = manager.state("a")
        assert (state.loads, state.unloads, state.requests) == (2, 1, 2)
        again.release()
        await manager.close()

    run(scenario)


def test_a_dropped_lease_is_released() -> None:
    async def scenario() -> None:
        manager = ModelManager(keep_alive=0.05)
        manager.register(installed(Loader("a")))
        lease = await manager.acquire("a")
        del lease
        gc.collect()
        while manager.state("a").state != "unloaded":
            await asyncio.sleep(0.01)
        await manager.close()

    run(scenario)


def test_a_request_keep_alive_replaces_the_default_and_unload_frees_an_idle_model() -> None:
    async def scenario() -> None:
        manager = ModelManager(keep_alive=0.05)
        loader = Loader("a")
        manager.register(installed(loader))
        (await manager.acquire("a", keep_alive=None)).release()
        await asyncio.sleep(0.15)
        assert manager.state("a").state == "loaded"  # forever, as the request said
        await manager.unload("a")
        assert manager.state("a").state == "unloaded" and loader.loaded[0].closed
        await manager.close()

    run(scenario)


def test_a_load_that_needs_the_memory_unloads_the_least_recently_used_idle_model() -> None:
    async def scenario() -> None:
        card = {"free": 10 * GiB}
        manager = ModelManager(keep_alive=None, free_memory=lambda: card["free"])
        loaders = {name: Loader(name) for name in ("a", "b", "c")}
        for loader in loaders.values():
            manager.register(installed(loader, need=4 * GiB))
        for name in ("a", "b"):
            (await manager.acquire(name)).release()
            card["free"] -= 4 * GiB
            await asyncio.sleep(0.01)  # b is used after a
        card["free"] -= 1 * GiB  # a game starts between two loads: 1 GiB left
        lease = await manager.acquire("c")
        assert [s.state for s in manager.states()] == ["unloaded", "loaded", "loaded"]
        assert loaders["a"].loaded[0].closed and not loaders["b"].loaded[0].closed
        lease.release()
        await manager.close()

    run(scenario)


def test_a_model_that_cannot_fit_is_refused_with_figures_and_the_others_keep_serving() -> None:
    async def scenario() -> None:
        manager = ModelManager(keep_alive=None, free_memory=lambda: 2 * GiB)
        small, large = Loader("small"), Loader("large")
        manager.register(installed(small, need=1 * GiB))
        manager.register(installed(large, need=20 * GiB))
        serving = await manager.acquire("small")
        with pytest.raises(CannotFit) as refused:
            await manager.acquire("large")
        assert "large needs 20.0 GiB" in str(refused.value)
        assert large.calls == 0 and manager.state("small").state == "loaded"
        assert manager.state("large").error is not None
        serving.release()
        await manager.close()

    run(scenario)


def test_a_failed_load_is_an_error_for_its_waiters_and_the_next_request_tries_again() -> None:
    async def scenario() -> None:
        manager = ModelManager(keep_alive=None)
        broken = Loader("a", fail="file deleted")
        manager.register(installed(broken))
        with pytest.raises(RuntimeError, match="file deleted"):
            await manager.acquire("a")
        assert manager.state("a").state == "unloaded"
        broken.fail = ""
        (await manager.acquire("a")).release()
        assert broken.calls == 2
        await manager.close()

    run(scenario)


def test_shutdown_during_a_load_stops_it_cleanly() -> None:
    async def scenario() -> None:
        loader = Loader("a", gate=threading.Event())  # never opened: only `stopping` ends it
        manager = ModelManager(keep_alive=None)
        manager.register(installed(loader))
        waiting = asyncio.ensure_future(manager.acquire("a"))
        await asyncio.to_thread(loader.started.wait, 5)
        await manager.close()
        with pytest.raises(Cancelled):
            await waiting
        assert manager.state("a").state == "unloaded"

    run(scenario)
