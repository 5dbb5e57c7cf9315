"""The prefix cache's decisions as tables: how much of a slot's KV a prompt may reuse (sliding
window included), and which free slot a prompt goes to."""

from __future__ import annotations

import pytest

from server.engine.prefix import common_prefix, pick_slot, reusable_prefix


@pytest.mark.parametrize(
    ("a", "b", "n"),
    [([], [1], 0), ([1, 2, 3], [1, 2, 4], 2), ([1, 2], [1, 2, 3], 2), ([5], [6], 0)],
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


def test_pick_slot_prefers_the_longest_prefix_then_the_least_recently_used() -> None:
    prompt = [1, 2, 3, 4]
    assert pick_slot([(0, [9], 1.0), (1, [1, 2, 9], 5.0), (2, [1, 9], 0.0)], prompt) == 1
    assert pick_slot([(0, [], 3.0), (1, [], 2.0), (2, [], 4.0)], prompt) == 1
    with pytest.raises(ValueError, match="no free slot"):
        pick_slot([], prompt)
