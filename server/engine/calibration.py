"""How many sequences the CPU decodes together: measured when the model loads, not assumed.

On a GPU, more sequences cost little until memory runs out; on a CPU each one costs compute, and
what batching gains depends on the cores, their caches and the model. A throwaway context (short
sequences, the real thread count) times decode steps with CPU_PARALLEL sequences against twice as
many, and keeps doubling through the plan's `parallel_trials` while `doubling_pays`
(a count that could not pay even with perfect batching, `doubling_can_pay`, is not
timed: a big model on a slow CPU starts as quickly as before).
The two counts of a pair are timed in turns, a few times each, and each keeps its best time:
anything else running on the machine only ever slows a step down, so the best is the closest to
what the cores can do. About two seconds for the bundled model on 2 cores.

What is timed and what it decides are apart: `calibrate` makes every decision and gets the timer
as an argument (tests/unit/test_cpu_parallel.py hands it tables of timings); `measure_parallel`
hands it llama.cpp's decode steps. So the pick depends on the machine (a slower or busier CPU
may rightly time nothing past the first look), the rules that make it do not.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import llama_cpp
from llama_cpp import _internals

from server.planner import CPU_PARALLEL

log = logging.getLogger("gemma_serve.engine")

TRIAL_CTX = 256  # per sequence, the smallest context llama.cpp pads to
ROUNDS = 3  # timings per count, taken in turns with the other count of the pair
STEPS = 2  # decode steps per timing
# Doubling the sequences pays when the total decode rate grows by at least this factor...
CPU_BATCH_GAIN = 1.25
# ...and each stream still comes well faster than anyone reads (people read 4-8 tokens a second;
# the measurement, at a short context, is a little kinder than a long conversation).
MIN_STREAM_RATE = 12.0


def doubling_pays(rate: float, doubled_rate: float, doubled: int) -> bool:
    """Whether `doubled` sequences, decoding `doubled_rate` tokens/s in total against `rate` for
    half as many, are worth it: CPU_BATCH_GAIN more in total, MIN_STREAM_RATE for each."""
    return doubled_rate >= rate * CPU_BATCH_GAIN and doubled_rate / doubled >= MIN_STREAM_RATE


def doubling_can_pay(rate: float, doubled: int) -> bool:
    """Whether `doubled` sequences could pay at all, given `rate` tokens/s for half as many: at
    best batching doubles the total, and that must still give each stream MIN_STREAM_RATE. (A
    big model on a slow CPU is not timed at twice the sequences for nothing.)"""
    return rate * 2 >= MIN_STREAM_RATE * doubled


# Seconds for `steps` decode steps of `count` sequences: (count, steps) -> seconds.
StepTimer = Callable[[int, int], float]


@dataclass(frozen=True)
class Calibration:
    """What the timings decided: the count to load with, each pair measured on the way (n, its
    total decode rate, 2n, its rate; tokens/s), and why it stopped short of a trial ('' if not)."""

    chosen: int
    pairs: tuple[tuple[int, float, int, float], ...]
    stopped: str = ""


def measure_parallel(
    model: _internals.LlamaModel, trial_params: Any, trials: Sequence[int]
) -> tuple[int, list[tuple[int, float, int, float]]]:
    """The count to load with, and each pair measured on the way (`Calibration`).
    `trial_params`: llama.cpp context parameters for `max(trials)` sequences of TRIAL_CTX tokens."""
    context = _internals.LlamaContext(model=model, params=trial_params, verbose=False)
    batch = llama_cpp.llama_batch_init(max(trials), 0, 1)
    try:
        result = calibrate(trials, lambda count, steps: _steps(context.ctx, batch, count, steps))
    finally:
        llama_cpp.llama_batch_free(batch)
        context.close()  # type: ignore[no-untyped-call]
    measured = [
        f"{a} sequences {ra:.0f} -> {b} sequences {rb:.0f}" for a, ra, b, rb in result.pairs
    ]
    log.info(
        "CPU decode, tokens/s in total: %s; serving %d requests at once",
        ", ".join([*measured, result.stopped] if result.stopped else measured),
        result.chosen,
    )
    return result.chosen, list(result.pairs)


def calibrate(trials: Sequence[int], time_steps: StepTimer) -> Calibration:
    """The decisions, given only a way to time decode steps: starting at CPU_PARALLEL, each
    doubling in `trials` is timed only while the last one paid (`doubling_pays`) and
    only if it could pay at all (`doubling_can_pay`, after a quick look). Nothing here
    touches llama.cpp, so tests/unit/test_cpu_parallel.py drives it with tables of timings:
    a CPU where doubling pays, one where it cannot, and timings spoilt by other work."""
    pairs: list[tuple[int, float, int, float]] = []
    chosen = CPU_PARALLEL
    for doubled in sorted(trials):
        if doubled != chosen * 2:
            break
        # a first look, the better of two single steps (the first may plan the graph)
        quick = chosen / min(time_steps(chosen, 1) for _ in range(2))
        if not doubling_can_pay(quick, doubled):
            stopped = f"{chosen} sequences {quick:.0f}, too few for {doubled} to pay"
            return Calibration(chosen, tuple(pairs), stopped)
        rate, doubled_rate = _best_rates(time_steps, (chosen, doubled))
        pairs.append((chosen, rate, doubled, doubled_rate))
        if not doubling_pays(rate, doubled_rate, doubled):
            break
        chosen = doubled
    return Calibration(chosen, tuple(pairs))


def _best_rates(time_steps: StepTimer, counts: tuple[int, int]) -> tuple[float, float]:
    """Both counts' rates, each from its best of ROUNDS timings taken in turns: other work on
    the machine only ever slows a step down, so the best is the closest to what the cores do."""
    best = dict.fromkeys(counts, float("inf"))
    for count in counts:  # untimed: the first step of a new batch shape plans its graph
        time_steps(count, 1)
    for _ in range(ROUNDS):
        for count in counts:
            best[count] = min(best[count], time_steps(count, STEPS))
    first, second = counts
    return first * STEPS / best[first], second * STEPS / best[second]


def _steps(ctx: Any, batch: Any, count: int, steps: int) -> float:
    """Seconds for `steps` decode steps of `count` sequences, each from its first position: the
    matrix products, which batching shares, are what is timed (a long context adds attention,
    the same per sequence at any count)."""
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
    started = time.perf_counter()
    for step in range(steps):
        for seq in range(count):
            batch.token[seq] = 2 + step  # any real token: the products cost the same
            batch.pos[seq] = step
            batch.n_seq_id[seq] = 1
            batch.seq_id[seq][0] = seq
            batch.logits[seq] = True  # every stream needs its logits, as in serving
        batch.n_tokens = count
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError(f"llama.cpp could not decode {count} sequences to measure them")
    return time.perf_counter() - started
