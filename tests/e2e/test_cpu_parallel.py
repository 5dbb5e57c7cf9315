"""The CPU's parallel count, measured as the real model loads: the engine times decode steps
with 4 sequences and more, keeps doubling while `calibration.doubling_pays` says the measured rates
pay, says so in its log, and then serves that many requests at once. Which count this machine
picks is its own speed's business (a slow or busy CPU rightly picks 4): these tests check that
the measurement runs and that the engine serves what it picked; the rules are tested with
injected timings in tests/unit/test_cpu_parallel.py."""

from __future__ import annotations

import asyncio
import logging
import math
from pathlib import Path
from typing import Any

import pytest
from llama_cpp import _internals

from server.engine import calibration
from server.engine.calibration import TRIAL_CTX, doubling_pays, measure_parallel
from server.engine.contract import ChatMessage, Finished, GenerationRequest, SamplingParams
from server.engine.llama_engine import LlamaEngine
from server.engine.loading import LoadParams, model_params, trial_context_params
from server.planner import CPU_PARALLEL
from tests.conftest import NEVER_END_BIAS


def measure(model_path: Path, trials: tuple[int, ...]) -> tuple[int, list[Any]]:
    """measure_parallel on the bundled model, with the trial context the loader makes."""
    params = LoadParams(n_ctx=TRIAL_CTX, n_threads=2)
    model = _internals.LlamaModel(
        path_model=str(model_path), params=model_params(params)[0], verbose=False
    )
    try:
        chosen, pairs = measure_parallel(model, trial_context_params(params, trials), trials)
    finally:
        model.close()  # type: ignore[no-untyped-call]
    return chosen, list(pairs)


def test_the_measurement_runs_and_picks_an_allowed_count(
    model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # How fast this CPU is, and so which count it picks, is the machine's: a slow or busy CPU
    # rightly times nothing past the first look. What holds everywhere: the look ran, the pick is
    # one the plan allows, and it follows the rates measured (the rules themselves are tested
    # with injected timings in tests/unit/test_cpu_parallel.py).
    with caplog.at_level(logging.INFO, logger="gemma_serve.engine"):
        chosen, pairs = measure(model_path, (8, 16))
    (line,) = [r.getMessage() for r in caplog.records if "CPU decode" in r.getMessage()]
    assert line.startswith(f"CPU decode, tokens/s in total: {CPU_PARALLEL} sequences ")
    assert line.endswith(f"serving {chosen} requests at once")
    assert chosen in (4, 8, 16)
    assert [(a, b) for a, _, b, _ in pairs] in ([], [(4, 8)], [(4, 8), (8, 16)])
    assert all(math.isfinite(r) and r > 0 for _, ra, _, rb in pairs for r in (ra, rb)), pairs
    if not pairs:  # the first look found that 8 could not pay: nothing more was timed
        assert "too few for 8 to pay" in line and chosen == CPU_PARALLEL
    expected = CPU_PARALLEL
    for a, rate, b, doubled_rate in pairs:  # 16 is measured only when 8 paid
        assert a == expected
        if not doubling_pays(rate, doubled_rate, b):
            break
        expected = b
    assert chosen == expected


def test_the_engine_serves_the_measured_count(
    model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="gemma_serve.engine"):
        engine = LlamaEngine(
            model_path=model_path,
            model_id="gemma-3-270m",
            n_ctx=1024,
            n_threads=2,
            parallel=CPU_PARALLEL,
            parallel_trials=(8, 16),
        )
    try:
        (line,) = [r.getMessage() for r in caplog.records if "CPU decode" in r.getMessage()]
        parallel = engine.stats().parallel
        assert parallel in (4, 8, 16)
        assert line.endswith(f"serving {parallel} requests at once")
        assert line.startswith(f"CPU decode, tokens/s in total: {CPU_PARALLEL} sequences ")
        # every one of them really runs at once: as many requests, all in slots together
        request = GenerationRequest(
            messages=(ChatMessage("user", "Count from one to twenty."),),
            max_tokens=48,  # EOS banned: none ends before all have begun
            sampling=SamplingParams(temperature=0, logit_bias=NEVER_END_BIAS),
        )

        async def all_at_once() -> tuple[list[Finished], int]:
            peak = 0

            async def one() -> Finished:
                nonlocal peak
                job = await engine.prepare(request)
                events = []
                async for event in job.events():
                    if not events:  # generating: counted by the engine as active
                        peak = max(peak, engine.stats().active)
                    events.append(event)
                return [e for e in events if isinstance(e, Finished)][-1]

            runs = await asyncio.gather(*(one() for _ in range(parallel)))
            return list(runs), peak

        finished, peak = asyncio.run(all_at_once())
        assert peak == parallel
        assert all(f.usage.completion_tokens >= 1 for f in finished)
    finally:
        engine.close()


def test_a_given_count_is_used_as_is(model_path: Path) -> None:
    engine = LlamaEngine(
        model_path=model_path, model_id="gemma-3-270m", n_ctx=1024, n_threads=2, parallel=2
    )
    try:
        assert engine.stats().parallel == 2
    finally:
        engine.close()


def test_a_count_that_cannot_pay_is_not_timed(
    model_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # As if every stream had to make a million tokens a second: no doubling could pay, so after
    # one look at 4 sequences nothing more is timed.
    monkeypatch.setattr(calibration, "MIN_STREAM_RATE", 1e6)
    with caplog.at_level(logging.INFO, logger="gemma_serve.engine"):
        chosen, pairs = measure(model_path, (8, 16))
    assert (chosen, pairs) == (CPU_PARALLEL, [])
    (line,) = [r.getMessage() for r in caplog.records if "CPU decode" in r.getMessage()]
    assert "4 sequences" in line and "too few for 8 to pay; serving 4 requests at once" in line
