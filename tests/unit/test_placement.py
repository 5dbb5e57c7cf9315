"""The placement policy's decisions as tables (server/engine/placement.py): how much of a
sequence's KV a prompt may reuse (sliding window included), which saved state serves a prompt and
which free sequence it goes to, and how many saved states the memory budget drops."""

from __future__ import annotations

import pytest

from server.engine.placement import (
    Candidate,
    Placement,
    added_splits,
    common_prefix,
    evictions,
    place,
    restored_pos_min,
    reusable_prefix,
    worth_saving,
)


@pytest.mark.parametrize(
    ("a", "b", "n"),
    [
        ([], [1], 0),
        ([1, 2, 3], [1, 2, 4], 2),
        ([1, 2], [1, 2, 3], 2),
        ([5], [6], 0),
        (list(range(1000)), [*range(700), -1], 700),  # found by bisection
        (list(range(1000)), [*range(999), -1], 999),
        ((1, 2, 3), [1, 2, 4], 2),  # a tuple against a list
    ],
)
def test_common_prefix(a: list[int], b: list[int], n: int) -> None:
    assert common_prefix(a, b) == n


PROMPT = list(range(1000))


@pytest.mark.parametrize(
    ("cached", "prompt", "pos_min", "n_swa", "reused"),
    [
        ([*PROMPT[:600], -1, -2], PROMPT, 0, 512, 600),  # next turn: the shared prefix
        (PROMPT, PROMPT, 0, 512, 999),  # same prompt: the last token is decoded again
        (PROMPT[:600], PROMPT, -1, 512, 0),  # the sequence is empty
        (PROMPT[:600], PROMPT, 88, 512, 600),  # the window before position 600 is all there
        (PROMPT[:600], PROMPT, 89, 512, 0),  # pruned by the sliding window: prefill cold
        (PROMPT[:100], PROMPT, 1, 512, 0),  # short prefix, any pruning: cold
        (PROMPT[:100], PROMPT, 0, 512, 100),
        (PROMPT[:100], PROMPT, 1, 0, 0),  # no sliding window: nothing may be missing
        ([7, 8], PROMPT, 0, 512, 0),  # nothing in common
        (PROMPT[:31], PROMPT, 0, 512, 0),  # too short to be worth a batch-dependent reuse
        (PROMPT[:32], PROMPT, 0, 512, 32),
    ],
)
def test_reusable_prefix(
    cached: list[int], prompt: list[int], pos_min: int, n_swa: int, reused: int
) -> None:
    assert reusable_prefix(cached, prompt, pos_min, n_swa) == reused


@pytest.mark.parametrize(
    ("n_tokens", "live_pos_min", "n_swa", "pos_min"),
    [
        (900, 0, 512, 388),  # only the window the last position (899) attends to is written
        (900, 500, 512, 500),  # the live cache had dropped more already
        (300, 0, 512, 0),  # shorter than the window: all of it
        (512, 0, 512, 0),
        (513, 0, 512, 1),
        (900, 0, 0, 0),  # no sliding window: every position
    ],
)
def test_restored_pos_min(n_tokens: int, live_pos_min: int, n_swa: int, pos_min: int) -> None:
    assert restored_pos_min(n_tokens, live_pos_min, n_swa) == pos_min


@pytest.mark.parametrize(
    ("saved", "prompt", "reused"),
    [
        (PROMPT[:900], PROMPT, 900),  # the next turn extends the saved state whole
        (PROMPT[:900], [*PROMPT[:899], -1], 0),  # cut short of its end: the window is gone
        (PROMPT[:900], PROMPT[:900], 0),  # the same prompt again: 899 would need the window
        ([*PROMPT[:800], -1, -2], PROMPT, 0),  # a reply that differs: a cut, hence cold
        (PROMPT[:400], PROMPT, 400),  # within the window: whole...
        (PROMPT[:400], [*PROMPT[:300], -1], 300),  # ...or cut anywhere
        (PROMPT[:20], PROMPT, 0),  # too short to reuse
    ],
)
def test_which_saved_state_serves_a_prompt(
    saved: list[int], prompt: list[int], reused: int
) -> None:
    pos_min = restored_pos_min(len(saved), 0, 512)
    assert reusable_prefix(saved, prompt, pos_min, 512) == reused


def test_worth_saving_only_what_could_be_reused() -> None:
    assert [worth_saving(n) for n in (0, 32, 33, 2000)] == [False, False, True, True]


A = list(range(1000, 1900))  # one conversation's history (900 tokens: past the window)
B = list(range(2000, 2600))
C = list(range(3000, 3040))


def slot(key: int, tokens: list[int], last_used: float = 0.0, saved: bool = False) -> Candidate:
    return Candidate(key, tokens, 0 if tokens else -1, last_used, saved)


def stored(key: int, tokens: list[int]) -> Candidate:
    return Candidate(key, tokens, restored_pos_min(len(tokens), 0, 512))


@pytest.mark.parametrize(
    ("free", "saved", "prompt", "placement"),
    [
        # the next turn of the conversation a free slot holds: that slot, nothing restored
        ([slot(0, B), slot(1, A)], [], [*A, 7, 8], Placement(1, None, 900)),
        # its history is saved: restore it into the cheapest slot (the empty one)
        ([slot(0, B), slot(1, [])], [stored(0, C), stored(1, A)], [*A, 7], Placement(1, 1, 900)),
        # a live prefix as long as a saved one wins (no copy)
        ([slot(0, A)], [stored(0, A)], [*A, 7], Placement(0, None, 900)),
        # a saved state longer than the live prefix wins
        ([slot(0, A[:300]), slot(1, [])], [stored(3, A)], [*A, 7], Placement(1, 3, 900)),
        # nothing reusable: a slot whose state is saved already before a shorter one
        ([slot(0, C), slot(1, B, saved=True)], [], [5, 6], Placement(1, None, 0)),
        # ...else the shortest
        ([slot(0, B), slot(1, C), slot(2, A)], [], [5, 6], Placement(1, None, 0)),
        # ...and among equals the least recently used
        ([slot(0, [], 3.0), slot(1, [], 2.0), slot(2, [], 4.0)], [], [5], Placement(1, None, 0)),
        # equal live prefixes: the least recently used
        ([slot(0, A, 5.0), slot(1, A, 1.0)], [], [*A, 7], Placement(1, None, 900)),
        # a saved state the prompt does not extend whole is no use
        ([slot(0, B)], [stored(0, A)], [*A[:899], 7], Placement(0, None, 0)),
    ],
)
def test_place(
    free: list[Candidate], saved: list[Candidate], prompt: list[int], placement: Placement
) -> None:
    assert place(free, saved, prompt, 512, busy=frozenset()) == placement


@pytest.mark.parametrize(
    ("free", "busy", "prompt", "placement"),
    [
        # nothing reusable: beside a busy sequence, even before an empty one or a saved one
        ([slot(0, []), slot(2, B), slot(5, C, saved=True)], {3}, [5], Placement(2, None, 0)),
        # between two busy ones (their runs join) before beside one
        ([slot(1, []), slot(4, [])], {0, 3, 5}, [5], Placement(4, None, 0)),
        # beside busy ones on both sides, the cheapest to lose: saved, then shortest
        ([slot(2, A), slot(4, C), slot(7, [])], {3}, [5], Placement(4, None, 0)),
        ([slot(2, A, saved=True), slot(4, C), slot(7, [])], {3}, [5], Placement(2, None, 0)),
        # none busy: no neighbour to keep, the cheapest to lose as before
        ([slot(2, A), slot(4, C), slot(7, [])], set(), [5], Placement(7, None, 0)),
        # equal live prefixes: beside the busy one before the least recently used
        ([slot(0, A, 1.0), slot(6, A, 5.0)], {5}, [*A, 7], Placement(6, None, 900)),
        # a longer live prefix wins over a neighbour (the next turn keeps its KV)
        ([slot(0, A), slot(6, A[:300])], {5}, [*A, 7], Placement(0, None, 900)),
        # a saved state is restored into a sequence beside the busy ones
        ([slot(0, []), slot(6, B)], {7}, [*A, 7], Placement(6, 0, 900)),
    ],
)
def test_place_keeps_busy_sequences_consecutive(
    free: list[Candidate], busy: set[int], prompt: list[int], placement: Placement
) -> None:
    """llama.cpp decodes in one micro-batch only sequences whose ids follow each other."""
    assert place(free, [stored(0, A)], prompt, 512, busy=busy) == placement


@pytest.mark.parametrize(
    ("seq_id", "busy", "added"),
    [(3, set(), 1), (3, {2}, 0), (3, {4}, 0), (3, {2, 4}, -1), (3, {1, 5}, 1), (0, {1}, 0)],
)
def test_added_splits(seq_id: int, busy: set[int], added: int) -> None:
    assert added_splits(seq_id, busy) == added


def test_place_needs_a_free_sequence() -> None:
    with pytest.raises(ValueError, match="no free sequence"):
        place([], [stored(0, A)], A, 512, busy=frozenset())


@pytest.mark.parametrize(
    ("sizes", "budget", "incoming", "dropped"),
    [
        ([], 100, 40, 0),
        ([30, 30], 100, 40, 0),  # fits
        ([30, 30, 30], 100, 40, 1),  # the oldest goes: exactly full
        ([30, 30, 30], 100, 50, 2),  # the two oldest go
        ([30, 30, 30], 100, 100, 3),  # everything goes
        ([30], 100, 101, None),  # bigger than the whole budget: not saved, nothing dropped
        ([], 0, 1, None),  # budget 0: off
    ],
)
def test_evictions_by_budget(
    sizes: list[int], budget: int, incoming: int, dropped: int | None
) -> None:
    assert evictions(sizes, budget, incoming) == dropped
