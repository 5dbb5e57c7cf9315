"""Whether a model fits beside those loaded, with the figures read at load time (pure)."""

from __future__ import annotations

import pytest

from server.memory import GiB, estimate
from server.models.fit import CannotFit, Placement, Resident, place
from server.registry import load_registry

REGISTRY = load_registry()


def need(model_id: str) -> int:
    return estimate(REGISTRY.get(model_id), 4096, n_seq=4).total


def test_a_model_that_fits_in_the_free_memory_loads_beside_the_others() -> None:
    loaded = [Resident("a", 3 * GiB, busy=False, last_used=1.0)]
    assert place("b", 2 * GiB, 5 * GiB, loaded) == Placement((), 5 * GiB)


def test_nothing_measured_loads_beside_the_others() -> None:
    loaded = [Resident("a", 30 * GiB, busy=False, last_used=1.0)]
    assert place("b", 20 * GiB, None, loaded) == Placement((), None)


@pytest.mark.parametrize(
    ("free_gib", "evict"),
    [
        (1, ("oldest", "middle")),  # 1 + 2 + 2 = 5 >= 4: the newest stays
        (2, ("oldest",)),  # 2 + 2 = 4
        (4, ()),
    ],
)
def test_idle_models_are_unloaded_least_recently_used_first_and_only_as_many_as_needed(
    free_gib: int, evict: tuple[str, ...]
) -> None:
    loaded = [
        Resident("newest", 2 * GiB, busy=False, last_used=30.0),
        Resident("oldest", 2 * GiB, busy=False, last_used=10.0),
        Resident("middle", 2 * GiB, busy=False, last_used=20.0),
    ]
    placement = place("new", 4 * GiB, free_gib * GiB, loaded)
    assert placement.evict == evict
    assert placement.free is not None and placement.free >= 4 * GiB


def test_a_busy_model_is_never_unloaded_for_another() -> None:
    loaded = [
        Resident("busy", 4 * GiB, busy=True, last_used=1.0),
        Resident("idle", 2 * GiB, busy=False, last_used=5.0),
    ]
    assert place("new", 3 * GiB, 1 * GiB, loaded).evict == ("idle",)
    with pytest.raises(CannotFit) as refused:
        place("new", 5 * GiB, 1 * GiB, loaded)
    message = str(refused.value)
    assert "5.0 GiB" in message and "3.0 GiB" in message  # the need, and all it could have
    assert "busy" in message  # which model holds the rest


def test_an_8_gib_card_holding_the_12b_cannot_take_the_27b_and_says_why() -> None:
    twelve = need("gemma-3-12b-it-qat")
    free = 8 * GiB - twelve  # what NVML reports free beside the loaded 12B
    loaded = [Resident("gemma-3-12b-it-qat", twelve, busy=False, last_used=1.0)]
    with pytest.raises(CannotFit) as refused:
        place("gemma-3-27b-it-qat", need("gemma-3-27b-it-qat"), free, loaded)
    assert refused.value.need == need("gemma-3-27b-it-qat")
    assert refused.value.free == 8 * GiB  # even with the 12B unloaded
    message = str(refused.value)
    assert "gemma-3-27b-it-qat needs" in message and "8.0 GiB" in message
    assert "smaller model" in message and "--ctx" in message


def test_a_game_taking_6_gib_between_two_loads_unloads_the_idle_model_first() -> None:
    four = need("gemma-3-4b-it-qat")
    one = need("gemma-3-1b-it-qat")
    card = 10 * GiB
    # First load: the 4B beside nothing. Then a game takes 6 GiB; the 1B no longer fits beside
    # the 4B, so the idle 4B goes.
    assert place("gemma-3-4b-it-qat", four, card, []).evict == ()
    free_after_game = card - four - 6 * GiB
    assert free_after_game < one
    loaded = [Resident("gemma-3-4b-it-qat", four, busy=False, last_used=1.0)]
    assert place("gemma-3-1b-it-qat", one, free_after_game, loaded).evict == ("gemma-3-4b-it-qat",)
    # With the 4B busy, the 1B cannot be had: a 4xx with figures, not an out-of-memory crash.
    busy = [Resident("gemma-3-4b-it-qat", four, busy=True, last_used=1.0)]
    with pytest.raises(CannotFit):
        place("gemma-3-1b-it-qat", one, free_after_game, busy)
