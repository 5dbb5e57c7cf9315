"""The port opens before the model is loaded: `/health` and the API answer 503 (OpenAI-shaped,
with Retry-After) while the real engine loads, then 200; a model that fails to load is reported."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.app import create_app, default_engine_loader
from server.capability import LlamaBuild
from server.engine.contract import Engine
from server.planner import Plan, PlanOptions, plan
from server.registry import load_registry
from server.settings import Settings

from .test_errors import GOOD, assert_error


def cpu_plan() -> Plan:
    return plan([], load_registry(), PlanOptions(ctx=1024), LlamaBuild(gpu_offload=False))


def test_health_is_503_while_loading_then_200(tmp_path: Path) -> None:
    settings = Settings(ctx=1024, cache_dir=tmp_path)
    real_loader = default_engine_loader(settings, cpu_plan())
    release = threading.Event()

    def slow_loader() -> Engine:
        # Hold the load back so the test can look at the server while it is "loading".
        assert release.wait(timeout=60)
        return real_loader()

    app = create_app(settings, cpu_plan(), load_engine=slow_loader)
    with TestClient(app, base_url="http://localhost") as client:  # an allowed Host
        health = client.get("/health")
        assert health.status_code == 503 and health.headers["retry-after"]
        # The OpenAI error, and what the server is doing (the held loader has begun no step).
        assert health.json()["error"]["code"] == "model_loading"
        assert (health.json()["status"], health.json()["progress"]) == ("starting", None)
        assert_error(client.post("/v1/chat/completions", json=GOOD), 503, code="model_loading")
        assert client.get("/v1/models").json()["data"][0]["id"] == "gemma-3-270m"
        release.set()
        for _ in range(300):
            if client.get("/health").status_code == 200:
                break
            threading.Event().wait(0.1)
        health = client.get("/health").json()
        assert health.pop("parallel") in (4, 8, 16)  # measured on the CPU as the model loads
        assert health == {"status": "ok", "active": 0, "queued": 0, "loaded": ["gemma-3-270m"]}
        completion = client.post("/v1/chat/completions", json=GOOD).json()
        assert completion["choices"][0]["message"]["content"]


def test_a_model_that_fails_to_load_is_reported(tmp_path: Path) -> None:
    settings = Settings(ctx=1024, cache_dir=tmp_path)
    reported: list[str] = []

    def broken_loader() -> Engine:
        raise RuntimeError("no such file")

    app = create_app(settings, cpu_plan(), load_engine=broken_loader, on_fatal=reported.append)
    with TestClient(app, base_url="http://localhost") as client:
        for _ in range(100):
            if reported:
                break
            threading.Event().wait(0.05)
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "failed"
        error = health.json()["error"]
        assert error["code"] == "model_load_failed" and "no such file" in error["message"]
        # The API's own answers stay plain OpenAI errors.
        assert_error(client.post("/v1/chat/completions", json=GOOD), 503, code="model_load_failed")
    assert reported == ["cannot serve gemma-3-270m: no such file"]


def test_a_corrupted_model_file_is_refused_before_llama_cpp_sees_it(tmp_path: Path) -> None:
    from server.fetch import FetchError, verify_gguf

    spec = load_registry().get("gemma-3-270m")
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"<html>login</html>")
    with pytest.raises(FetchError, match="not a GGUF file"):
        verify_gguf(not_gguf, spec.id, spec.file_size)
    truncated = tmp_path / "y.gguf"
    truncated.write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(FetchError, match="incomplete"):
        verify_gguf(truncated, spec.id, spec.file_size)


LOAD_STOPPED = """
import sys, threading
from pathlib import Path
from server.engine.loading import LoadCancelled, LoadParams, load
stop = threading.Event()
params = LoadParams(n_ctx=512, n_threads=1)
loaded = load(Path(sys.argv[1]), params, cancel=stop)  # not set: loads as usual
loaded.close()
stop.set()
try:
    load(Path(sys.argv[1]), params, cancel=stop)
except LoadCancelled:
    print("stopped")
"""


def run_script(script: str, model_path: Path) -> list[str]:
    """`script` in a fresh Python process given the model's path: the words it printed."""
    result = subprocess.run(
        [sys.executable, "-c", script, str(model_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_a_load_in_llama_cpp_stops_when_cancelled(model_path: Path) -> None:
    # Shutdown sets the event: llama.cpp's progress callback then ends the load of the weights.
    assert run_script(LOAD_STOPPED, model_path) == ["stopped"]


CALIBRATION_THREADS = """
import os, sys, threading, time
from pathlib import Path
from server.engine.loading import LoadParams, load

def native_threads():  # OS threads Python did not start: llama.cpp's OpenMP workers
    return len(os.listdir("/proc/self/task")) - threading.active_count()

before = native_threads()
loaded = load(Path(sys.argv[1]), LoadParams(n_ctx=512, n_threads=2, n_seq=4), parallel_trials=(8,))
deadline = time.monotonic() + 30  # a team's workers end shortly after its thread
while native_threads() != before and time.monotonic() < deadline:
    time.sleep(0.05)
print(loaded.n_seq, before, native_threads())
loaded.close()
"""


def test_timing_the_cpu_at_load_leaves_no_compute_threads_behind(model_path: Path) -> None:
    """The calibration decodes on a thread of its own that ends with it: libgomp keeps a team of
    workers for every thread that has run llama.cpp's compute, and one team more than the
    engine thread's makes every later decode step sleep at its barriers
    (server/engine/compute_threads.py)."""
    n_seq, before, after = (int(word) for word in run_script(CALIBRATION_THREADS, model_path))
    assert n_seq in (4, 8)  # the measurement ran and picked one of the counts it may
    assert after == before


IDLE_ENGINE_THREADS = """
import asyncio, os, sys, threading, time
from pathlib import Path
from server.engine.contract import ChatMessage, GenerationRequest, SamplingParams
from server.engine.llama_engine import LlamaEngine

def native_threads():  # OS threads Python did not start: llama.cpp's OpenMP workers
    return len(os.listdir("/proc/self/task")) - threading.active_count()

async def answer(engine):
    # The last event's reason, and the native threads counted at the first event (the engine
    # thread is generating then: no stall of the machine can have let it end).
    hi = GenerationRequest(messages=(ChatMessage("user", "Hi"),), max_tokens=2,
                           sampling=SamplingParams(temperature=0))
    events, during = [], None
    async for event in (await engine.prepare(hi)).events():
        during = native_threads() if during is None else during
        events.append(event)
    return events[-1].reason, during

def engine_thread(engine):
    return engine._scheduler._thread

path = Path(sys.argv[1])
engine = LlamaEngine(model_path=path, model_id="m", n_ctx=512, n_threads=2, parallel=2)
other = LlamaEngine(model_path=path, model_id="o", n_ctx=512, n_threads=2, parallel=2)
before = native_threads()
first, busy = asyncio.run(answer(engine))  # busy: the engine thread's team beside it
thread = engine_thread(engine)
time.sleep(3)  # longer than any idle wait the thread ever had (2 s)
kept = thread.is_alive() and native_threads() == busy
second, _ = asyncio.run(answer(engine))
same = engine_thread(engine) is thread  # the lingering thread served it
third, both = asyncio.run(answer(other))  # another thread computes: the idle one ends
deadline = time.monotonic() + 30  # a team's workers end shortly after its thread
while (thread.is_alive() or native_threads() != busy) and time.monotonic() < deadline:
    time.sleep(0.05)
ended = not thread.is_alive() and native_threads() == busy  # the other's team alone
fourth, _ = asyncio.run(answer(engine))  # a new engine thread serves it
engine.close()
other.close()
print(before, busy, kept, same, ended, first, second, third, fourth)
"""


def test_an_idle_engine_keeps_its_thread_until_another_computes(model_path: Path) -> None:
    """An idle engine's thread waits with its OpenMP team, so the next request's first step
    starts at once (a new thread's first prefill is ~10 ms slower), but only while no other
    thread computes: another engine starting work ends it, so an idle model never slows a busy
    one's steps (server/engine/compute_threads.py); the next request starts a new thread."""
    before, busy, kept, same, ended, *reasons = run_script(IDLE_ENGINE_THREADS, model_path)
    assert int(busy) > int(before)  # a team stood beside the decoding thread
    assert (kept, same, ended) == ("True", "True", "True")
    assert reasons == ["length"] * 4
