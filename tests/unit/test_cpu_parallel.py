"""How many sequences the CPU decodes together, as tables of measured rates: a doubling pays when
the total decode rate grows by 25% and every stream stays at 12 tokens/s or more (the engine keeps
doubling while it does, tests/e2e/test_cpu_parallel.py); and which counts a CPU plan lets the
engine try."""

from __future__ import annotations

import pytest

from server.capability import LlamaBuild
from server.memory import GiB, kv_cache
from server.planner import (
    CPU_KV_LIMIT,
    CPU_PARALLEL,
    PlanOptions,
    cpu_parallel_trials,
    doubling_can_pay,
    doubling_pays,
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
