"""How many sequences the CPU decodes together, as tables of measured rates: a doubling pays when
the total decode rate grows by 25% and every stream stays at 12 tokens/s or more; the calibration
keeps doubling while it does, driven here by injected step timings (a CPU where doubling pays,
one where it cannot, timings spoilt by other work), so no test depends on this machine's speed
(tests/e2e/test_cpu_parallel.py only checks that the real measurement runs); and which counts a
CPU plan lets the engine try."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pytest

from server.capability import LlamaBuild
from server.engine.calibration import ROUNDS, STEPS, calibrate, doubling_can_pay, doubling_pays
from server.memory import GiB, kv_cache
from server.planner import (
    CPU_KV_LIMIT,
    CPU_PARALLEL,
    PlanOptions,
    cpu_parallel_trials,
    plan,
)
from server.registry import load_registry

CPU_BUILD = LlamaBuild(gpu_offload=False, backends=("CPU",))


@pytest.mark.parametrize(
    ("rate", "doubled_rate", "doubled", "pays"),
    [
        (112.0, 151.0, 8, True),  # +35%, 19 tok/s a stream
        (151.0, 165.0, 16, False),  # +9%
        (100.0, 124.9, 8, False),  # just under +25%
        (70.0, 95.0, 8, False),  # +36%, but under 12 tok/s a stream
        (160.0, 200.0, 16, True),  # +25%, 12.5 tok/s a stream
        (100.0, 125.0, 8, True),  # exactly +25%
        (100.0, 110.0, 8, False),  # +10%
        (60.0, 90.0, 8, False),  # +50%, but 11.25 tok/s a stream
        # a desktop with many cores: each doubling still gains
        (180.0, 330.0, 8, True),
        (330.0, 560.0, 16, True),
    ],
)
def test_a_doubling_pays_with_25_percent_more_and_12_tokens_a_second_each(
    rate: float, doubled_rate: float, doubled: int, pays: bool
) -> None:
    assert doubling_pays(rate, doubled_rate, doubled) is pays


@pytest.mark.parametrize(
    ("rate", "doubled", "can_pay"),
    [
        (100.0, 8, True),  # the bundled model here: 8 could reach 200 tok/s
        (48.0, 8, True),  # 8 x 12 tok/s = 96 = 2 x 48, just possible
        (47.0, 8, False),
        (12.0, 8, False),  # a 4B model on 2 cores: 3 tok/s a stream already
        (100.0, 16, True),
        (90.0, 16, False),
    ],
)
def test_a_count_that_cannot_pay_is_not_timed(rate: float, doubled: int, can_pay: bool) -> None:
    assert doubling_can_pay(rate, doubled) is can_pay


def test_the_floor_is_four() -> None:
    assert CPU_PARALLEL == 4


@pytest.mark.parametrize(
    ("model", "n_ctx", "trials"),
    [
        # KV cache per sequence in MiB: 270M 39 at 8192 tokens, 111 at 32768; 1B 54 and 150;
        # 4B 334 and 814; 27B 784 at 2048
        ("gemma-3-270m", 8192, (8, 16)),
        ("gemma-3-270m", 32768, (8, 16)),  # 12 more x 111 MiB = 1.3 GiB
        ("gemma-3-1b-it-qat", 32768, (8, 16)),  # 12 x 150 MiB = 1.8 GiB
        ("gemma-3-4b-it-qat", 8192, (8,)),  # 4 more x 334 MiB fit, 12 more do not
        ("gemma-3-4b-it-qat", 32768, ()),  # 4 x 814 MiB = 3.2 GiB: stay at 4
        ("gemma-3-27b-it-qat", 2048, ()),
    ],
)
def test_trials_keep_the_extra_kv_cache_under_the_limit(
    model: str, n_ctx: int, trials: tuple[int, ...]
) -> None:
    spec = load_registry().get(model)
    assert cpu_parallel_trials(spec, n_ctx, PlanOptions()) == trials
    per_sequence = kv_cache(spec.architecture, n_ctx).total
    for count in trials:
        assert (count - CPU_PARALLEL) * per_sequence <= CPU_KV_LIMIT == 2 * GiB


def test_a_cpu_plan_leaves_the_count_to_measure_unless_parallel_is_given() -> None:
    registry = load_registry()
    measured = plan([], registry, PlanOptions(), CPU_BUILD)
    assert (measured.parallel, measured.parallel_trials) == (4, (8, 16))
    fixed = plan([], registry, PlanOptions(parallel=2), CPU_BUILD)
    assert (fixed.parallel, fixed.parallel_trials) == (2, ())


class Timings:
    """A step timer from a table: each count's seconds per decode step, times the next factor of
    `load` (other work slowing that timing down; 1.0 once the factors run out). Keeps every call
    as (count, steps)."""

    def __init__(self, per_step: Mapping[int, float], load: Sequence[float] = ()) -> None:
        self.per_step = per_step
        self.load = list(load)
        self.calls: list[tuple[int, int]] = []

    def __call__(self, count: int, steps: int) -> float:
        self.calls.append((count, steps))
        slowed = self.load.pop(0) if self.load else 1.0
        return self.per_step[count] * steps * slowed

    def timed(self) -> set[int]:
        return {count for count, _ in self.calls}


def per_step(rates: Mapping[int, float]) -> dict[int, float]:
    """Seconds per decode step of each count, from its total rate in tokens/s."""
    return {count: count / rate for count, rate in rates.items()}


# Tokens/s in total for 4, 8 and 16 sequences, and what the calibration picks from them.
@pytest.mark.parametrize(
    ("rates", "trials", "chosen", "pairs"),
    [
        # here (2 cores): 8 pays (+35%), 16 does not (+9%)
        ({4: 112.0, 8: 151.0, 16: 165.0}, (8, 16), 8, [(4, 8), (8, 16)]),
        # a desktop with many cores: every doubling pays, up to the last trial
        ({4: 180.0, 8: 330.0, 16: 560.0}, (8, 16), 16, [(4, 8), (8, 16)]),
        # 8 does not pay: 16 is never timed
        ({4: 112.0, 8: 120.0, 16: 300.0}, (8, 16), 4, [(4, 8)]),
        # the plan allows only 8 (a bigger model's KV cache)
        ({4: 112.0, 8: 151.0}, (8,), 8, [(4, 8)]),
        # --parallel given, or no trial allowed: nothing is timed
        ({4: 112.0}, (), 4, []),
        # a trial that is not a doubling of the count reached is not timed
        ({4: 112.0, 16: 400.0}, (16,), 4, []),
    ],
)
def test_the_calibration_keeps_doubling_while_it_pays(
    rates: dict[int, float], trials: tuple[int, ...], chosen: int, pairs: list[tuple[int, int]]
) -> None:
    timings = Timings(per_step(rates))
    result = calibrate(trials, timings)
    assert result.chosen == chosen
    assert [(a, b) for a, _, b, _ in result.pairs] == pairs
    for a, rate, b, doubled_rate in result.pairs:
        assert (rate, doubled_rate) == pytest.approx((rates[a], rates[b]))
    assert result.stopped == ""
    assert timings.timed() == {count for pair in pairs for count in pair}


@pytest.mark.parametrize(
    ("rate_of_4", "trials", "stopped"),
    [
        # a slow or busy CPU: 4 sequences make 40 tok/s, so 8 could make at most 80 < 8 x 12
        (40.0, (8, 16), "4 sequences 40, too few for 8 to pay"),
        # a 4B model on 2 cores: 3 tok/s a stream already
        (12.0, (8,), "4 sequences 12, too few for 8 to pay"),
    ],
)
def test_a_cpu_where_doubling_cannot_pay_times_only_the_first_look(
    rate_of_4: float, trials: tuple[int, ...], stopped: str
) -> None:
    timings = Timings(per_step({4: rate_of_4}))
    result = calibrate(trials, timings)
    assert (result.chosen, result.pairs, result.stopped) == (4, (), stopped)
    assert timings.calls == [(4, 1), (4, 1)]  # the better of two single steps


def test_a_busy_spell_at_the_second_look_keeps_the_doubling_that_paid() -> None:
    # 8 pays (+43%, 12.5 tok/s a stream); then both single steps of the look at 8 run 1.5 times
    # slower (other work): 67 tok/s, so 16 could make at most 133 < 16 x 12 tok/s
    timings = Timings(per_step({4: 70.0, 8: 100.0, 16: 400.0}), [1.0] * 10 + [1.5, 1.5])
    result = calibrate((8, 16), timings)
    assert (result.chosen, result.stopped) == (8, "8 sequences 67, too few for 16 to pay")
    assert [(a, b) for a, _, b, _ in result.pairs] == [(4, 8)]
    assert 16 not in timings.timed()


@pytest.mark.parametrize(
    "load",
    [
        # one of the first look's two steps and both untimed steps slowed fivefold
        [5.0, 1.0, 5.0, 5.0],
        # every timing but one of each count slowed by another process (2 cores shared)
        [1.0, 1.0, 1.0, 1.0, 3.0, 2.5, 1.0, 1.0, 2.0, 3.0],
        # the doubled count unlucky in every round but the last
        [1.0, 1.0, 1.0, 1.0, 1.0, 3.0, 1.0, 3.0, 1.0, 1.0],
    ],
)
def test_timings_spoilt_by_other_work_give_the_quiet_pick(load: list[float]) -> None:
    # Each count keeps its best of ROUNDS timings, taken in turns: a timing slowed by other work
    # does not change the pick as long as one round of each count ran undisturbed.
    rates = {4: 112.0, 8: 151.0, 16: 165.0}
    quiet = calibrate((8, 16), Timings(per_step(rates)))
    noisy = calibrate((8, 16), Timings(per_step(rates), load))
    assert noisy == quiet
    assert quiet.chosen == 8 and [(a, b) for a, _, b, _ in quiet.pairs] == [(4, 8), (8, 16)]


def test_each_count_is_timed_in_turns_after_an_untimed_step() -> None:
    timings = Timings(per_step({4: 112.0, 8: 120.0}))
    calibrate((8,), timings)
    look, plan, rounds = timings.calls[:2], timings.calls[2:4], timings.calls[4:]
    assert look == [(4, 1), (4, 1)] and plan == [(4, 1), (8, 1)]
    assert rounds == [(4, STEPS), (8, STEPS)] * ROUNDS


def test_timings_so_noisy_that_no_round_is_quiet_can_only_lower_the_pick() -> None:
    # Other work slowing the doubled count in every round makes it look worse, never better:
    # the calibration then keeps fewer sequences (slower to serve many, never overloaded).
    rates = {4: 112.0, 8: 151.0, 16: 165.0}
    load = [1.0] * 5 + [2.0, 1.0, 2.0, 1.0, 2.0]  # 8's three timed rounds all twice as slow
    result = calibrate((8, 16), Timings(per_step(rates), load))
    assert result.chosen == 4 and [(a, b) for a, _, b, _ in result.pairs] == [(4, 8)]
